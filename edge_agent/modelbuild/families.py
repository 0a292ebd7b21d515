"""The model families `edge-agent model new` fits, in numpy only (pure: arrays in,
weights out). Each takes normalised training windows (n, W, C), any C >= 1, any W >= 1.

- `zscore`: window mean per channel; score = sum over channels of (window mean of the
  z-scored signal)^2. No trained weights: the normalisation is the model.
- `pca`: window mean -> one dense layer emitting whitened principal scores and scaled
  residuals, so the sum of squares is T^2/k + Q/Q_ref (Hotelling T-squared and SPE).
  One channel: k = 1 and no residual (T^2 only).
- `ae`: dense autoencoder on the flattened window, trained with Adam (numpy);
  score = reconstruction MSE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.modelbuild.onnxgraph import DenseStack, Layer

__all__ = ["FAMILIES", "Fitted", "fit_ae", "fit_family", "fit_pca", "fit_zscore"]

FAMILIES = ("zscore", "pca", "ae")
F32 = npt.NDArray[np.float32]

PCA_VARIANCE = 0.9  # components kept: the fewest explaining this share of the variance
AE_EPOCHS, AE_BATCH, AE_LR = 60, 64, 5e-3
AE_MAX_HIDDEN, AE_MAX_CODE = 64, 16
AE_MIN_HIDDEN, AE_MIN_CODE = 16, 2
AE_MAX_WINDOWS = 20_000  # training windows used at most (a strided subset beyond)


@dataclass(frozen=True)
class Fitted:
    family: str
    stack: DenseStack
    score: dict[str, Any]  # the card's `score` section
    info: dict[str, Any] = field(default_factory=dict)  # architecture, training facts


def fit_zscore(train: F32) -> Fitted:
    """(n, W, C) normalised windows -> the z-score family (identity weights)."""
    _, w, c = train.shape
    eye = np.eye(c, dtype=np.float32)
    stack = DenseStack(w, c, ((eye, np.zeros(c, np.float32), "linear"),), True, (None, 1), True)
    return Fitted(
        "zscore",
        stack,
        {
            "kind": "output",
            "formula": "sum over channels of (window mean of x_n)^2, computed in the graph",
        },
        {
            "architecture": "window mean -> square -> sum; no trained weights: the "
            "normalisation (mean/std per channel) is the model"
        },
    )


def fit_pca(train: F32, variance: float = PCA_VARIANCE) -> Fitted:
    """PCA on window means with T^2 and Q in one dense layer (see module doc)."""
    _, w, c = train.shape
    feats = train.mean(axis=1).astype(np.float64)
    mu = feats.mean(0)
    xc = feats - mu
    cov = xc.T @ xc / max(len(xc) - 1, 1)
    lam, vec = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1]
    lam, vec = np.maximum(lam[order], 1e-12), vec[:, order]
    share = np.cumsum(lam) / lam.sum()
    k = 1 if c == 1 else int(min(c - 1, np.searchsorted(share, variance) + 1))
    p = vec[:, :k]
    blocks = [p / np.sqrt(k * lam[:k])]
    q_ref = 0.0
    if k < c:
        resid = np.eye(c) - p @ p.T
        q = ((xc @ resid) ** 2).sum(1)
        q_ref = float(max(q.mean(), 1e-12))
        blocks.append(resid / np.sqrt(q_ref))
    a = np.concatenate(blocks, axis=1).astype(np.float32)
    b = (-(mu @ a)).astype(np.float32)
    stack = DenseStack(w, c, ((a, b, "linear"),), True, (None, 1), True)
    return Fitted(
        "pca",
        stack,
        {
            "kind": "output",
            "formula": "T^2/k + Q/Q_ref of the window mean (sum of squares of whitened "
            "principal scores and scaled residuals), computed in the graph",
        },
        {
            "architecture": "window mean -> one dense layer (PCA projection) -> square -> sum",
            "components": k,
            "explained_variance": [float(v) for v in lam[:k] / lam.sum()],
            "q_ref": q_ref,
        },
    )


def _init(rng: np.random.Generator, n_in: int, n_out: int) -> tuple[F32, F32]:
    lim = np.sqrt(6.0 / (n_in + n_out))  # Glorot uniform
    return rng.uniform(-lim, lim, (n_in, n_out)).astype(np.float32), np.zeros(n_out, np.float32)


def fit_ae(train: F32, *, epochs: int = AE_EPOCHS, seed: int = 7) -> Fitted:
    """Dense autoencoder d -> h -> k -> h -> d (relu; linear output), trained on the
    flattened windows with Adam on the mean squared reconstruction error."""
    n, w, c = train.shape
    d = w * c
    h = int(min(AE_MAX_HIDDEN, max(AE_MIN_HIDDEN, d // 2)))
    k = int(min(AE_MAX_CODE, max(AE_MIN_CODE, d // 4), d))
    sizes = [d, h, k, h, d]
    # a bounded (tanh) code: a shifted or scaled-up window cannot be copied through, so a
    # level step fills the whole window and still scores high
    acts = ["relu", "tanh", "relu", "linear"]
    rng = np.random.default_rng(seed)
    x = train.reshape(n, d)
    if n > AE_MAX_WINDOWS:
        x = x[:: int(np.ceil(n / AE_MAX_WINDOWS))]
    params = [_init(rng, sizes[i], sizes[i + 1]) for i in range(4)]
    flat = [t for wb in params for t in wb]
    m1 = [np.zeros_like(t) for t in flat]
    m2 = [np.zeros_like(t) for t in flat]
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    losses = []
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        total = 0.0
        for s in range(0, len(x), AE_BATCH):
            xb = x[perm[s : s + AE_BATCH]]
            grads, loss = _ae_grads(params, acts, xb)
            total += loss * len(xb)
            step += 1
            for i, g in enumerate(grads):
                m1[i] = b1 * m1[i] + (1 - b1) * g
                m2[i] = b2 * m2[i] + (1 - b2) * g * g
                mh = m1[i] / (1 - b1**step)
                vh = m2[i] / (1 - b2**step)
                flat[i] -= (AE_LR * mh / (np.sqrt(vh) + eps)).astype(np.float32)
            params = [(flat[2 * j], flat[2 * j + 1]) for j in range(4)]
        losses.append(total / len(x))
    layers: tuple[Layer, ...] = tuple(
        (wt.astype(np.float32), bs.astype(np.float32), a)
        for (wt, bs), a in zip(params, acts, strict=True)
    )
    stack = DenseStack(w, c, layers, False, (None, w, c))
    return Fitted(
        "ae",
        stack,
        {
            "kind": "reconstruction_mse",
            "formula": "mean over window and channels of (x_n - reconstruction)^2",
        },
        {
            "architecture": f"dense {'-'.join(map(str, sizes))}, relu, tanh code, relu, "
            "linear output",
            "epochs": epochs,
            "optimizer": f"Adam lr {AE_LR}, batch {AE_BATCH}, numpy",
            "training_windows": len(x),
            "final_loss": float(losses[-1]) if losses else None,
            "seed": seed,
        },
    )


def _ae_grads(params: list[tuple[F32, F32]], acts: list[str], xb: F32) -> tuple[list[F32], float]:
    """Gradients of mean((f(x) - x)^2) for every weight and bias, in order W0, b0, ..."""
    hs = [xb]
    for (wt, bs), a in zip(params, acts, strict=True):
        z = hs[-1] @ wt + bs
        hs.append(np.maximum(z, 0) if a == "relu" else np.tanh(z) if a == "tanh" else z)
    diff = hs[-1] - xb
    loss = float(np.mean(diff * diff))
    g = (2.0 / diff.size) * diff
    grads: list[F32] = []
    for i in range(len(params) - 1, -1, -1):
        if acts[i] == "relu":
            g = g * (hs[i + 1] > 0)
        elif acts[i] == "tanh":
            g = g * (1 - hs[i + 1] ** 2)
        grads = [hs[i].T @ g, g.sum(0), *grads]
        if i:
            g = g @ params[i][0].T
    return [gr.astype(np.float32) for gr in grads], loss


def fit_family(family: str, train: F32, *, epochs: int = AE_EPOCHS) -> Fitted:
    if family == "zscore":
        return fit_zscore(train)
    if family == "pca":
        return fit_pca(train)
    if family == "ae":
        return fit_ae(train, epochs=epochs)
    raise ValueError(f"unknown family {family!r} (expected one of {FAMILIES})")

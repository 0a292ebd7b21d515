"""Accelerator binding decisions (pure): what counts as bound, and which idle bound
models give up the accelerator so one more fits, least recently used first."""

from __future__ import annotations

from edge_agent.runtime.binding import (
    CPU,
    Binding,
    BindPlan,
    accelerator_providers,
    is_bound,
    plan_bind,
)

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
JETSON = (TRT, CUDA, CPU)


def test_the_accelerator_is_every_provider_but_the_cpu() -> None:
    assert accelerator_providers(JETSON) == (TRT, CUDA)
    assert accelerator_providers((CPU,)) == (CPU,), "a CPU-only profile binds to the CPU"


def test_a_session_on_cuda_without_tensorrt_is_still_bound() -> None:
    assert is_bound([CUDA, CPU], JETSON)
    assert is_bound([TRT, CUDA, CPU], JETSON)
    assert not is_bound([CPU], JETSON), "fallen back to CPU is not bound"
    assert not is_bound([], JETSON), "an unbound session is not bound"
    assert is_bound([CPU], (CPU,))


def test_a_model_that_fits_unbinds_nothing() -> None:
    bound = [Binding("a", 1.0, pinned=False, last_used=1.0)]
    assert plan_bind(1.0, 2.0, bound) == BindPlan(True)


def test_idle_bindings_go_least_recently_used_first_and_no_more_than_needed() -> None:
    bound = [
        Binding("newer", 1.0, pinned=False, last_used=3.0),
        Binding("oldest", 1.0, pinned=False, last_used=1.0),
        Binding("older", 1.0, pinned=False, last_used=2.0),
    ]
    assert plan_bind(1.0, 3.0, bound) == BindPlan(True, ("oldest",))
    assert plan_bind(2.0, 3.0, bound) == BindPlan(True, ("oldest", "older"))


def test_a_pinned_binding_is_never_unbound_even_when_it_is_the_oldest() -> None:
    bound = [
        Binding("stream's", 1.0, pinned=True, last_used=0.0),
        Binding("idle", 1.0, pinned=False, last_used=5.0),
    ]
    assert plan_bind(1.0, 2.0, bound) == BindPlan(True, ("idle",))


def test_no_room_beside_pinned_models_unbinds_nothing_and_says_who_holds_it() -> None:
    bound = [
        Binding("a", 1.5, pinned=True, last_used=0.0, name="vibration-ae"),
        Binding("b", 0.5, pinned=False, last_used=0.0, name="skab-ae"),
    ]
    plan = plan_bind(1.0, 2.0, bound)
    assert not plan.fits
    assert plan.unbind == (), "unbinding idle models that cannot make room wins nothing"
    assert "needs 1.0 MB" in plan.reason
    assert "1.5 of accelerator_memory_mb = 2 MB" in plan.reason
    assert "vibration-ae 1.5 MB" in plan.reason
    assert "skab-ae" not in plan.reason, "only the models in use hold the budget"


def test_a_model_larger_than_the_whole_budget_does_not_fit() -> None:
    plan = plan_bind(3.0, 2.0, [])
    assert not plan.fits
    assert "(none)" in plan.reason

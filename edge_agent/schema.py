"""Turn parsed TOML into frozen dataclasses, refusing unknown keys and wrong types.

Pure and generic: the field types of the target dataclass are the schema. Errors
name the file and the key path, e.g. `agent.toml: streams[1].source.rate_hz:
expected a positive number`. Extra per-field checks come from field metadata
(`check=...`), so limits live next to the field they limit.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from edge_agent.errors import ConfigError

__all__ = ["CHECKS", "check", "from_mapping"]

T = TypeVar("T")

Check = Callable[[Any], "str | None"]


def _positive(v: Any) -> str | None:
    return None if v > 0 else "expected a positive number"


def _nonneg(v: Any) -> str | None:
    return None if v >= 0 else "expected a number >= 0"


def _port(v: Any) -> str | None:
    return None if 1 <= v <= 65535 else "expected a port number 1-65535"


def _nonempty(v: Any) -> str | None:
    return None if len(v) > 0 else "must not be empty"


CHECKS: dict[str, Check] = {
    "positive": _positive,
    "nonneg": _nonneg,
    "port": _port,
    "nonempty": _nonempty,
}


def check(name: str) -> dict[str, str]:
    """Field metadata naming a check from CHECKS: `field(default=1, metadata=check("positive"))`."""
    if name not in CHECKS:
        raise ValueError(name)
    return {"check": name}


def _describe(tp: Any) -> str:  # noqa: PLR0911 - one return per kind of type
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, msg: str) -> ConfigError:
        where = f"{self.source}: {path}" if path else self.source
        return ConfigError(f"{where}: {msg}")


def _convert(tp: Any, value: Any, path: str, ctx: _Ctx) -> Any:  # noqa: PLR0911, PLR0912
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: ConfigError | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path, ctx)
            except ConfigError as e:
                last = e
        assert last is not None
        raise last
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ctx.fail(path, "expected a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
    elif origin in (list, tuple):
        if isinstance(value, list):
            item = args[0] if args else Any
            out = [_convert(item, v, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
            return tuple(out) if origin is tuple else out
    elif origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, Mapping):
            return _build(tp, value, path, ctx)
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported schema type {tp!r} at {path}")
    got = type(value).__name__
    raise ctx.fail(path, f"expected {_describe(tp)}, got {got} {value!r}"[:200])


def _build(cls: type[T], data: Mapping[str, Any], path: str, ctx: _Ctx) -> T:
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: f
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if not f.metadata.get("internal")  # filled in by code, never by the file
    }
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ctx.fail(_join(path, key), f"unknown key (known keys here: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ctx.fail(sub, "required key missing")
            continue
        parser = f.metadata.get("parse")
        if parser is not None:
            val = parser(data[name], sub, ctx.source)
        else:
            val = _convert(hints[name], data[name], sub, ctx)
        chk = f.metadata.get("check")
        if chk is not None and val is not None:
            msg = CHECKS[chk](val)
            if msg:
                raise ctx.fail(sub, msg)
        kwargs[name] = val
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ctx.fail(path, str(e)) from e


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def from_mapping(cls: type[T], data: Mapping[str, Any], *, source: str, path: str = "") -> T:
    """Build dataclass `cls` from `data`; `source` names the file in error messages."""
    return _build(cls, data, path, _Ctx(source))

"""Typed-config helpers: frozen dataclasses to and from plain JSON dicts, rejecting unknown keys."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], d: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `d`; unknown keys raise a ValueError listing the valid ones."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}{' in ' + where if where else ''}: expected an object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}{' in ' + where if where else ''}: unknown keys {unknown}; "
                         f"valid keys: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in d:
            v = d[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

"""Configs to and from plain data: the check every ``__post_init__`` uses, and ``from_dict``, which rebuilds a nested
dataclass from the dict it travelled as (through Ray, a JSON file, a checkpoint) and rejects unknown keys by their
dotted name."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from ..base.errors import ConfigError

T = TypeVar("T")


def check_field(cond: bool, field_name: str, msg: str) -> None:
    """Raise ``ConfigError`` naming ``field_name`` unless ``cond`` holds (used in every ``__post_init__``)."""
    if not cond:
        raise ConfigError(f"{field_name}: {msg}")


def dataclass_in(hint: Any) -> type | None:
    """The dataclass a field's type names, alone or as ``X | None``; None for any other type."""
    if dataclasses.is_dataclass(hint):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Rebuild a (nested) dataclass from a dict, rejecting unknown keys by their dotted name; a field typed as a
    dataclass (or ``X | None``) given a dict is rebuilt the same way."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                          f"valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        nested = dataclass_in(hints[name])
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{prefix}.{name}" if prefix else name)
        kwargs[name] = value
    return cls(**kwargs)


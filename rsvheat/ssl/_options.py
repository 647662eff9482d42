"""One rule for option blocks given as user mappings (YAML): known keys become a frozen dataclass, others an error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from rsvheat.ssl.errors import UnknownOptionError

__all__ = ["options_from_dict", "options_to_dict"]

_Config = TypeVar("_Config")


def options_from_dict(cls: type[_Config], block: str, options: Mapping[str, Any] | None) -> _Config:
    """``cls(**options)``; keys that are not fields of the dataclass ``cls`` raise :class:`UnknownOptionError`."""
    options = dict(options or {})
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if unknown := set(options) - known:
        raise UnknownOptionError(block, unknown, known)
    return cls(**options)


def options_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass's fields as plain data (tuples become lists, as YAML and checkpoints store them)."""
    return {f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v for f in fields(config)}

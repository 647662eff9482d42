"""One config system for every job: a frozen dataclass → argparse flags, ``--config file.yaml`` plus ``--key value``.

Each job declares a frozen dataclass whose fields (grouped by comment) are the job's whole configuration. This module
generates one flag per field (``--chip-size`` and ``--chip_size`` both work), reads an optional YAML file, and resolves
``defaults < YAML < command line``. Unknown keys and values of the wrong type are errors whose message lists the valid
keys, so a misspelt option never silently does nothing (nanoGPT's behaviour, without its ``exec``).

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``Literal[...]``, ``tuple[T, ...]``, ``tuple[T, T, ...]``
(fixed length) and ``X | None`` of those. A field's help text is ``field(metadata={"help": ...})``.

Example:
    >>> @dataclasses.dataclass(frozen=True)
    ... class TrainConfig:
    ...     epochs: int = 1
    >>> parse_config(TrainConfig, ["--epochs", "3"])
    TrainConfig(epochs=3)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

__all__ = ["ConfigError", "build_parser", "config_from_dict", "parse_config", "parse_pairs", "to_dict"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or flag names an unknown key or gives a value of the wrong type."""


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """Split ``X | None`` into ``(X, True)``; other types give ``(tp, False)``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
        raise TypeError(f"unsupported union type {tp!r}; only `X | None` is supported")
    return tp, False


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a flag string) to the field type ``tp``, or raise :class:`ConfigError`."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"config key {key!r} may not be null; expected {_type_name(inner)}")
    origin = get_origin(inner)
    if origin is Literal:
        choices = get_args(inner)
        if value not in choices:
            raise ConfigError(f"config key {key!r} got {value!r}; expected one of {list(choices)}")
        return value
    if origin is tuple:
        args = get_args(inner)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r} got {value!r}; expected a list of {_type_name(inner)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r} got {len(value)} values {list(value)}; expected {len(args)}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key {key!r} got {value!r}; expected true or false")
    if inner is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} got {value!r}; expected an integer")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key {key!r} got {value!r}; expected an integer") from err
    if inner is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} got {value!r}; expected a number")
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key {key!r} got {value!r}; expected a number") from err
    if inner is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"config key {key!r} got {value!r}; expected a string")
        return str(value)
    raise TypeError(f"config field {key!r} has unsupported type {tp!r}")


def _type_name(tp: Any) -> str:
    inner, optional = _unwrap_optional(tp)
    origin = get_origin(inner)
    if origin is Literal:
        name = "one of " + "|".join(map(str, get_args(inner)))
    elif origin is tuple:
        args = get_args(inner)
        name = f"list of {_type_name(args[0])}" if args[-1] is Ellipsis else f"{len(args)} values"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or null" if optional else name


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _valid_keys(cls: type) -> str:
    return ", ".join(sorted(f.name for f in dataclasses.fields(cls)))


def config_from_dict(cls: type[T], values: Mapping[str, Any], *, source: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and coercing each value to its field type.

    Args:
        cls: a dataclass type.
        values: keys are field names (``-`` is accepted for ``_``).
        source: where the values came from, for error messages.

    Raises:
        ConfigError: unknown key, missing required key or wrong type; the message lists the valid keys.
    """
    fields = _fields(cls)
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in fields:
            raise ConfigError(f"unknown key {raw_key!r} in {source}; valid keys: {_valid_keys(cls)}")
        kwargs[key] = _coerce(fields[key][1], value, key)
    missing = [
        name
        for name, (f, _) in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise ConfigError(f"missing required config key(s) {missing} in {source}; pass {flags} or set them in YAML")
    return cls(**kwargs)


def build_parser(cls: type, *, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with ``--config`` plus one flag per dataclass field (defaults suppressed)."""
    # allow_abbrev=False: `--work 5` is an unknown flag, never silently `--workers 5`.
    parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                                     allow_abbrev=False)
    parser.add_argument("--config", help="YAML file of config keys; flags given on the command line override it")
    for name, (f, tp) in _fields(cls).items():
        flags = ["--" + name.replace("_", "-")] + (["--" + name] if "_" in name else [])
        default = None if f.default is dataclasses.MISSING else f.default
        help_text = f"{f.metadata.get('help', '')} [{_type_name(tp)}; default: {default!r}]".strip()
        inner, _ = _unwrap_optional(tp)
        if inner is bool:
            parser.add_argument(flags[0], dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        elif get_origin(inner) is tuple:
            parser.add_argument(*flags, dest=name, nargs="+", help=help_text)
        else:
            parser.add_argument(*flags, dest=name, help=help_text)
    return parser


def parse_config(cls: type[T], argv: Sequence[str] | None = None, *, description: str | None = None) -> T:
    """Resolve a job config from ``argv``: dataclass defaults, then ``--config`` YAML, then explicit flags.

    Raises:
        ConfigError: unknown flag or key, wrong type, or a YAML file that is not a mapping.
    """
    parser = build_parser(cls, description=description)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ConfigError(f"unknown argument(s) {unknown}; valid keys: {_valid_keys(cls)} (as --key value)")
    given = vars(namespace)
    values: dict[str, Any] = {}
    config_path = given.pop("config", None)
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(
                f"--config {config_path}: {'is a directory' if path.is_dir() else 'no such file'}; pass the path of a "
                "YAML file of config keys (e.g. jobs/configs/ingest_sample.yaml)."
            )
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"--config {config_path} cannot be read as YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_path} must hold a mapping of keys; got {type(loaded).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in loaded:
            if str(key).replace("-", "_") not in known:
                raise ConfigError(f"unknown key {key!r} in {config_path}; valid keys: {_valid_keys(cls)}")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    values.update(given)
    return config_from_dict(cls, values, source="command line" if config_path is None else f"{config_path} + flags")


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON data (tuples become lists), for logging and Ray's ``train_loop_config``."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def parse_pairs(specs: Sequence[str], key: str) -> dict[str, Any]:
    """``["drop_path_rate=0.2", "fuse=[1, 2]"]`` -> ``{"drop_path_rate": 0.2, "fuse": [1, 2]}`` (YAML values).

    Args:
        specs: ``KEY=VALUE`` entries of a tuple field such as ``--model-kwargs`` or ``--head-kwargs``.
        key: the field's name, for the message.

    Raises:
        ConfigError: an entry is not KEY=VALUE.
    """
    out: dict[str, Any] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ConfigError(f"--{key.replace('_', '-')} {spec!r} is not KEY=VALUE; e.g. drop_path_rate=0.2.")
        out[name.strip()] = yaml.safe_load(value)
    return out

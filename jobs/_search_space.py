"""Search spaces as text: ``lr=loguniform(1e-4, 3e-3)``, ``encoder=choice(frozen, full)``, ``augment=grid(none, flip)``.

One entry per searched hyper-parameter, from a YAML list (``search:``) or ``--search`` flags. Distributions map to
Ray Tune's: ``choice`` (values), ``grid`` (every value, each in its own trial times ``--num-samples``),
``uniform`` and ``loguniform`` (low, high), ``randint`` (low, high exclusive). Values are numbers (``1e-3``) or YAML
scalars (``full`` is a string).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from jobs._config import ConfigError

__all__ = ["SEARCHABLE", "parse_search", "to_tune"]

_ENTRY = re.compile(r"^\s*(?P<key>[a-z_]+)\s*=\s*(?P<dist>[a-z]+)\s*\((?P<args>.*)\)\s*$")
_DISTRIBUTIONS = {"choice": None, "grid": None, "uniform": 2, "loguniform": 2, "randint": 2}
SEARCHABLE = {
    "lr": float,
    "weight_decay": float,
    "layer_decay": float,
    "encoder": str,
    "augment": str,
}


def _value(text: str, key: str, entry: str) -> Any:
    try:
        return float(text) if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text) else yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--search {entry!r}: {text!r} is not a value for {key}: {err}") from None


def parse_search(entries: Sequence[str], allowed: Mapping[str, Sequence[str]] | None = None
                 ) -> dict[str, tuple[str, list[Any]]]:
    """``{"lr": ("loguniform", [1e-4, 3e-3]), ...}`` from the entries.

    Args:
        entries: ``KEY=DIST(ARGS)`` strings.
        allowed: for string keys, their valid values (e.g. ``{"encoder": ENCODER_MODES}``).

    Raises:
        ConfigError: malformed entry, unknown key or distribution, wrong argument count, or a bad value.
    """
    out: dict[str, tuple[str, list[Any]]] = {}
    for entry in entries:
        match = _ENTRY.match(entry)
        if match is None:
            raise ConfigError(
                f"--search {entry!r} is not KEY=DIST(ARGS); e.g. lr=loguniform(1e-4, 3e-3) or encoder=choice(frozen, "
                "full)."
            )
        key, dist = match["key"], match["dist"]
        if key not in SEARCHABLE:
            raise ConfigError(f"--search {entry!r}: {key!r} is not searchable; searchable keys: {sorted(SEARCHABLE)}.")
        if dist not in _DISTRIBUTIONS:
            raise ConfigError(f"--search {entry!r}: unknown distribution {dist!r}; use one of {list(_DISTRIBUTIONS)}.")
        args = [_value(a.strip(), key, entry) for a in match["args"].split(",") if a.strip()]
        arity = _DISTRIBUTIONS[dist]
        if (arity is None and not args) or (arity is not None and len(args) != arity):
            need = "at least one value" if arity is None else f"{arity} values (low, high)"
            raise ConfigError(f"--search {entry!r}: {dist} takes {need}, got {len(args)}.")
        kind = SEARCHABLE[key]
        if kind is float:
            if not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
                raise ConfigError(f"--search {entry!r}: {key} takes numbers, got {args}.")
            args = [float(a) for a in args]
            if dist == "loguniform" and not 0 < args[0] < args[1]:
                raise ConfigError(f"--search {entry!r}: loguniform needs 0 < low < high, got {args}.")
        else:
            if dist not in ("choice", "grid"):
                raise ConfigError(f"--search {entry!r}: {key} is categorical; use choice(...) or grid(...).")
            args = [str(a) for a in args]
            valid = (allowed or {}).get(key)
            bad = [a for a in args if valid is not None and a not in valid]
            if bad:
                raise ConfigError(f"--search {entry!r}: {bad} are not valid {key} values; valid: {list(valid or [])}.")
        if key in out:
            raise ConfigError(f"--search names {key!r} twice; give one distribution per key.")
        out[key] = (dist, args)
    return out


def to_tune(space: Mapping[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """The Ray Tune ``param_space`` of a parsed space."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, (dist, args) in space.items():
        match dist:
            case "choice":
                out[key] = tune.choice(args)
            case "grid":
                out[key] = tune.grid_search(args)
            case "uniform":
                out[key] = tune.uniform(*args)
            case "loguniform":
                out[key] = tune.loguniform(*args)
            case _:
                out[key] = tune.randint(int(args[0]), int(args[1]))
    return out

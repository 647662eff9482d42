"""What ``--incremental --state DIR`` shares between jobs/embed.py and jobs/predict.py: the state directory, tile
keys, model and preprocessing versions, the ``incremental:`` config file, and the accounting record
(docs/change-aware.md).

State layout (a local or shared filesystem path; every file is replaced atomically)::

    DIR/tiles/<tile key>/reference/          the tile's reference state (pipeline/change/reference.py)
    DIR/tiles/<tile key>/log.json            items folded or processed per job, with their day and versions
    DIR/tiles/<tile key>/embed_cache.parquet per chip: embedding, source date, versions, change stats
    DIR/tiles/<tile key>/predict_cache.*     per window: probabilities (.npy) and their provenance (.parquet)
    DIR/embed_rows.parquet                   every embeddings.parquet row written so far (so each run's output
                                             equals a full run's)
    DIR/accounting.json                      the last run's accounting and audit (also printed)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from jobs._config import ConfigError
from pipeline.change.config import IncrementalConfig, incremental_config
from pipeline.ids import safe_id

__all__ = [
    "StateDir",
    "Stopwatch",
    "load_incremental_config",
    "preproc_version",
    "run_stamp",
    "tile_key",
]


def load_incremental_config(path: str | None, change_score: str | None = None) -> IncrementalConfig:
    """The ``incremental:`` block of a YAML file (the whole file when it has no such key), or the defaults.

    Raises:
        ConfigError: the file is missing, not YAML, or holds an unknown key or bad value (named).
    """
    values: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"--incremental-config {path}: no such file; pass a YAML file with an `incremental:` "
                              "block (docs/change-aware.md §Configuration)")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"--incremental-config {path} cannot be read as YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--incremental-config {path} must hold a mapping; got {type(loaded).__name__}")
        values = dict(loaded.get("incremental", loaded))
    if change_score is not None:
        values["change_score"] = change_score
    try:
        return incremental_config(values)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"incremental config{f' {path}' if path else ''}: {err}") from None


def preproc_version(**parts: Any) -> str:
    """A 16-hex-digit hash of everything that shapes a model's input (bands, stats, stem, chip geometry, ...)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def tile_key(epsg: int, origin: tuple[float, float], gsd: float, mgrs_tile: str | None = None) -> str:
    """A filesystem-safe key of a tile's pixel grid: MGRS tile (when known), EPSG, top-left corner and pixel size.

    Repeat acquisitions share a reference only when they share this grid (true for S2 MGRS tiles).
    """
    x, y = origin

    def fmt(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else f"{v:.3f}"

    grid = f"{epsg}_E{fmt(x)}_N{fmt(y)}_{fmt(gsd)}m"
    return safe_id(f"{mgrs_tile}-{grid}" if mgrs_tile else grid)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class StateDir:
    """The ``--state`` directory of incremental runs."""

    root: Path

    @classmethod
    def open(cls, uri: str) -> StateDir:
        """Open (create) a local or shared-filesystem state directory.

        Raises:
            ConfigError: ``uri`` is an object-store URL (the reference is memory-mapped arrays: use a filesystem).
        """
        if "://" in uri:
            raise ConfigError(
                f"--state {uri}: the incremental state must be a local or shared filesystem path (its reference "
                "arrays are read and replaced as files); mount the bucket or use a volume"
            )
        root = Path(uri)
        (root / "tiles").mkdir(parents=True, exist_ok=True)
        return cls(root)

    def tile(self, key: str) -> Path:
        """The directory of one tile (``key`` from :func:`tile_key`, already safe)."""
        return self.root / "tiles" / safe_id(key)

    def read_log(self, key: str) -> dict[str, Any]:
        """``{"items": {item_id: {...}}, "last_day": int | None}`` of a tile."""
        path = self.tile(key) / "log.json"
        if not path.is_file():
            return {"items": {}, "last_day": None}
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def write_log(self, key: str, log: Mapping[str, Any]) -> None:
        """Replace a tile's log atomically."""
        _atomic_write(self.tile(key) / "log.json", json.dumps(log, indent=2, sort_keys=True).encode())

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        """Write ``DIR/name`` atomically; returns its path."""
        path = self.root / name
        _atomic_write(path, json.dumps(data, indent=2, default=str).encode())
        return path


def run_stamp() -> str:
    """Now, as an RFC 3339 UTC string (the ``computed_at`` of fresh outputs)."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Stopwatch:
    """Accumulates wall seconds (``wall``) and this process's CPU seconds (``cpu``) over ``with`` blocks."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Stopwatch:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c

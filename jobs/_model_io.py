"""Checkpoints for the jobs that apply a model (embed, predict): read once on the driver, shipped to actors as bytes.

The driver reads the file (local or ``s3://``), checks its metadata and hashes it; actors receive the bytes through
the object store, so they need neither the driver's disk nor its credentials.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs._config import ConfigError
from pipeline.manifest import OutputStore

__all__ = ["CheckpointBlob", "load_model", "read_checkpoint", "stem_stats"]


@dataclass(frozen=True)
class CheckpointBlob:
    """A checkpoint's bytes, metadata and SHA-256, as read by the driver."""

    uri: str
    data: bytes
    meta: dict[str, Any]
    sha256: str


def _read_bytes(uri: str, s3_endpoint: str | None, flag: str) -> bytes:
    if uri.startswith("s3://"):
        parent, _, name = uri.rstrip("/").rpartition("/")
        return OutputStore.open(parent, s3_endpoint=s3_endpoint).read_bytes(name)
    path = Path(uri)
    if not path.is_file():
        raise ConfigError(f"{flag} {uri} is not a file; pass an rsvheat checkpoint (e.g. encoder.pt or best.pt)")
    return path.read_bytes()


def read_checkpoint(uri: str, *, s3_endpoint: str | None = None, flag: str = "--model") -> CheckpointBlob:
    """Read and check a checkpoint (``weights_only`` metadata read, no model built); ``flag`` names it in errors.

    Raises:
        ConfigError: the file is missing or is not an rsvheat checkpoint (the message says why).
    """
    import rsvheat

    data = _read_bytes(uri, s3_endpoint, flag)
    with tempfile.NamedTemporaryFile(suffix=".pt") as handle:
        handle.write(data)
        handle.flush()
        try:
            meta = rsvheat.load_checkpoint_meta(handle.name)
        except Exception as err:  # unpickling refused, not a checkpoint, wrong format version
            raise ConfigError(f"{flag} {uri} cannot be read as an rsvheat checkpoint: {err}") from err
    return CheckpointBlob(uri=uri, data=data, meta=meta, sha256=hashlib.sha256(data).hexdigest())


def load_model(data: bytes) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model from checkpoint bytes (``weights_only=True``), in eval mode on the CPU."""
    import rsvheat

    with tempfile.NamedTemporaryFile(suffix=".pt") as handle:
        handle.write(data)
        handle.flush()
        return rsvheat.load_checkpoint(handle.name, map_location="cpu")


def stem_stats(meta: Mapping[str, Any], modality: str) -> tuple[list[float], list[float]] | None:
    """The checkpoint's normalisation ``(mean, std)`` for one stem, or ``None`` when it carries none."""
    stats = (meta.get("stats") or {}).get(modality)
    if not stats:
        return None
    return list(stats["mean"]), list(stats["std"])

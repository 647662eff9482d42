"""Warnings for recoverable data problems, in one hierarchy that :func:`strict` and :func:`ignore` flip at once."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "DegenerateStatsWarning",
    "InvalidTimestampWarning",
    "MissingBandWarning",
    "PipelineWarning",
    "SensorInferredWarning",
    "ServerFeatureWarning",
    "ignore",
    "strict",
]


class PipelineWarning(UserWarning):
    """Base class of every warning the pipeline emits."""



class MissingBandWarning(PipelineWarning):
    """An optional band or quality asset is absent; ingest continues without it."""


class SensorInferredWarning(PipelineWarning):
    """An item's collection matches no sensor in the sensor config: its sensor was inferred (from its platform and
    asset keys, or from its own STAC metadata). The message names what was inferred and carries a ready-to-paste
    sensors YAML entry that pins it (docs/ingest-inputs.md, "Unknown collections")."""


class DegenerateStatsWarning(PipelineWarning):
    """A band's normalisation stats are unusable (no valid pixel: NaN mean; constant values: zero std)."""


class InvalidTimestampWarning(PipelineWarning):
    """A stored timestamp (a committed manifest's ``updated``) does not parse; it is left out of the watermark."""


class ServerFeatureWarning(PipelineWarning):
    """A STAC API lacks a feature (filter, sort); the pipeline falls back to doing it client-side."""


@contextmanager
def strict() -> Iterator[None]:
    """Turn every :class:`PipelineWarning` into an error inside the block."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PipelineWarning)
        yield


@contextmanager
def ignore() -> Iterator[None]:
    """Silence every :class:`PipelineWarning` inside the block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PipelineWarning)
        yield

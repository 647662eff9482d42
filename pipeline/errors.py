"""Errors raised by the ingest pipeline. Each subclasses the closest builtin and names the failing object.

An item-level error is caught by the ingest job, written to ``failures.parquet`` with its class name and message, and
never stops the other items. Add new classes here rather than raising bare builtins.
"""

from __future__ import annotations

__all__ = [
    "AssetNotFoundError",
    "CRSNotFoundError",
    "GridMismatchError",
    "InvalidItemError",
    "PipelineError",
    "RasterReadError",
    "STACAPIError",
    "SampleDataError",
    "SensorConfigError",
    "SensorNotFoundError",
    "ShardFormatError",
]


class PipelineError(Exception):
    """Base class for every error this package raises on purpose."""


class InvalidItemError(PipelineError, ValueError):
    """A STAC item (or catalog file) is not valid JSON or lacks required fields."""


class SensorNotFoundError(PipelineError, KeyError):
    """No entry in ``sensors.yaml`` matches an item's collection or platform."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AssetNotFoundError(PipelineError, KeyError):
    """An item has no asset for a band the sensor config requires."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CRSNotFoundError(PipelineError, ValueError):
    """Neither the STAC metadata nor the raster header gives a usable projected (metric) CRS."""


class GridMismatchError(PipelineError, ValueError):
    """Bands of one item do not cover a common extent in one CRS."""


class RasterReadError(PipelineError, OSError):
    """A raster could not be opened or read (truncated file, unreachable href, unsupported format)."""



class STACAPIError(PipelineError, ConnectionError):
    """A STAC API request failed after its retries."""



class SensorConfigError(PipelineError, ValueError):
    """``sensors.yaml`` (or a user-supplied sensor file) is malformed: unknown keys, missing fields, bad values."""



class SampleDataError(PipelineError, RuntimeError):
    """The real sample data could not be fetched from the package registry or converted (pipeline/samples.py)."""


class ShardFormatError(PipelineError, ValueError):
    """A shard (or the index pointing into it) does not hold what the training feed reads (docs/feed.md)."""

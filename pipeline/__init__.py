"""pipeline: STAC-driven ingest of optical and SAR scenes into self-describing Parquet chip shards.

The readers are exported lazily, so ``import pipeline`` stays light (no Ray, no torch):

- :func:`load_chips` yields chips as plain numpy dicts (:mod:`pipeline.dataset`).
- :func:`read_dataset` returns a normalised Ray Dataset of one collection for Ray Train (:mod:`pipeline.dataset`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.dataset import load_chips, read_dataset

__all__ = ["load_chips", "read_dataset"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipeline import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")

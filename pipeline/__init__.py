"""pipeline: STAC-driven ingest of optical and SAR scenes into self-describing Parquet chip shards.

The readers are exported lazily, so ``import pipeline`` stays light (no Ray, no torch):

- :func:`load_chips` yields chips as plain numpy dicts (:mod:`pipeline.dataset`).
- :func:`read_dataset` returns the training feed of one collection as a Ray Dataset for Ray Train
  (:mod:`pipeline.dataset`, :mod:`pipeline.ray_feed`).
- :func:`torch_dataset` returns the same feed as a ``torch.utils.data.IterableDataset`` for a plain PyTorch loop,
  and :func:`torch_normalize` normalises a native-dtype batch on its device (:mod:`pipeline.torch_feed`).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.dataset import load_chips, read_dataset
    from pipeline.torch_feed import torch_dataset, torch_normalize

__all__ = ["load_chips", "read_dataset", "torch_dataset", "torch_normalize"]
_HOMES = {
    "load_chips": "pipeline.dataset",
    "read_dataset": "pipeline.dataset",
    "torch_dataset": "pipeline.torch_feed",
    "torch_normalize": "pipeline.torch_feed",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")

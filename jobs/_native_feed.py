"""Where the training jobs normalise chips: native pixels through Ray Data, normalised in the training worker.

The read tasks ship the native dtype (``pipeline.read_dataset(normalize="device")``: uint16 for S2, half the bytes of
float32 through the object store and in the cache) and the consumer normalises each batch with
``pipeline.ray_feed.ChipCollate`` in ``iter_torch_batches``' background thread: in numpy on a CPU worker, on the GPU
after the copy on a GPU worker. The arithmetic is the feed's own (``(x - mean) * (1 / std) * valid`` in float32),
so the model sees the same bits as with ``normalize="worker"`` (docs/feed.md "Native pixels through Ray, normalised
in the consumer").

``"read"`` keeps the normalisation in the read tasks (float32 blocks): for clusters whose read nodes have CPUs to
spare and whose training workers have none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pipeline.feed import Normalize, stats_vector

if TYPE_CHECKING:
    import torch

    from pipeline.ray_feed import ChipCollate

__all__ = ["FeedNormalize", "consumer_collate", "read_normalize"]

FeedNormalize = Literal["consumer", "read"]


def read_normalize(where: FeedNormalize) -> Normalize:
    """The ``normalize=`` of :func:`pipeline.read_dataset` for ``where``: native (``"device"``) or float32."""
    if where not in ("consumer", "read"):
        raise ValueError(f"feed normalisation must be 'consumer' or 'read', got {where!r}.")
    return "device" if where == "consumer" else "worker"


def consumer_collate(mean: Sequence[float], std: Sequence[float], device: torch.device | str,
                     where: FeedNormalize = "consumer") -> ChipCollate | None:
    """The ``collate_fn`` that normalises native batches on ``device`` (``None`` for ``where="read"``).

    ``mean``/``std`` are the collection's ``dataset.json`` stats; they go through the feed's own fallbacks
    (:func:`pipeline.feed.stats_vector`: NaN mean → 0, NaN or non-positive std → 1), as in the read task.
    """
    import torch

    from pipeline.ray_feed import ChipCollate

    if read_normalize(where) == "worker":
        return None
    target = torch.device(device)
    return ChipCollate(stats_vector(mean, 0.0, positive=False), stats_vector(std, 1.0, positive=True),
                       device=target if target.type == "cuda" else None)


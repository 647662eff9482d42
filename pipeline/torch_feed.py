"""The training feed without Ray: a ``torch.utils.data.IterableDataset`` of ready batches (docs/feed.md).

Use it with ``DataLoader(ds, batch_size=None, num_workers=k)``: the dataset batches itself (one preallocated batch
buffer filled by :class:`pipeline.feed.ChipDecoder`, no per-chip collate). Each epoch's chips are cut first across
DDP ranks, then across the DataLoader workers of a rank, into contiguous ranges of the epoch's chip order, so every
chip is served exactly once per epoch; a row group shared by two consumers is read by both, at most once extra per
consumer. With ``shuffle=True`` the row-group order and the chip order inside each row group are drawn from
``(seed, epoch)``: call :meth:`ChipIterableDataset.set_epoch` before each epoch, as with ``DistributedSampler``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.utils.data

from pipeline.feed import ChipDecoder, FeedPlan, FeedUnit, Normalize, open_feed, split_range

__all__ = ["ChipIterableDataset", "torch_dataset", "torch_normalize"]


class ChipIterableDataset(torch.utils.data.IterableDataset[dict[str, torch.Tensor]]):
    """Batches of one collection's chips as ``{"image", "valid", "chip_key", *extras}`` tensors.

    ``image`` is ``(B, C, H, W)`` float32 normalised (``normalize="worker"``) or native (``"device"``, normalise
    with :func:`pipeline.torch_normalize`); ``valid`` is ``(B, H, W)`` bool; ``chip_key`` is ``(B,)`` int64
    (``index.parquet`` maps it to ``chip_id``); pass-through columns (``label*``, ``valid_*``) come as they are.

    Args:
        plan: what to serve (:func:`pipeline.feed.open_feed`).
        batch_size: chips per batch; the last batch of a consumer may be smaller unless ``drop_last``.
        shuffle: draw the row-group order and the chip order within row groups from ``(seed, epoch)``.
        seed: base seed of the shuffle.
        normalize: ``"worker"`` or ``"device"`` (see above).
        drop_last: drop each consumer's last partial batch.
        rank, world_size: this process's DDP rank and the world size; from ``torch.distributed`` when it is
            initialised, else 0 and 1.
        even_ranks: drop up to ``world_size - 1`` chips per epoch so every rank serves as many chips (and, with the
            same ``num_workers``, as many batches): DDP steps stay in lockstep.
    """

    def __init__(
        self,
        plan: FeedPlan,
        *,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        normalize: Normalize = "worker",
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        even_ranks: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.plan = plan
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.normalize: Normalize = normalize
        self.drop_last = drop_last
        self.even_ranks = even_ranks
        self._rank, self._world_size = rank, world_size
        self.epoch = 0
        ChipDecoder(plan, normalize)  # validates ``normalize`` now, not in a worker

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle the next iteration serves (call it before creating the iterator)."""
        self.epoch = int(epoch)

    def _ranks(self) -> tuple[int, int]:
        if self._rank is not None or self._world_size is not None:
            rank, world = self._rank or 0, self._world_size or 1
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world_size={world}), got {rank}.")
        return rank, world

    def epoch_order(self) -> list[tuple[FeedUnit, np.ndarray]]:
        """The epoch's chip order: ``(unit, rows)`` pairs, rows as indices into the unit (same for every consumer)."""
        units = list(self.plan.units)
        if not self.shuffle:
            return [(u, np.arange(u.n_rows)) for u in units]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(units))
        return [(units[k], rng.permutation(units[k].n_rows)) for k in order.tolist()]

    def consumer_range(self, worker: int, num_workers: int) -> tuple[int, int]:
        """``[start, stop)`` in the epoch order served by DataLoader worker ``worker`` of this rank."""
        rank, world = self._ranks()
        total = self.plan.n_chips
        if self.even_ranks:
            total -= total % world
        lo, hi = split_range(total, world, rank)
        a, b = split_range(hi - lo, num_workers, worker)
        return lo + a, lo + b

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        start, stop = self.consumer_range(worker, num_workers)
        decoder = ChipDecoder(self.plan, self.normalize)
        pieces = _pieces(self.epoch_order(), start, stop)
        yield from _batches(decoder, pieces, stop - start, self.batch_size, self.drop_last)


def _pieces(order: list[tuple[FeedUnit, np.ndarray]], start: int, stop: int) -> Iterator[tuple[FeedUnit, np.ndarray]]:
    """The parts of ``order`` that fall in ``[start, stop)``, as ``(unit, rows)``."""
    position = 0
    for unit, rows in order:
        lo, hi = max(start, position), min(stop, position + unit.n_rows)
        if lo < hi:
            yield unit, rows[lo - position : hi - position]
        position += unit.n_rows
        if position >= stop:
            return


def _as_slice(rows: np.ndarray) -> np.ndarray | slice:
    """A slice when ``rows`` are consecutive (one vectorised pass), else the index array."""
    if len(rows) and int(rows[-1]) - int(rows[0]) == len(rows) - 1 and np.all(np.diff(rows) == 1):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _batches(
    decoder: ChipDecoder,
    pieces: Iterator[tuple[FeedUnit, np.ndarray]],
    n: int,
    batch_size: int,
    drop_last: bool,
) -> Iterator[dict[str, torch.Tensor]]:
    remaining = n
    batch: dict[str, torch.Tensor] | None = None
    filled = 0
    for unit, rows in pieces:
        image, valid, extras = decoder.read(unit)
        done = 0
        while done < len(rows):
            if batch is None:
                size = min(batch_size, remaining)
                if drop_last and size < batch_size:
                    return
                batch = _empty_batch(decoder, size, extras)
                filled = 0
            take = min(len(rows) - done, batch["chip_key"].shape[0] - filled)
            part = rows[done : done + take]
            sl = _as_slice(part)
            decoder.write(image, valid, sl, batch["image"][filled : filled + take].numpy(),
                          batch["valid"][filled : filled + take].numpy())
            batch["chip_key"][filled : filled + take] = torch.from_numpy(unit.chip_keys[part])
            for name, values in extras.items():
                batch[name][filled : filled + take] = torch.from_numpy(np.ascontiguousarray(values[part]))
            filled += take
            done += take
            remaining -= take
            if filled == batch["chip_key"].shape[0]:
                yield batch
                batch = None
        del image, valid, extras  # release the row group before reading the next
    if batch is not None:
        yield batch


def _empty(shape: tuple[int, ...], dtype: np.dtype | torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; with ``shared``, born in shared memory.

    A DataLoader worker hands each batch to the main process through shared memory; a batch allocated there from
    the start is sent as a handle, where a plain one is first copied (measured 2x throughput with 2 workers on S2
    batches, docs/feed.md). ``UntypedStorage._new_shared`` is what ``Tensor.share_memory_`` itself allocates with.
    """
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    if not shared:
        return torch.empty(shape, dtype=torch_dtype)
    count = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(count * torch_dtype.itemsize)
    return torch.empty(0, dtype=torch_dtype).set_(storage).view(shape)


def _empty_batch(decoder: ChipDecoder, size: int, extras: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Fresh (uninitialised) tensors for one batch: the decoder writes into their memory directly."""
    _, height, width = decoder.plan.shape
    shared = torch.utils.data.get_worker_info() is not None
    batch = {
        "image": _empty((size, *decoder.plan.shape), decoder.image_dtype, shared),
        "valid": _empty((size, height, width), torch.bool, shared),
        "chip_key": _empty((size,), torch.int64, shared),
    }
    for name, values in extras.items():
        batch[name] = _empty((size, *values.shape[1:]), values.dtype, shared)
    return batch


def torch_dataset(
    dataset_dir: str,
    *,
    collection: str | None = None,
    s3_endpoint: str | None = None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    normalize: Normalize = "worker",
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    even_ranks: bool = False,
) -> ChipIterableDataset:
    """The training feed for a plain PyTorch loop: ``DataLoader(torch_dataset(...), batch_size=None, num_workers=k)``.

    See :class:`ChipIterableDataset` for the batches and arguments; ``collection`` is required when the dataset
    holds several (one dataset per collection: a batch never mixes sensors).

    Raises:
        FileNotFoundError, ValueError, LookupError, ShardFormatError: as :func:`pipeline.feed.open_feed`.
    """
    plan = open_feed(dataset_dir, collection=collection, s3_endpoint=s3_endpoint)
    return ChipIterableDataset(
        plan,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        normalize=normalize,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
        even_ranks=even_ranks,
    )


def torch_normalize(batch: dict[str, Any], mean: Any, std: Any) -> torch.Tensor:
    """Normalise a native-dtype batch on its device: ``(image - mean) / std`` per band, invalid pixels (and NaN) → 0.

    The same arithmetic as ``normalize="worker"`` (float32, times ``1 / std``), so results match it to float
    rounding. ``mean``/``std`` are the plan's (``FeedPlan.mean``/``.std``): arrays or tensors of ``C`` values.
    """
    image = batch["image"]
    device = image.device
    mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32), device=device).view(1, -1, 1, 1)  # (C,) -> (1,C,1,1)
    inv_t = torch.as_tensor((np.float32(1.0) / np.asarray(std, dtype=np.float32)).astype(np.float32), device=device)
    out = image.to(torch.float32, copy=True)
    out.sub_(mean_t).mul_(inv_t.view(1, -1, 1, 1)).mul_(batch["valid"].to(device).unsqueeze(1))  # (B,H,W)->(B,1,H,W)
    if image.is_floating_point():
        out.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return out

"""The training feed as a Ray Data datasource: one read task per shard row group, decoded straight into blocks.

Why not ``read_parquet(...).map_batches(...)`` (docs/feed.md, measured in benchmarks/RESULTS.md): Ray's Parquet
reader makes one read task per file (a one-item dataset is one task, no parallelism), samples files to estimate
block sizes, and the batch UDF then copies every chip twice more (native → float32, then into the output block).
Here each task streams its row group in blocks of ~32 MiB, writes normalised (or native) chips into fresh output
arrays and hands them to Ray as Arrow tensor columns without another copy. Row counts and sizes are known from the
index, so planning reads no pixels. Also here: :class:`ChipCollate` (native batches normalised in the consumer) and
the bytes-bounded cache of :func:`chip_dataset` (docs/feed.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data
from ray.data import DataContext
from ray.data.block import BlockMetadata
from ray.data.collate_fn import ArrowBatchCollateFn
from ray.data.datasource import Datasource, ReadTask
from ray.data.extensions import ArrowTensorArray

from pipeline.feed import ChipDecoder, FeedPlan, FeedUnit, Normalize, normalize_into, split_range

__all__ = ["BLOCK_BYTES", "ChipCollate", "ChipDatasource", "cache_split", "chip_dataset"]

# Default block size: small enough that the first batch waits for ~20 S2 chips, not a whole row group (~157), large
# enough that Ray's per-block cost stays well under 1 % of a block's decode time.
BLOCK_BYTES = 32 * 2**20


class ChipDatasource(Datasource):
    """Chips of one :class:`~pipeline.feed.FeedPlan` as blocks of ``image``, ``valid``, ``chip_key`` (+ extras).

    Args:
        plan: what to serve.
        normalize: ``"worker"`` (float32, normalised) or ``"device"`` (native dtype).
        shuffle: random row-group order and chip order within blocks; drawn anew each time the dataset
            executes (each epoch) unless ``seed`` is given.
        seed: fixes the shuffle.
        rows_per_block: chips per block; default: as many as fit in :data:`BLOCK_BYTES`.
    """

    def __init__(
        self,
        plan: FeedPlan,
        *,
        normalize: Normalize = "worker",
        shuffle: bool = False,
        seed: int | None = None,
        rows_per_block: int | None = None,
    ) -> None:
        super().__init__()
        ChipDecoder(plan, normalize)  # validates ``normalize`` on the driver
        if rows_per_block is not None and rows_per_block < 1:
            raise ValueError(f"rows_per_block must be >= 1 or None, got {rows_per_block}.")
        self.plan = plan
        self.normalize: Normalize = normalize
        self.shuffle = shuffle
        self.seed = seed
        self.rows_per_block = rows_per_block

    def get_name(self) -> str:
        """Name of the read operator in Ray's progress and stats."""
        return "ReadChips"

    def row_nbytes(self) -> int:
        """Bytes of one output row (image in the served dtype, mask, key)."""
        channels, height, width = self.plan.shape
        itemsize = 4 if self.normalize == "worker" else self.plan.dtype.itemsize
        return channels * height * width * itemsize + height * width + 8

    def block_rows(self) -> int:
        """Chips per output block."""
        return self.rows_per_block or max(1, BLOCK_BYTES // self.row_nbytes())

    def block_target_bytes(self) -> int:
        """The ``target_max_block_size`` under which Ray Data emits each of these blocks as it is.

        Ray's task output buffer holds blocks until they exceed the target, then concatenates them (a copy) and
        slices what is over 1.5x the target: with the target at 3/4 of a block, a full block (and a last block of a
        row group of at least 3/4 of it) leaves the task at once and uncopied.
        """
        return max(1, self.block_rows() * self.row_nbytes() * 3 // 4)

    def estimate_inmemory_data_size(self) -> int:
        """Bytes of all output blocks (known exactly from the index)."""
        return self.plan.n_chips * self.row_nbytes()

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: DataContext | None = None
    ) -> list[ReadTask]:
        """One task per row group (or ``parallelism`` tasks of consecutive row groups when that is fewer)."""
        units = list(self.plan.units)
        rng = np.random.default_rng(self.seed) if self.shuffle else None
        if rng is not None:
            units = [units[k] for k in rng.permutation(len(units)).tolist()]
        rows = self.block_rows()
        groups = len(units) if parallelism is None or parallelism <= 0 else min(parallelism, len(units))
        tasks = []
        for g in range(groups):
            lo, hi = split_range(len(units), groups, g)
            chunk = tuple(units[lo:hi])
            seeds = None if rng is None else rng.integers(0, 2**63, size=len(chunk)).tolist()
            n_rows = sum(u.n_rows for u in chunk)
            plan = dataclasses.replace(self.plan, units=chunk)  # a task carries its own units only
            tasks.append(
                ReadTask(
                    _reader(plan, self.normalize, seeds, rows),
                    BlockMetadata(
                        num_rows=n_rows,
                        size_bytes=n_rows * self.row_nbytes(),
                        input_files=tuple(sorted({u.shard for u in chunk})),
                        exec_stats=None,
                    ),
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks


def _reader(plan: FeedPlan, normalize: Normalize, seeds: list[int] | None, rows_per_block: int) -> Any:
    def read() -> Iterator[pa.Table]:
        decoder = ChipDecoder(plan, normalize)
        for k, unit in enumerate(plan.units):
            rng = None if seeds is None else np.random.default_rng(seeds[k])
            yield from _unit_blocks(decoder, unit, rng, rows_per_block)

    return read


def _unit_blocks(decoder: ChipDecoder, unit: FeedUnit, rng: np.random.Generator | None, rows: int
                 ) -> Iterator[pa.Table]:
    """The row group's blocks of ``rows`` chips, each decoded as soon as its pages are read (not the whole group)."""
    _, height, width = decoder.plan.shape
    for start, image, valid, extras in decoder.read_pieces(unit, rows):
        n = image.shape[0]
        picked: np.ndarray | slice = slice(0, n) if rng is None else rng.permutation(n)
        out_image = np.empty((n, *decoder.plan.shape), dtype=decoder.image_dtype)
        out_valid = np.empty((n, height, width), dtype=np.bool_)
        decoder.write(image, valid, picked, out_image, out_valid)
        keys = unit.chip_keys[start : start + n]
        columns: dict[str, pa.Array] = {
            "image": ArrowTensorArray.from_numpy(out_image),
            "valid": ArrowTensorArray.from_numpy(out_valid),
            "chip_key": pa.array(keys[picked]),
        }
        for name, values in extras.items():
            part = values[picked]
            columns[name] = ArrowTensorArray.from_numpy(part) if part.ndim > 1 else pa.array(part)
        yield pa.table(columns)


def cache_split(plan: FeedPlan, row_nbytes: int, cache_bytes: int | None) -> tuple[FeedPlan | None, FeedPlan | None]:
    """``(cached, streamed)``: the row groups that fit in ``cache_bytes`` (in index order), and the rest.

    Either side is ``None`` when empty; ``cache_bytes=None`` or ``0`` caches nothing.
    """
    if cache_bytes is not None and cache_bytes < 0:
        raise ValueError(f"cache_bytes must be >= 0 or None, got {cache_bytes}.")
    fit, used = 0, 0
    for unit in plan.units if cache_bytes else ():
        if used + unit.n_rows * row_nbytes > cache_bytes:  # type: ignore[operator]
            break
        used += unit.n_rows * row_nbytes
        fit += 1
    cached = dataclasses.replace(plan, units=plan.units[:fit]) if fit else None
    streamed = dataclasses.replace(plan, units=plan.units[fit:]) if fit < len(plan.units) else None
    return cached, streamed


def chip_dataset(
    plan: FeedPlan,
    *,
    normalize: Normalize = "worker",
    shuffle: bool = False,
    seed: int | None = None,
    rows_per_block: int | None = None,
    override_num_blocks: int | None = None,
    cache_bytes: int | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> ray.data.Dataset:
    """The Ray Dataset of a plan (what :func:`pipeline.read_dataset` returns; see it for the arguments).

    With ``cache_bytes``, the row groups that fit in that many bytes of decoded blocks are decoded now, once, into
    the object store (``materialize``) and every execution (each epoch) reads them from there; the rest streams from
    the shards each epoch. With ``shuffle`` the cached blocks come in a new random order each epoch (the chips
    inside a cached block keep the order drawn when it was decoded; ``local_shuffle_buffer_size`` mixes them).
    """
    sources = []
    for part, cache in zip(cache_split(plan, ChipDatasource(plan, normalize=normalize).row_nbytes(), cache_bytes),
                           (True, False), strict=True):
        if part is None:
            continue
        source = ChipDatasource(part, normalize=normalize, shuffle=shuffle, seed=seed, rows_per_block=rows_per_block)
        # One read task per row group by default: with fewer tasks than its target parallelism (200) Ray Data would
        # cut every task's output into ~10x smaller blocks (SplitBlocks) and put them through more batch copies.
        tasks = min(override_num_blocks or len(part.units), len(part.units))
        ds = ray.data.read_datasource(source, override_num_blocks=tasks, runtime_env=runtime_env)
        ds.context.target_max_block_size = source.block_target_bytes()  # this dataset's own context only
        if cache:
            ds = ds.materialize()
            ds = ds.randomize_block_order(seed=seed) if shuffle else ds
        sources.append(ds)
    return sources[0] if len(sources) == 1 else sources[0].union(sources[1])


class ChipCollate(ArrowBatchCollateFn):
    """``iter_torch_batches(collate_fn=ChipCollate(mean, std))``: native-dtype batches normalised in the consumer.

    For a dataset read with ``normalize="device"``: the object store carries the native pixels (half the bytes of
    float32 for uint16 S2) and the consumer normalises them, on the CPU straight from the Arrow blocks into one
    float32 batch (no concatenation copy first; the same arithmetic as ``normalize="worker"``, so the same bits),
    or, with ``device`` a CUDA device, on the GPU after copying the native batch there
    (:func:`pipeline.torch_normalize`). It runs in ``iter_torch_batches``' background thread, so it overlaps the
    training step; the batch has ``image`` float32 and every other column as the default collate gives it.

    Args:
        mean, std: the plan's per-band stats (``FeedPlan.mean``/``.std``).
        device: where to normalise; ``None`` or a CPU device: in numpy.
    """

    def __init__(self, mean: Any, std: Any, device: Any = None) -> None:
        import torch

        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.inv_std = (np.float32(1.0) / self.std).astype(np.float32)
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        import torch

        from pipeline.torch_feed import torch_normalize

        chunks = [c.to_numpy() for c in batch.column("image").chunks if len(c)]  # (n_k, C, H, W) views
        valid = np.concatenate([c.to_numpy() for c in batch.column("valid").chunks if len(c)])  # (B, H, W)
        out: dict[str, Any] = {"valid": torch.from_numpy(valid)}
        for name in batch.column_names:
            if name not in ("image", "valid"):
                column = batch.column(name)
                parts = [c.to_numpy(zero_copy_only=False) for c in column.chunks if len(c)]
                out[name] = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))
        if self.device.type != "cpu":
            native = {"image": torch.from_numpy(np.concatenate(chunks)).to(self.device), "valid": out["valid"]}
            out["image"] = torch_normalize(native, self.mean, self.std)
            return out
        image = np.empty((len(valid), *chunks[0].shape[1:]), dtype=np.float32)
        start = 0
        for chunk in chunks:
            stop = start + len(chunk)
            normalize_into(chunk, valid[start:stop], self.mean, self.inv_std, image[start:stop])
            start = stop
        out["image"] = torch.from_numpy(image)
        return out

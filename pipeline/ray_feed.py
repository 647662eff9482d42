"""The training feed as a Ray Data datasource: one read task per shard row group, decoded straight into blocks.

Why not ``read_parquet(...).map_batches(...)`` (docs/feed.md, measured in benchmarks/RESULTS.md): Ray's Parquet
reader makes one read task per file (a one-item dataset is one task, no parallelism), samples files to estimate
block sizes, and the batch UDF then copies every chip twice more (native → float32, then into the output block).
Here each task reads its row group, writes normalised (or native) chips into fresh output arrays in one pass and
hands them to Ray as Arrow tensor columns without another copy. Row counts and sizes are known from the index, so
planning reads no pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data import DataContext
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.data.extensions import ArrowTensorArray

from pipeline.feed import ChipDecoder, FeedPlan, FeedUnit, Normalize, split_range

__all__ = ["ChipDatasource"]


class ChipDatasource(Datasource):
    """Chips of one :class:`~pipeline.feed.FeedPlan` as blocks of ``image``, ``valid``, ``chip_key`` (+ extras).

    Args:
        plan: what to serve.
        normalize: ``"worker"`` (float32, normalised) or ``"device"`` (native dtype).
        shuffle: random row-group order and chip order within row groups; drawn anew each time the dataset
            executes (each epoch) unless ``seed`` is given.
        seed: fixes the shuffle.
        rows_per_block: chips per block; default: as many as fit in ``DataContext.target_max_block_size``.
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

    def _row_nbytes(self) -> int:
        channels, height, width = self.plan.shape
        itemsize = 4 if self.normalize == "worker" else self.plan.dtype.itemsize
        return channels * height * width * itemsize + height * width + 8

    def estimate_inmemory_data_size(self) -> int:
        """Bytes of all output blocks (known exactly from the index)."""
        return self.plan.n_chips * self._row_nbytes()

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: DataContext | None = None
    ) -> list[ReadTask]:
        """One task per row group (or ``parallelism`` tasks of consecutive row groups when that is fewer)."""
        units = list(self.plan.units)
        rng = np.random.default_rng(self.seed) if self.shuffle else None
        if rng is not None:
            units = [units[k] for k in rng.permutation(len(units)).tolist()]
        context = data_context or DataContext.get_current()
        rows = self.rows_per_block or max(1, int(context.target_max_block_size or 128 * 2**20) // self._row_nbytes())
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
                        size_bytes=n_rows * self._row_nbytes(),
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
            order = None if seeds is None else np.random.default_rng(seeds[k]).permutation(unit.n_rows)
            yield from _unit_blocks(decoder, unit, order, rows_per_block)

    return read


def _unit_blocks(decoder: ChipDecoder, unit: FeedUnit, order: np.ndarray | None, rows: int) -> Iterator[pa.Table]:
    image, valid, extras = decoder.read(unit)
    _, height, width = decoder.plan.shape
    for start in range(0, unit.n_rows, rows):
        stop = min(unit.n_rows, start + rows)
        picked: np.ndarray | slice = slice(start, stop) if order is None else order[start:stop]
        out_image = np.empty((stop - start, *decoder.plan.shape), dtype=decoder.image_dtype)
        out_valid = np.empty((stop - start, height, width), dtype=np.bool_)
        decoder.write(image, valid, picked, out_image, out_valid)
        columns: dict[str, pa.Array] = {
            "image": ArrowTensorArray.from_numpy(out_image),
            "valid": ArrowTensorArray.from_numpy(out_valid),
            "chip_key": pa.array(unit.chip_keys[picked]),
        }
        for name, values in extras.items():
            part = values[picked]
            columns[name] = ArrowTensorArray.from_numpy(part) if part.ndim > 1 else pa.array(part)
        yield pa.table(columns)

"""pipeline.ray_feed: streamed blocks, the consumer-side collate and the bytes-bounded cache of read_dataset."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pipeline
from pipeline.feed import normalize_numpy, open_feed
from pipeline.manifest import chip_key
from pipeline.ray_feed import ChipCollate, ChipDatasource, cache_split
from tests.pipeline.test_feed import _reference, _stats, dataset_dir, regrouped

__all__ = ["dataset_dir", "regrouped"]  # module fixtures of test_feed, used here

S2 = "sentinel-2-l2a"


def _epoch(ds: Any, **kwargs: Any) -> list[dict[str, torch.Tensor]]:
    return list(ds.iter_torch_batches(batch_size=4, **kwargs))


def _keys(batches: list[dict[str, torch.Tensor]]) -> list[int]:
    return [int(k) for b in batches for k in b["chip_key"]]


def test_blocks_stream_row_groups_in_pieces(ray_local: Any, dataset_dir: Path) -> None:
    """A row group leaves its read task in blocks of ``rows_per_block`` chips, not coalesced by Ray into bigger ones."""
    plan = open_feed(str(dataset_dir), collection=S2)
    assert max(u.n_rows for u in plan.units) > 8  # the fixture's S2 row groups hold more than one block each
    ds = pipeline.read_dataset(str(dataset_dir), collection=S2, rows_per_block=8).materialize()
    sizes = [m.num_rows for bundle in ds.iter_internal_ref_bundles() for m in bundle.metadata]
    assert sum(sizes) == plan.n_chips
    assert max(sizes) == 8 and len(sizes) >= plan.n_chips // 8


def test_collate_normalises_native_batches_like_the_worker(ray_local: Any, regrouped: Path) -> None:
    """uint16 through Ray, normalised by ChipCollate in the consumer: the bits of normalize_numpy over load_chips."""
    reference = _reference(regrouped, S2)
    mean, std = _stats(regrouped, S2)
    plan = open_feed(str(regrouped), collection=S2)
    ds = pipeline.read_dataset(str(regrouped), collection=S2, normalize="device", rows_per_block=2)
    batches = _epoch(ds, collate_fn=ChipCollate(plan.mean, plan.std))
    assert sorted(_keys(batches)) == sorted(reference)
    for batch in batches:
        assert batch["image"].dtype == torch.float32 and batch["valid"].dtype == torch.bool
        for image, valid, key in zip(batch["image"], batch["valid"], batch["chip_key"], strict=True):
            want = reference[int(key)]
            expected = normalize_numpy(want["image"][None], want["valid"][None], mean, std)[0]
            assert np.array_equal(image.numpy(), expected)
            assert np.array_equal(valid.numpy(), want["valid"])


def test_cache_split_is_bounded_in_bytes(regrouped: Path) -> None:
    plan = open_feed(str(regrouped), collection=S2)
    row = ChipDatasource(plan, normalize="device").row_nbytes()
    budget = (plan.n_chips // 2) * row
    cached, streamed = cache_split(plan, row, budget)
    assert cached is not None and streamed is not None
    used = sum(u.n_rows for u in cached.units) * row
    assert used <= budget < used + streamed.units[0].n_rows * row  # as many row groups as fit, no more
    assert cached.units + streamed.units == plan.units
    assert cache_split(plan, row, None) == (None, plan)
    assert cache_split(plan, row, plan.n_chips * row)[1] is None
    with pytest.raises(ValueError, match="cache_bytes must be >= 0"):
        cache_split(plan, row, -1)


def test_full_cache_serves_later_epochs_without_the_shards(ray_local: Any, regrouped: Path,
                                                           tmp_path: Path) -> None:
    """A collection that fits is decoded once: later epochs read no shard, and serve every chip once, bit for bit."""
    root = tmp_path / "ds"
    shutil.copytree(regrouped, root)
    reference = _reference(root, S2)
    plan = open_feed(str(root), collection=S2)
    row = ChipDatasource(plan, normalize="device").row_nbytes()
    ds = pipeline.read_dataset(str(root), collection=S2, normalize="device", shuffle=True, rows_per_block=2,
                               cache_bytes=plan.n_chips * row)
    shutil.rmtree(root / "shards")  # from now on only the cache can serve the chips
    orders = []
    for _ in range(3):
        batches = _epoch(ds)
        keys = _keys(batches)
        assert Counter(keys) == Counter(list(reference))  # every chip exactly once per epoch
        for batch in batches:
            for image, key in zip(batch["image"], batch["chip_key"], strict=True):
                assert np.array_equal(image.numpy(), reference[int(key)]["image"])
        orders.append(tuple(keys))
    assert len(set(orders)) > 1  # the cached blocks come in a new order each epoch (30 blocks: equal by chance ~0)


def test_partial_cache_streams_the_rest(ray_local: Any, regrouped: Path) -> None:
    reference = _reference(regrouped, S2)
    plan = open_feed(str(regrouped), collection=S2)
    row = ChipDatasource(plan, normalize="worker").row_nbytes()
    ds = pipeline.read_dataset(str(regrouped), collection=S2, cache_bytes=(plan.n_chips // 3) * row)
    for _ in range(2):
        batches = _epoch(ds)
        assert Counter(_keys(batches)) == Counter(list(reference))
        for batch in batches:
            assert batch["image"].dtype == torch.float32
    expected = {chip_key(c["chip_id"]) for c in pipeline.load_chips(str(regrouped), collection=S2)}
    assert set(_keys(batches)) == expected


def test_read_path_imports_no_raster_or_geometry_stack() -> None:
    """A read task imports ``pipeline.ray_feed``: no rasterio, shapely, pyproj or torch."""
    import subprocess
    import sys

    code = ("import sys, pipeline.ray_feed; "
            "print(sorted(m for m in ('rasterio', 'shapely', 'pyproj', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]", out.stdout

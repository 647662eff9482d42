"""pipeline.feed + pipeline.torch_feed: the decode path and the plain-PyTorch feed against load_chips and the stats."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

import pipeline
from pipeline.errors import ShardFormatError
from pipeline.feed import normalize_numpy, open_feed, split_range
from pipeline.manifest import chip_key
from pipeline.shards import METADATA_KEY, decode_images, decode_valid
from tests.pipeline.test_dataset import ingest_synthetic

S1 = "sentinel-1-rtc"


def _reference(root: Path, collection: str) -> dict[int, dict[str, np.ndarray]]:
    """load_chips, keyed by chip_key: the ground truth every feed must reproduce."""
    return {
        chip_key(c["chip_id"]): {"image": c["image"], "valid": c["valid"]}
        for c in pipeline.load_chips(str(root), collection=collection)
    }


def _stats(root: Path, collection: str) -> tuple[np.ndarray, np.ndarray]:
    stats = json.loads((root / "dataset.json").read_text())["collections"][collection]["stats"]
    return np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)


def _keys(batches: list[dict[str, torch.Tensor]]) -> list[int]:
    return [int(k) for b in batches for k in b["chip_key"]]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic catalog at 16 px chips: 30 S1 chips in one shard, 87 S2 chips in two, 16 Landsat chips."""
    return ingest_synthetic(tmp_path_factory.mktemp("feed") / "ds", 16)


@pytest.fixture(scope="module")
def regrouped(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same dataset with every shard rewritten in row groups of 3 chips (and the index updated): many units."""
    root = tmp_path_factory.mktemp("regrouped") / "ds"
    shutil.copytree(dataset_dir, root)
    index = pq.read_table(root / "index.parquet")
    rows = index.to_pylist()
    for shard in {r["shard_path"] for r in rows if r["shard_path"]}:
        table = pq.read_table(root / shard)
        pq.write_table(table, root / shard, row_group_size=3, compression="zstd")
    for r in rows:
        if r["shard_path"]:
            position = r["row_index"]  # every shard of the fixture is a single row group
            r["row_group"], r["row_index"] = position // 3, position % 3
    pq.write_table(pa.Table.from_pylist(rows, schema=index.schema), root / "index.parquet")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_native_batches_are_load_chips_bit_for_bit(regrouped: Path, workers: int) -> None:
    reference = _reference(regrouped, S1)
    ds = pipeline.torch_dataset(str(regrouped), collection=S1, batch_size=4, normalize="device")
    batches = list(DataLoader(ds, batch_size=None, num_workers=workers))
    assert sorted(_keys(batches)) == sorted(reference)
    for batch in batches:
        assert batch["image"].dtype == torch.float32 and batch["valid"].dtype == torch.bool  # S1 is float32 dB
        for image, valid, key in zip(batch["image"], batch["valid"], batch["chip_key"], strict=True):
            want = reference[int(key)]
            assert np.array_equal(image.numpy(), want["image"], equal_nan=True)
            assert np.array_equal(valid.numpy(), want["valid"])


def test_normalised_batches_match_stats(regrouped: Path) -> None:
    reference = _reference(regrouped, S1)
    mean, std = _stats(regrouped, S1)
    ds = pipeline.torch_dataset(str(regrouped), collection=S1, batch_size=5, shuffle=True, seed=3)
    n = 0
    for batch in DataLoader(ds, batch_size=None, num_workers=0):
        for image, valid, key in zip(batch["image"], batch["valid"], batch["chip_key"], strict=True):
            raw, mask = reference[int(key)]["image"], reference[int(key)]["valid"]
            got = image.numpy()
            assert np.array_equal(got, normalize_numpy(raw[None], mask[None], mean, std)[0])  # the feed's definition
            independent = (raw[:, mask] - mean[:, None]) / std[:, None]  # the textbook z-score, on valid pixels
            np.testing.assert_allclose(got[:, mask], independent, rtol=1e-5, atol=1e-5)
            assert np.all(got[:, ~mask] == 0.0) and np.isfinite(got).all()
            assert np.array_equal(valid.numpy(), mask)
            n += 1
    assert n == len(reference)


def test_device_normalisation_matches_worker(regrouped: Path) -> None:
    plan = open_feed(str(regrouped), collection=S1)
    worker = list(pipeline.torch_dataset(str(regrouped), collection=S1, batch_size=4))
    native = list(pipeline.torch_dataset(str(regrouped), collection=S1, batch_size=4, normalize="device"))
    for a, b in zip(worker, native, strict=True):
        assert torch.equal(a["chip_key"], b["chip_key"])
        image = b["image"].clone()
        normalised = pipeline.torch_normalize(b, plan.mean, plan.std)
        assert torch.equal(b["image"], image)  # the native batch is left untouched
        torch.testing.assert_close(normalised, a["image"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_two_workers_cover_every_chip_once(regrouped: Path, shuffle: bool) -> None:
    everything = sorted(_reference(regrouped, S1))
    served: list[int] = []
    for rank in range(2):
        ds = pipeline.torch_dataset(
            str(regrouped), collection=S1, batch_size=2, shuffle=shuffle, seed=7, rank=rank, world_size=2
        )
        ds.set_epoch(1)
        served += _keys(list(DataLoader(ds, batch_size=None, num_workers=2)))
    assert sorted(served) == everything and len(served) == len(set(served))


def test_even_ranks_serve_equal_batch_counts(regrouped: Path) -> None:
    n = len(_reference(regrouped, S1))
    world = 3 if n % 3 else 4  # a world size that does not divide the chip count
    assert n % world
    counts, batches = [], []
    for rank in range(world):
        ds = pipeline.torch_dataset(
            str(regrouped), collection=S1, batch_size=2, rank=rank, world_size=world, even_ranks=True
        )
        served = list(DataLoader(ds, batch_size=None, num_workers=2))
        counts.append(len(_keys(served)))
        batches.append(len(served))
    assert len(set(counts)) == 1 and len(set(batches)) == 1 and sum(counts) == n - n % world


def test_shuffled_epochs_differ_with_the_same_multiset(regrouped: Path) -> None:
    ds = pipeline.torch_dataset(str(regrouped), collection=S1, batch_size=3, shuffle=True, seed=11)
    orders = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        orders.append(_keys(list(ds)))
    assert orders[0] != orders[1]
    assert Counter(orders[0]) == Counter(orders[1]) and len(set(orders[0])) == len(orders[0])
    assert orders[0] == orders[2]  # an epoch's order is a function of (seed, epoch)
    plain = pipeline.torch_dataset(str(regrouped), collection=S1, batch_size=3)
    rows = [r for r in pq.read_table(regrouped / "index.parquet").to_pylist() if r["collection"] == S1]
    rows = [r for r in rows if r["status"] == "written"]
    storage = sorted(rows, key=lambda r: (r["shard_path"], r["row_group"], r["row_index"]))
    assert _keys(list(plain)) == [r["chip_key"] for r in storage]  # unshuffled: the shards' storage order


def test_drop_last_and_batch_sizes(regrouped: Path) -> None:
    n = len(_reference(regrouped, S1))
    sizes = [len(b["chip_key"]) for b in pipeline.torch_dataset(str(regrouped), collection=S1, batch_size=4)]
    assert sum(sizes) == n and all(s == 4 for s in sizes[:-1])
    dropped = list(pipeline.torch_dataset(str(regrouped), collection=S1, batch_size=4, drop_last=True))
    assert [len(b["chip_key"]) for b in dropped] == [4] * (n // 4)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.torch_dataset(str(regrouped), collection=S1, batch_size=0)
    with pytest.raises(ValueError, match="normalize"):
        pipeline.torch_dataset(str(regrouped), collection=S1, normalize="gpu")  # type: ignore[arg-type]


def test_batches_never_mix_collections(regrouped: Path) -> None:
    with pytest.raises(ValueError, match=r"holds \d collections.*pass collection="):
        pipeline.torch_dataset(str(regrouped))
    s2 = pipeline.torch_dataset(str(regrouped), collection="sentinel-2-l2a", batch_size=64)
    expected = {chip_key(c["chip_id"]) for c in pipeline.load_chips(str(regrouped), collection="sentinel-2-l2a")}
    assert set(_keys(list(s2))) == expected and s2.plan.dtype == np.uint16


def _rewrite_shard(root: Path, collection: str, edit: object, only_last: bool = False) -> None:
    index = pq.read_table(root / "index.parquet").to_pylist()
    shards = sorted({r["shard_path"] for r in index if r["collection"] == collection and r["shard_path"]})
    for shard in shards[-1:] if only_last else shards:
        table = pq.read_table(root / shard)
        pq.write_table(edit(table), root / shard)  # type: ignore[operator]


def test_schema_1_shards_still_read(dataset_dir: Path, tmp_path: Path) -> None:
    """A shard written before the raw-bytes encoding (schema 1: Arrow tensors, no dtype/shape columns) still reads."""
    root = tmp_path / "ds"
    shutil.copytree(dataset_dir, root)
    reference = _reference(root, S1)

    def to_schema_1(table: pa.Table) -> pa.Table:
        meta = json.loads(table.schema.metadata[METADATA_KEY.encode()])
        meta["shard_schema_version"] = "1"
        image = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(decode_images(table)))
        valid = pa.FixedShapeTensorArray.from_numpy_ndarray(decode_valid(table).view(np.uint8))
        old = table.drop_columns(["image", "valid", "dtype", "shape"])
        return old.append_column("image", image).append_column("valid", valid).replace_schema_metadata(
            {METADATA_KEY: json.dumps(meta)}
        )

    _rewrite_shard(root, S1, to_schema_1)
    batches = list(pipeline.torch_dataset(str(root), collection=S1, batch_size=4, normalize="device"))
    assert sorted(_keys(batches)) == sorted(reference)
    for batch in batches:
        for image, valid, key in zip(batch["image"], batch["valid"], batch["chip_key"], strict=True):
            assert np.array_equal(image.numpy(), reference[int(key)]["image"], equal_nan=True)
            assert np.array_equal(valid.numpy(), reference[int(key)]["valid"])


def test_shards_the_feed_cannot_read_fail_clearly(dataset_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(dataset_dir, root)
    _rewrite_shard(root, S1, lambda t: t.drop_columns(["valid"]))
    with pytest.raises(ShardFormatError, match=r"processing version p.*lacks column\(s\) \['valid'\].*re-ingest"):
        pipeline.torch_dataset(str(root), collection=S1)

    def other_shape(table: pa.Table) -> pa.Table:
        meta = json.loads(table.schema.metadata[METADATA_KEY.encode()])
        meta["chip_shape"] = [meta["chip_shape"][0], 32, 32]
        return table.replace_schema_metadata({METADATA_KEY: json.dumps(meta)})

    shutil.rmtree(root)
    shutil.copytree(dataset_dir, root)
    _rewrite_shard(root, "sentinel-2-l2a", other_shape, only_last=True)  # S2 has two shards; the first sets the shape
    with pytest.raises(ShardFormatError, match=r"\[12, 32, 32\].*\[12, 16, 16\]; one feed serves one chip shape"):
        pipeline.torch_dataset(str(root), collection="sentinel-2-l2a")


def test_label_columns_pass_through(dataset_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(dataset_dir, root)
    labels: dict[int, int] = {}

    def add_label(table: pa.Table) -> pa.Table:
        ids = table["chip_id"].to_pylist()
        values = [len(c) % 7 for c in ids]
        labels.update({chip_key(c): v for c, v in zip(ids, values, strict=True)})
        return table.append_column("label", pa.array(values, pa.int64()))

    _rewrite_shard(root, S1, add_label)
    assert open_feed(str(root), collection=S1).extras == ("label",)
    for batch in DataLoader(pipeline.torch_dataset(str(root), collection=S1, batch_size=3), batch_size=None, num_workers=2):
        assert batch["label"].dtype == torch.int64
        assert batch["label"].tolist() == [labels[int(k)] for k in batch["chip_key"]]


def test_split_range_partitions() -> None:
    for n in (0, 1, 7, 100):
        for parts in (1, 2, 3, 8):
            ranges = [split_range(n, parts, p) for p in range(parts)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1
    with pytest.raises(ValueError, match="part must be"):
        split_range(3, 2, 2)

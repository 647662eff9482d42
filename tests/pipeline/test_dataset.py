"""pipeline.dataset: load_chips (numpy, native dtype) and read_dataset (the training feed as a Ray Dataset)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import pipeline
from pipeline.feed import normalize_numpy
from pipeline.manifest import OutputStore, chip_key, write_outputs
from pipeline.ray_ingest import IngestSettings, ingest_item, processing_version
from pipeline.sensors import load_sensors
from pipeline.stac import read_catalog

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"


def ingest_synthetic(out: Path, chip_size: int) -> Path:
    """The synthetic catalog ingested item by item into ``out`` (no Ray), then the outputs rebuilt from the manifests."""
    sensors = load_sensors()
    pv = processing_version(sensors, chip_size=chip_size, stride=None, max_nodata=50.0, max_cloud=None)
    settings = IngestSettings(output=str(out), dataset_version="v1", processing_version=pv, chip_size=chip_size)
    store = OutputStore.open(str(out))
    for item in read_catalog(SYNTHETIC / "items-fc.json").items:
        ingest_item(json.dumps(item), settings, sensors=sensors, store=store)
    write_outputs(store, dataset_version="v1", source={"catalog": "synthetic"})
    return out


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic catalog ingested at 64 px chips."""
    return ingest_synthetic(tmp_path_factory.mktemp("dataset"), 64)


def _written(dataset_dir: Path, collection: str | None = None) -> list[dict[str, Any]]:
    rows = pq.read_table(dataset_dir / "index.parquet").to_pylist()
    return [r for r in rows if r["status"] == "written" and (collection is None or r["collection"] == collection)]


def test_load_chips_native_dtype_and_georeferencing(dataset_dir: Path) -> None:
    written = _written(dataset_dir, "sentinel-1-rtc")
    assert written
    chips = list(pipeline.load_chips(str(dataset_dir), collection="sentinel-1-rtc"))
    assert [c["chip_id"] for c in chips] == [r["chip_id"] for r in written]
    for chip, row in zip(chips, written, strict=True):
        assert chip["image"].dtype == np.float32 and chip["image"].shape == (2, 64, 64)
        assert chip["valid"].dtype == bool and chip["valid"].shape == (64, 64) and chip["valid"].any()
        assert chip["bands"] == ["vv", "vh"] and chip["crs"] == f"EPSG:{row['utm_epsg']}"
        assert chip["item_id"] == row["item_id"] and len(chip["transform"]) == 6
        assert tuple(chip["window"]) == tuple(row["window"])
        from pipeline.shards import chip_checksum

        assert chip_checksum(chip["image"]) == row["checksum"]


def test_load_chips_by_id_in_requested_order(dataset_dir: Path) -> None:
    ids = [r["chip_id"] for r in _written(dataset_dir)][::-1]
    assert [c["chip_id"] for c in pipeline.load_chips(str(dataset_dir), ids)] == ids
    with pytest.raises(KeyError, match="not written chips"):
        list(pipeline.load_chips(str(dataset_dir), ["nope"]))


def test_read_dataset_normalised_torch_batches(ray_local: Any, dataset_dir: Path) -> None:
    meta = json.loads((dataset_dir / "dataset.json").read_text())
    stats = meta["collections"]["sentinel-1-rtc"]["stats"]
    mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
    ds = pipeline.read_dataset(str(dataset_dir), collection="sentinel-1-rtc")
    batches = list(ds.iter_torch_batches(batch_size=8, prefetch_batches=2))
    images = np.concatenate([b["image"].numpy() for b in batches])
    valid = np.concatenate([b["valid"].numpy() for b in batches])
    keys = np.concatenate([b["chip_key"].numpy() for b in batches])
    assert images.dtype == np.float32 and images.shape[1:] == (2, 64, 64) and valid.dtype == bool
    by_key = {chip_key(c["chip_id"]): c for c in pipeline.load_chips(str(dataset_dir), collection="sentinel-1-rtc")}
    assert sorted(keys.tolist()) == sorted(by_key)
    for image, mask, key in zip(images, valid, keys, strict=True):
        chip = by_key[int(key)]
        raw = chip["image"]
        assert np.array_equal(mask, chip["valid"])
        assert np.array_equal(image, normalize_numpy(raw[None], chip["valid"][None], mean, std)[0])
        np.testing.assert_allclose(image[:, mask], (raw[:, mask] - mean[:, None]) / std[:, None], rtol=1e-5, atol=1e-5)
        assert np.all(image[:, ~mask] == 0.0)


def test_read_dataset_native_is_bit_identical(ray_local: Any, dataset_dir: Path) -> None:
    by_key = {chip_key(c["chip_id"]): c for c in pipeline.load_chips(str(dataset_dir), collection="sentinel-2-l2a")}
    ds = pipeline.read_dataset(str(dataset_dir), collection="sentinel-2-l2a", normalize="device", rows_per_block=2)
    seen = []
    for batch in ds.iter_torch_batches(batch_size=3):
        assert batch["image"].dtype == torch.uint16
        for image, mask, key in zip(batch["image"], batch["valid"], batch["chip_key"], strict=True):
            assert np.array_equal(image.numpy(), by_key[int(key)]["image"])
            assert np.array_equal(mask.numpy(), by_key[int(key)]["valid"])
            seen.append(int(key))
    assert sorted(seen) == sorted(by_key)


def test_read_dataset_shuffles_each_epoch(ray_local: Any, dataset_dir: Path) -> None:
    """Row-group order and the chip order inside each block are drawn anew per epoch (one block per row group here)."""
    ds = pipeline.read_dataset(str(dataset_dir), collection="sentinel-2-l2a", shuffle=True)
    epochs = [[int(k) for b in ds.iter_torch_batches(batch_size=2) for k in b["chip_key"]] for _ in range(8)]
    assert all(sorted(e) == sorted(epochs[0]) and len(set(e)) == len(e) for e in epochs)
    # 5 chips in row groups of 2 and 3: 2 * 2! * 3! = 24 orders; shuffling the row groups alone gives only 2. Eight
    # epochs showing at most 2 orders by chance have probability under C(24, 2) * (2/24)**8 < 1e-6.
    assert len({tuple(e) for e in epochs}) > 2
    fixed = pipeline.read_dataset(str(dataset_dir), collection="sentinel-2-l2a", shuffle=True, seed=5)
    first, second = ([int(k) for b in fixed.iter_torch_batches(batch_size=2) for k in b["chip_key"]] for _ in range(2))
    assert first == second


def test_read_dataset_split_for_two_train_workers(ray_local: Any, dataset_dir: Path) -> None:
    """What ``ray.train.get_dataset_shard`` gives two workers: a streaming split, every chip exactly once."""
    ds = pipeline.read_dataset(str(dataset_dir), collection="sentinel-2-l2a", rows_per_block=1)
    left, right = ds.streaming_split(2, equal=False)

    @ray_local.remote(num_cpus=0)  # Train workers' CPUs are reserved apart from the read tasks' (2 CPUs here)
    def consume(shard: Any) -> list[int]:
        return [int(k) for b in shard.iter_torch_batches(batch_size=2) for k in b["chip_key"]]

    served = sum(ray_local.get([consume.remote(left), consume.remote(right)]), [])
    expected = {chip_key(c["chip_id"]) for c in pipeline.load_chips(str(dataset_dir), collection="sentinel-2-l2a")}
    assert sorted(served) == sorted(expected)


def test_read_dataset_requires_one_collection(ray_local: Any, dataset_dir: Path) -> None:
    meta = json.loads((dataset_dir / "dataset.json").read_text())
    assert len(meta["collections"]) > 1  # the synthetic catalog holds S1, S2 and Landsat items
    with pytest.raises(ValueError, match=r"holds \d collections.*pass collection="):
        pipeline.read_dataset(str(dataset_dir))
    with pytest.raises(ValueError, match="is not in"):
        pipeline.read_dataset(str(dataset_dir), collection="no-such-collection")
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        pipeline.read_dataset(str(dataset_dir / "nothing"))


def test_import_pipeline_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = "import sys, pipeline; pipeline.load_chips; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"

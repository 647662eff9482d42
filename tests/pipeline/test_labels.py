"""Label side tables on a real ingest of the synthetic COGs: scene classes, class rasters, change pairs, boxes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from jobs.ingest import main as ingest_main
from pipeline.errors import LabelError
from pipeline.labels import (
    IGNORE_INDEX,
    decode_masks,
    read_labels,
    write_box_labels,
    write_change_pairs,
    write_majority_labels,
    write_raster_labels,
    write_scene_labels,
)
from pipeline.stac import read_catalog

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"
S2 = "sentinel-2-l2a"


def _s2_items() -> list[dict[str, Any]]:
    return [it for it in read_catalog(SYNTHETIC / "items-fc.json").items if it["collection"] == S2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> tuple[Path, list[dict[str, Any]]]:
    """Both synthetic S2 items plus a copy of the first one acquired 10 days later (a repeat pass)."""
    root = tmp_path_factory.mktemp("labels")
    items = _s2_items()
    later = json.loads(json.dumps(items[0]))
    later["id"] = items[0]["id"] + "-repeat"
    when = datetime.fromisoformat(items[0]["properties"]["datetime"].replace("Z", "+00:00")) + timedelta(days=10)
    later["properties"]["datetime"] = when.isoformat().replace("+00:00", "Z")
    catalog = root / "items.json"
    catalog.write_text(json.dumps([*items, later]))
    out = root / "ds"
    assert ingest_main(["--catalog", str(catalog), "--output", str(out), "--chip-size", "32", "--no-progress"]) == 0
    return out, [*items, later]


def _written(out: Path) -> list[dict[str, Any]]:
    index = pq.read_table(out / "index.parquet").to_pylist()
    return [r for r in index if r["status"] == "written"]


def _grid(item: dict[str, Any]) -> tuple[int, Affine, int, int]:
    """The item's 10 m grid (its B02 asset)."""
    with rasterio.open(item["assets"]["B02"]["href"]) as ds:
        return ds.crs.to_epsg(), ds.transform, ds.width, ds.height


def _write_raster(path: Path, data: np.ndarray, epsg: int, transform: Affine, nodata: int | None = 0) -> str:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=f"EPSG:{epsg}", transform=transform, nodata=nodata) as dst:
        dst.write(data[None])  # (H, W) -> (1, H, W)
    return str(path)


def test_scene_labels_multi_hot_per_chip(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    out, items = dataset
    labelled = json.loads(json.dumps(items))
    names = {items[0]["id"]: ["forest", "water"], items[1]["id"]: ["urban"], items[2]["id"]: ["water"]}
    for item in labelled:
        item["properties"]["test:labels"] = names[item["id"]]
    label_set = write_scene_labels(str(out), "scene", property="test:labels", items=labelled)
    assert label_set.classes == ["forest", "urban", "water"] and label_set.kind == "multilabel"
    table, meta = read_labels(str(out), "scene")
    assert meta == label_set
    item_of = {r["chip_id"]: r["item_id"] for r in _written(out)}
    assert sorted(table["chip_id"].to_pylist()) == sorted(item_of)
    for chip_id, hot in zip(table["chip_id"].to_pylist(), table["labels"].to_pylist(), strict=True):
        assert [c for c, h in zip(label_set.classes, hot, strict=True) if h] == sorted(names[item_of[chip_id]])

    with pytest.raises(LabelError, match=r"not in the class list"):
        write_scene_labels(str(out), "bad", property="test:labels", items=labelled, classes=["forest", "water"])
    with pytest.raises(LabelError, match=r"has no property 'test:labels'"):
        write_scene_labels(str(out), "bad", property="test:labels", items=items)  # the unlabelled originals
    with pytest.raises(LabelError, match=r"has no label set 'nope'.*scene"):
        read_labels(str(out), "nope")
    with pytest.raises(LabelError, match="names a folder"):
        write_scene_labels(str(out), "../escape", property="test:labels", items=labelled)


def test_class_raster_is_co_registered_nearest_and_remapped(
    dataset: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    out, items = dataset
    epsg, transform, width, height = _grid(items[0])
    rng = np.random.default_rng(0)
    classes = rng.choice(np.array([0, 10, 20, 30], np.uint8), size=(height, width))  # 0 = the file's nodata
    raster = _write_raster(tmp_path / "lc.tif", classes, epsg, transform)
    remap = tmp_path / "remap.yaml"
    remap.write_text("classes: [water, vegetation]\nremap: {10: water, 20: vegetation, 30: ignore}\n")
    label_set = write_raster_labels(str(out), "lc", raster=raster, remap_file=str(remap), collection=S2)
    table, _ = read_labels(str(out), "lc")
    masks = decode_masks(table)
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[10], lut[20] = 0, 1
    windows = {r["chip_id"]: (r["item_id"], r["window"]) for r in _written(out)}
    checked = 0
    for chip_id, mask in zip(table["chip_id"].to_pylist(), masks, strict=True):
        item_id, (col, row, w, h) = windows[chip_id]
        if item_id == items[1]["id"]:
            continue  # the other tile: the raster does not reach it
        expected = np.full((h, w), IGNORE_INDEX, np.uint8)
        part = classes[row : row + h, col : col + w]
        expected[: part.shape[0], : part.shape[1]] = lut[part]
        np.testing.assert_array_equal(mask, expected)  # same grid: nearest is the identity, remapped exactly
        checked += 1
    assert checked > 0 and label_set.provenance["remap"] is not None
    assert items[1]["id"] not in {windows[c][0] for c in table["chip_id"].to_pylist()}

    # A coarser (20 m) raster: nearest resampling invents no class id.
    coarse = _write_raster(tmp_path / "coarse.tif", classes[::2, ::2].copy(), epsg, transform @ Affine.scale(2))
    write_raster_labels(str(out), "coarse", raster=coarse, remap_file=str(remap), collection=S2)
    assert set(np.unique(decode_masks(read_labels(str(out), "coarse")[0])).tolist()) <= {0, 1, IGNORE_INDEX}


def test_bad_label_rasters_are_clear_errors(dataset: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    out, items = dataset
    epsg, transform, width, height = _grid(items[0])
    data = np.full((height, width), 10, np.uint8)
    data[0, 0] = 40
    raster = _write_raster(tmp_path / "lc.tif", data, epsg, transform)
    remap = tmp_path / "remap.yaml"
    remap.write_text("classes: [water]\nremap: {10: water}\n")
    with pytest.raises(LabelError, match=r"holds values \[40\].*must be total"):
        write_raster_labels(str(out), "lc-bad", raster=raster, remap_file=str(remap))
    geographic = _write_raster(tmp_path / "wgs84.tif", data, 4326, Affine(1e-4, 0, 10.0, 0, -1e-4, 50.0))
    with pytest.raises(LabelError, match="not in a projected, metric CRS"):
        write_raster_labels(str(out), "lc-bad", raster=geographic, classes=["a"] * 41)
    far = _write_raster(tmp_path / "far.tif", data, epsg, transform @ Affine.translation(1e5, 1e5))
    with pytest.raises(LabelError, match="covers no written chip"):
        write_raster_labels(str(out), "lc-bad", raster=far, remap_file=str(remap))
    bad_remap = tmp_path / "bad.yaml"
    bad_remap.write_text("classes: [water]\nremap: {10: lake}\n")
    with pytest.raises(LabelError, match="'lake', not one of classes"):
        write_raster_labels(str(out), "lc-bad", raster=raster, remap_file=str(bad_remap))
    assert not (out / "labels" / "lc-bad").exists()


def test_change_pairs_from_repeat_acquisitions(dataset: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    out, items = dataset
    label_set = write_change_pairs(str(out), "pairs", collection=S2)
    table, _ = read_labels(str(out), "pairs")
    rows = {r["chip_id"]: r for r in _written(out)}
    assert table.num_rows == sum(r["item_id"] == items[2]["id"] for r in rows.values())
    for after, before in zip(table["chip_id"].to_pylist(), table["before_chip_id"].to_pylist(), strict=True):
        assert rows[after]["item_id"] == items[2]["id"] and rows[before]["item_id"] == items[0]["id"]
        assert rows[after]["grid_cell"] == rows[before]["grid_cell"]
    assert label_set.classes == ["unchanged", "changed"]
    with pytest.raises(LabelError, match="two dates within 1"):
        write_change_pairs(str(out), "pairs", collection=S2, max_days=1)

    epsg, transform, width, height = _grid(items[0])
    change = np.zeros((height, width), np.uint8)
    change[:16, :16] = 1
    raster = _write_raster(tmp_path / "change.tif", change, epsg, transform, nodata=255)
    write_change_pairs(str(out), "pairs-mask", collection=S2, change_raster=raster)
    masked, _ = read_labels(str(out), "pairs-mask")
    first = next(i for i, c in enumerate(masked["chip_id"].to_pylist()) if rows[c]["window"][:2] == [0, 0])
    np.testing.assert_array_equal(decode_masks(masked)[first][:16, :16], 1)
    assert decode_masks(masked)[first][16:, 16:].max() == 0


def test_boxes_become_clipped_pixel_boxes(dataset: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    out, items = dataset
    epsg, transform, _, _ = _grid(items[0])
    to_lonlat = Transformer.from_crs(epsg, "OGC:CRS84", always_xy=True)

    def feature(col0: float, row0: float, col1: float, row1: float, cls: str) -> dict[str, Any]:
        corners = [transform @ (c, r) for c, r in ((col0, row0), (col1, row0), (col1, row1), (col0, row1))]
        ring = [list(to_lonlat.transform(x, y)) for x, y in corners]
        return {"type": "Feature", "properties": {"kind": cls},
                "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}}

    features = [
        feature(4, 6, 12, 20, "ship"),  # inside chip (0, 0)
        feature(30, 2, 40, 9, "tank"),  # straddles chips (0, 0) and (32, 0): 2 px in the first (dropped), 8 kept
        feature(10, 10, 11, 11, "ship"),  # 1 px: dropped everywhere
    ]
    geojson = tmp_path / "boxes.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    write_box_labels(str(out), "boxes", geojson=str(geojson), class_property="kind", classes=["ship", "tank"],
                     collection=S2)
    table, _ = read_labels(str(out), "boxes")
    rows = {r["chip_id"]: r for r in _written(out)}
    found = {}
    for chip_id, boxes, labels in zip(*(table[c].to_pylist() for c in ("chip_id", "boxes", "box_labels")),
                                      strict=True):
        if rows[chip_id]["item_id"] == items[0]["id"] and boxes:
            found[tuple(rows[chip_id]["window"][:2])] = list(zip(labels, boxes, strict=True))
    assert set(found) == {(0, 0), (32, 0)}
    (label, box), = found[(0, 0)]
    assert label == 0 and box == pytest.approx({"xmin": 4, "ymin": 6, "xmax": 12, "ymax": 20}, abs=1e-3)
    (label, box), = found[(32, 0)]
    assert label == 1 and box == pytest.approx({"xmin": 0, "ymin": 2, "xmax": 8, "ymax": 9}, abs=1e-3)

    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [feature(1, 1, 9, 9, "plane")]}))
    with pytest.raises(LabelError, match="class 'plane', not in the class list"):
        write_box_labels(str(out), "boxes2", geojson=str(geojson), class_property="kind", classes=["ship"])


def test_labels_cli(
    dataset: tuple[Path, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.labels import main

    out, items = dataset
    assert main(["scene", "--data", str(out), "--name", "cli", "--property", "test:none"]) == 2
    assert "has no property 'test:none'" in capsys.readouterr().err  # the dataset's own snapshots were searched
    epsg, transform, width, height = _grid(items[0])
    raster = _write_raster(tmp_path / "idx.tif", np.ones((height, width), np.uint8), epsg, transform, nodata=None)
    args = ["raster", "--data", str(out), "--name", "cli", "--raster", raster, "--classes", "a", "b", "--noisy"]
    assert main(args) == 0
    assert "labels: cli (segmentation, 2 classes)" in capsys.readouterr().out
    assert read_labels(str(out), "cli")[1].provenance["noisy"] is True
    assert main(["pairs", "--data", str(out), "--name", "p"]) == 2
    assert "--collection" in capsys.readouterr().err


def test_majority_labels_by_hand(dataset: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    out, items = dataset
    epsg, transform, width, height = _grid(items[0])
    classes = np.full((height, width), 1, np.uint8)
    classes[:, : width // 2] = 2  # left half class index 1 ("b"), right half index 0 ("a") after the remap below
    classes[:32, :32] = 3  # the first chip is mixed: a third of it "c"
    classes[:32, :8] = 2
    raster = _write_raster(tmp_path / "maj.tif", classes, epsg, transform)
    remap = tmp_path / "maj.yaml"
    remap.write_text("classes: [a, b, c]\nremap: {1: a, 2: b, 3: c}\n")
    write_raster_labels(str(out), "maj-seg", raster=raster, remap_file=str(remap), collection=S2)
    label_set = write_majority_labels(str(out), "maj", source="maj-seg", min_fraction=0.8)
    table, _ = read_labels(str(out), "maj")
    seg, _ = read_labels(str(out), "maj-seg")
    masks = dict(zip(seg["chip_id"].to_pylist(), decode_masks(seg), strict=True))
    got = dict(zip(table["chip_id"].to_pylist(), table["label"].to_pylist(), strict=True))
    for chip_id, mask in masks.items():
        labelled = mask[mask != IGNORE_INDEX]
        counts = np.bincount(labelled, minlength=3)
        share = counts.max() / max(labelled.size, 1)
        assert (chip_id in got) == (labelled.size > 0 and share >= 0.8), chip_id
        if chip_id in got:
            assert got[chip_id] == int(counts.argmax())
    assert label_set.kind == "classification" and label_set.provenance["derived"] is True
    assert len(got) < len(masks)  # the mixed chip is left out
    with pytest.raises(LabelError, match="needs a segmentation set|need a segmentation set"):
        write_majority_labels(str(out), "bad", source="maj")

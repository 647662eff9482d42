"""Rule-based noisy labels: the rules on known index values, and a real ingest of a hand-made four-quadrant scene."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from pipeline.errors import LabelError
from pipeline.label_rules import apply_rules, load_label_rules, resolve_bands, write_rule_labels
from pipeline.labels import IGNORE_INDEX, decode_masks, read_labels, write_raster_labels

EPSG, X0, Y0, SIZE = 32618, 399960.0, 4200000.0, 32  # a 32 x 32 px scene at 10 m: four 16 px chips
# Surface reflectance per quadrant (B02 blue, B03 green, B04 red, B08 nir, B11 swir16), and what the default rules
# make of it:
#   water:      MNDWI = (0.08 - 0.01) / 0.09 = 0.78 > 0.1
#   vegetation: MNDWI = (0.06 - 0.15) / 0.21 = -0.43; NDVI = (0.40 - 0.04) / 0.44 = 0.82 > 0.4
#   bare_built: MNDWI = -0.36; NDVI = (0.22 - 0.16) / 0.38 = 0.16 < 0.2; NDBI = (0.30 - 0.22) / 0.52 = 0.15 > -0.1
QUADRANTS = {
    (0, 0): ("water", (0.06, 0.08, 0.03, 0.02, 0.01)),
    (0, 1): ("vegetation", (0.03, 0.06, 0.04, 0.40, 0.15)),
    (1, 0): ("bare_built", (0.12, 0.14, 0.16, 0.22, 0.30)),
    (1, 1): ("vegetation", (0.03, 0.06, 0.04, 0.40, 0.15)),  # under cloud in SCL: every pixel ignored, chip dropped
}
BANDS = ("B02", "B03", "B04", "B08", "B11")


def test_rules_on_known_index_values() -> None:
    rules = load_label_rules()
    refs = rules.band_refs
    assert set(refs) == {"blue", "green", "red", "nir", "swir16"}
    pixels = [  # one pixel per column: (blue, green, red, nir, swir16)
        (0.06, 0.08, 0.03, 0.02, 0.01),  # water
        (0.03, 0.06, 0.04, 0.40, 0.15),  # vegetation
        (0.12, 0.14, 0.16, 0.22, 0.30),  # bare / built
        (0.35, 0.36, 0.37, 0.40, 0.30),  # bright blue: cloud fallback -> ignore
        (0.02, 0.03, 0.02, 0.03, 0.04),  # dark, MNDWI -0.14, NDVI 0.2: shadow -> ignore
        (0.05, 0.06, 0.09, 0.15, 0.10),  # NDVI 0.25, MNDWI -0.25: no rule -> default ignore
        (0.0, 0.0, 0.0, 0.0, 0.0),  # 0/0 indices are NaN: no index rule holds; nir < 0.05 -> ignore
        (0.03, 0.06, 0.04, 0.40, 0.15),  # vegetation, but invalid
    ]
    arr = np.asarray(pixels, np.float64).T[:, None, :]  # (P, 5) -> (5, 1, P)
    values = dict(zip(("blue", "green", "red", "nir", "swir16"), arr, strict=True))
    valid = np.ones((1, len(pixels)), bool)
    valid[0, -1] = False
    mask = apply_rules(rules, values, valid)
    water, veg, bare = (rules.classes.index(c) for c in ("water", "vegetation", "bare_built"))
    assert mask[0].tolist() == [water, veg, bare, *[IGNORE_INDEX] * 5]
    # SCL decides first where present: cloud (9) over the water pixel, vegetation (4) leaves it water.
    scl = np.asarray([[9.0, 4.0, np.nan, 4.0, 4.0, 4.0, 4.0, 4.0]])
    mask = apply_rules(rules, {**values, "scl": scl}, valid)
    assert mask[0, :3].tolist() == [IGNORE_INDEX, veg, bare]


def test_rule_files_are_checked(tmp_path: Path) -> None:
    rules = load_label_rules()
    meta = [{"name": "B04", "common_name": "red"}, {"name": "B05", "common_name": "rededge"},
            {"name": "B06", "common_name": "rededge"}, {"name": "B08", "common_name": "nir"}]
    with pytest.raises(LabelError, match=r"need band 'blue', which collection 'x' lacks.*B04 \(red\)"):
        resolve_bands(rules, ["B04", "B05", "B06", "B08"], meta, "collection 'x'")
    edge = tmp_path / "edge.yaml"
    edge.write_text("classes: [a]\nrules:\n  - {class: a, when: {rededge: {gt: 0.1}}}\n")
    with pytest.raises(LabelError, match=r"common name of several bands.*\['B05', 'B06'\]"):
        resolve_bands(load_label_rules(edge), ["B04", "B05", "B06", "B08"], meta, "collection 'x'")
    assert resolve_bands(load_label_rules(edge), ["B05"], meta[1:2], "c") == {"rededge": 0}
    bad = tmp_path / "bad.yaml"
    for text, match in [
        ("classes: [a]\nrules:\n  - {class: b, when: {nir: {gt: 0}}}\n", r"class 'b' is not in classes"),
        ("classes: [a]\nrules:\n  - {class: a, when: {nir: {above: 0}}}\n", r"mapping of \['gt', 'ge'"),
        ("classes: [a]\nrules:\n  - {class: a, when: {}}\n", "has no condition"),
        ("classes: [a]\nindices: {i: {ratio: [a, b]}}\nrules: []\n", "normalized_difference"),
        ("classes: [a]\nrules: []\nextra: 1\n", r"unknown keys \['extra'\]"),
    ]:
        bad.write_text(text)
        with pytest.raises(LabelError, match=match):
            load_label_rules(bad)


def _cog(path: Path, data: np.ndarray, transform: Affine, nodata: int = 0) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=f"EPSG:{EPSG}", transform=transform, nodata=nodata) as dst:
        dst.write(data[None])  # (H, W) -> (1, H, W)


def _scene(root: Path) -> Path:
    """The hand-made S2 L2A item: five 10 m bands by quadrant, a 20 m SCL with cloud over one quadrant."""
    root.mkdir()
    ten, twenty = Affine(10, 0, X0, 0, -10, Y0), Affine(20, 0, X0, 0, -20, Y0)
    half = SIZE // 2
    assets: dict[str, Any] = {}
    for b, band in enumerate(BANDS):
        data = np.zeros((SIZE, SIZE), np.uint16)
        for (qr, qc), (_, refl) in QUADRANTS.items():
            data[qr * half:(qr + 1) * half, qc * half:(qc + 1) * half] = round(refl[b] * 10000)  # DN, baseline 02.12
        _cog(root / f"{band}.tif", data, ten)
        assets[band] = {"href": f"./{band}.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]}
    scl = np.full((SIZE // 2, SIZE // 2), 4, np.uint8)  # vegetation class: no SCL rule fires
    scl[SIZE // 4:, SIZE // 4:] = 9  # cloud, high probability: the lower-right quadrant
    scl[0, : SIZE // 4] = 3  # cloud shadow: the top 2 pixel rows of the water quadrant
    _cog(root / "SCL.tif", scl, twenty)
    assets["SCL"] = {"href": "./SCL.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]}
    to_lonlat = Transformer.from_crs(EPSG, "OGC:CRS84", always_xy=True)
    ring = [list(to_lonlat.transform(x, y)) for x, y in
            ((X0, Y0), (X0 + 320, Y0), (X0 + 320, Y0 - 320), (X0, Y0 - 320), (X0, Y0))]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "S2A_MSIL2A_20210601T000000_HANDMADE",
        "collection": "sentinel-2-l2a", "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"datetime": "2021-06-01T10:00:00Z", "platform": "Sentinel-2A", "proj:epsg": EPSG,
                       "s2:processing_baseline": "02.12"},
        "assets": assets, "links": [],
    }
    (root / "item.json").write_text(json.dumps(item))
    return root / "item.json"


@pytest.fixture(scope="module")
def handmade(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> Path:
    from jobs.ingest import main as ingest_main

    root = tmp_path_factory.mktemp("rules")
    item = _scene(root / "scene")
    out = root / "ds"
    args = ["--catalog", str(item), "--output", str(out), "--chip-size", "16", "--no-progress", "--bands", *BANDS]
    assert ingest_main(args) == 0
    return out


def _windows(out: Path) -> dict[str, tuple[int, int]]:
    rows = [r for r in pq.read_table(out / "index.parquet").to_pylist() if r["status"] == "written"]
    return {r["chip_id"]: (r["window"][1] // 16, r["window"][0] // 16) for r in rows}  # (quadrant row, col)


def test_rule_labels_on_a_handmade_scene(handmade: Path) -> None:
    label_set = write_rule_labels(str(handmade), "rules", max_ignored=0.5)
    table, meta = read_labels(str(handmade), "rules")
    assert meta == label_set and meta.kind == "segmentation"
    assert meta.provenance["noisy"] is True and meta.provenance["derived"] is True
    assert meta.provenance["rules"] == load_label_rules().sha256 and meta.provenance["scl_chips"] == 4
    assert meta.provenance["dropped_ignored"] == 1  # the cloudy quadrant
    quadrant = _windows(handmade)
    masks = dict(zip(table["chip_id"].to_pylist(), decode_masks(table), strict=True))
    assert sorted(quadrant[c] for c in masks) == [(0, 0), (0, 1), (1, 0)]
    for chip_id, mask in masks.items():
        expected = np.full((16, 16), meta.classes.index(QUADRANTS[quadrant[chip_id]][0]), np.uint8)
        if quadrant[chip_id] == (0, 0):
            expected[:2] = IGNORE_INDEX  # the SCL shadow row (20 m) covers two 10 m rows
        np.testing.assert_array_equal(mask, expected)

    kept = write_rule_labels(str(handmade), "rules-all", max_ignored=None)
    assert kept.chips == 4 and kept.provenance["dropped_ignored"] == 0


def test_rule_labels_errors_and_cli(handmade: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.labels import main

    needs = tmp_path / "needs.yaml"
    needs.write_text("classes: [a]\nrules:\n  - {class: a, when: {swir22: {gt: 0.1}}}\n")
    with pytest.raises(LabelError, match=r"No collection .* need band 'swir22', which collection 'sentinel-2-l2a'"):
        write_rule_labels(str(handmade), "x", rules_file=needs)
    assert main(["rules", "--data", str(handmade), "--name", "cli", "--rules", str(needs)]) == 2
    assert "swir22" in capsys.readouterr().err
    assert main(["rules", "--data", str(handmade), "--name", "cli", "--max-ignored", "0.05"]) == 0
    assert "labels: cli (segmentation, 3 classes) on 2 chips" in capsys.readouterr().out  # the shadowed chip is out


def test_raster_labels_from_a_stac_item_drop_ignored_chips(handmade: Path, tmp_path: Path) -> None:
    data = np.ones((SIZE, SIZE), np.uint8)
    data[:SIZE // 2, :SIZE // 2] = 0  # nodata over one chip
    _cog(tmp_path / "lc.tif", data, Affine(10, 0, X0, 0, -10, Y0))
    scene = json.loads((handmade.parent / "scene" / "item.json").read_text())
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "lc", "geometry": scene["geometry"], "properties": {
        "datetime": "2021-01-01T00:00:00Z"}, "assets": {"map": {"href": "./lc.tif", "type": "image/tiff"},
                                                        "thumb": {"href": "./t.png", "type": "image/png"}}}
    (tmp_path / "item.json").write_text(json.dumps(item))
    label_set = write_raster_labels(str(handmade), "lc", raster=str(tmp_path / "item.json"), classes=["a", "b"],
                                    max_ignored=0.5, noisy=True)
    assert label_set.chips == 3 and label_set.provenance["dropped_ignored"] == 1
    assert label_set.provenance["asset"].endswith("lc.tif")
    with pytest.raises(LabelError, match=r"no asset 'nope'; it has \['map', 'thumb'\]"):
        write_raster_labels(str(handmade), "lc", raster=str(tmp_path / "item.json"), classes=["a", "b"], asset="nope")

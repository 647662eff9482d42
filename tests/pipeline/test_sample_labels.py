"""Derived sample labels: the NDWI/NDVI land-cover rule and pond boxes, on a hand-made georeferenced scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from pipeline.sample_labels import NODATA, derive_landcover, derive_ponds

TRANSFORM = Affine(10.0, 0.0, 435730.0, 0.0, -10.0, 4179460.0)


def _scene(tmp_path: Path) -> Path:
    """A 40 x 40 scene: water on the left half, vegetation top right, bare bottom right, a 3 x 3 pond, a nodata px."""
    green = np.full((40, 40), 800, np.uint16)
    red = np.full((40, 40), 1500, np.uint16)
    nir = np.full((40, 40), 1800, np.uint16)  # bare: NDWI < 0, NDVI ~0.09
    nir[:20, 20:], red[:20, 20:] = 3000, 500  # vegetation: NDVI 0.71
    green[:, :20], nir[:, :20] = 1200, 300  # water: NDWI 0.6
    green[30:33, 30:33], nir[30:33, 30:33] = 1200, 300  # a pond in the bare quarter
    green[0, 39] = 0  # nodata
    assets = {}
    for name, band in (("B03", green), ("B04", red), ("B08", nir)):
        with rasterio.open(tmp_path / f"{name}.tif", "w", driver="GTiff", width=40, height=40, count=1,
                           dtype="uint16", crs="EPSG:32618", transform=TRANSFORM, nodata=0) as dst:
            dst.write(band[None])  # (H, W) -> (1, H, W)
        assets[name] = {"href": f"./{name}.tif", "eo:bands": [{"name": name}]}
    item = tmp_path / "item.json"
    item.write_text(json.dumps({"id": "scene", "assets": assets}))
    return item


def test_landcover_rule_by_hand(tmp_path: Path) -> None:
    out = derive_landcover(_scene(tmp_path), tmp_path / "lc.tif")
    with rasterio.open(out) as src:
        classes = src.read(1)
        assert src.transform == TRANSFORM and src.crs.to_epsg() == 32618 and src.nodata == NODATA
    assert (classes[:, :20] == 0).all()  # water
    assert (classes[1:20, 20:] == 1).all() and classes[0, 39] == NODATA  # vegetation, and the nodata pixel
    bare = classes[20:, 20:].copy()
    bare[10:13, 10:13] = 2  # the pond is water
    assert (bare == 2).all() and (classes[30:33, 30:33] == 0).all()


def test_ponds_are_the_small_water_regions(tmp_path: Path) -> None:
    lc = derive_landcover(_scene(tmp_path), tmp_path / "lc.tif")
    count = derive_ponds(lc, tmp_path / "ponds.geojson", min_pixels=4, max_pixels=100)
    features = json.loads((tmp_path / "ponds.geojson").read_text())["features"]
    assert count == len(features) == 1  # the 800 px water half is far above max_pixels
    assert features[0]["properties"] == {"kind": "pond", "pixels": 9}
    from pyproj import Transformer

    lons, lats = zip(*features[0]["geometry"]["coordinates"][0], strict=True)
    xs, ys = Transformer.from_crs("OGC:CRS84", 32618, always_xy=True).transform(lons, lats)
    assert np.allclose([min(xs), max(xs)], [435730 + 300, 435730 + 330], atol=1e-3)
    assert np.allclose([min(ys), max(ys)], [4179460 - 330, 4179460 - 300], atol=1e-3)

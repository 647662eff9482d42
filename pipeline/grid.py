"""The chip grid: pixel grids, chip origins and transforms, cell keys, WGS84 footprints and the UTM zone of a point.

Chips are snapped to an item's own reference pixel grid (the grid of its finest band): chip ``(i, j)`` starts at
pixel ``(j * stride, i * stride)`` of that grid. Because all Sentinel-2 acquisitions of one MGRS tile share that grid,
the cell key of a chip (EPSG + top-left UTM corner + size + GSD) joins repeat acquisitions without any resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely
import shapely.affinity
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry import MultiPolygon, Polygon

from pipeline.errors import CRSNotFoundError, GridMismatchError

__all__ = [
    "MAX_ABS_LATITUDE",
    "PixelGrid",
    "cell_key",
    "chip_footprint",
    "chip_offsets",
    "chip_transform",
    "utm_epsg_for",
]

# Major TOM clips its grid at +-85 degrees; UTM is meaningless closer to the poles (UPS takes over at 84/80 degrees).
MAX_ABS_LATITUDE = 85.0


@dataclass(frozen=True)
class PixelGrid:
    """A north-up pixel grid in a projected CRS: where a raster's (or a chip's) pixels are.

    Attributes:
        epsg: EPSG code of the grid's CRS (metric, projected).
        transform: affine of the top-left pixel corner (rasterio order).
        width, height: size in pixels.
    """

    epsg: int
    transform: Affine
    width: int
    height: int

    def __post_init__(self) -> None:
        t = self.transform
        if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
            raise GridMismatchError(
                f"Pixel grid transform {tuple(t)[:6]} is rotated or not north-up; only north-up grids "
                "(a > 0, b = d = 0, e < 0) are supported. Warp the asset to a north-up grid first."
            )

    @property
    def gsd(self) -> float:
        """Pixel size in CRS units (metres) along x."""
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in CRS units."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (left, bottom, right, top)

    def subgrid(self, col_off: int, row_off: int, width: int, height: int) -> PixelGrid:
        """The grid of a window of this grid (may extend past its edges)."""
        return PixelGrid(self.epsg, chip_transform(self.transform, col_off, row_off), width, height)


def chip_offsets(length: int, chip_size: int, stride: int) -> list[int]:
    """Pixel offsets of the chips along one axis: ``0, stride, 2*stride, ...`` until the axis is covered.

    The last chip may overhang the edge (it is filled with nodata); a raster shorter than one chip still gives one.

    Args:
        length: raster size along the axis, in pixels.
        chip_size: chip size in pixels.
        stride: step between chip origins in pixels.
    """
    if chip_size <= 0 or stride <= 0:
        raise ValueError(f"chip_size ({chip_size}) and stride ({stride}) must be positive pixel counts.")
    if length <= 0:
        return []
    n = 1 if length <= chip_size else math.ceil((length - chip_size) / stride) + 1
    return [k * stride for k in range(n)]


def chip_transform(transform: Affine, col_off: int, row_off: int) -> Affine:
    """The affine of a chip whose top-left pixel is ``(col_off, row_off)`` of the grid ``transform``."""
    return transform @ Affine.translation(col_off, row_off)


def _format_coord(value: float) -> str:
    rounded = round(value)
    if abs(value - rounded) < 1e-6:
        return str(int(rounded))
    return f"{value:.3f}".rstrip("0")


def cell_key(epsg: int, transform: Affine, size_px: int) -> str:
    """Deterministic cell key of a chip: EPSG, top-left UTM corner, size and GSD.

    ``cell_key(32618, Affine(10, 0, 435730, 0, -10, 4179460), 256) == "32618_E435730_N4179460_256px_10m"``.
    Southern-hemisphere Landsat scenes on northern UTM codes keep their negative northing (``N-4663485``).

    Args:
        epsg: EPSG code of the chip's CRS.
        transform: the chip's affine (its top-left pixel corner).
        size_px: chip width/height in pixels.
    """
    x, y = transform.c, transform.f
    return f"{epsg}_E{_format_coord(x)}_N{_format_coord(y)}_{size_px}px_{float(transform.a):g}m"


@lru_cache(maxsize=64)
def _to_wgs84(epsg: int) -> Transformer:
    try:
        crs = CRS.from_epsg(epsg)
    except Exception as err:  # pyproj raises CRSError, a plain Exception subclass
        raise CRSNotFoundError(f"EPSG:{epsg} is not a known CRS code; check the item's proj:code/proj:epsg.") from err
    return Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)


def chip_footprint(
    epsg: int, transform: Affine, width: int, height: int, *, densify: int = 8
) -> Polygon | MultiPolygon:
    """The WGS84 (lon/lat) polygon of a chip, from its transform, with ``densify`` points per edge.

    Edges are densified before reprojection so that the polygon follows the curved outline of a UTM square. A chip
    that crosses the antimeridian (UTM zones 1 and 60) is split there into a two-part ``MultiPolygon`` (RFC 7946
    section 3.1.9), instead of a polygon wrapping the globe the wrong way.

    Args:
        epsg: EPSG code of the chip's CRS.
        transform: the chip's affine.
        width, height: chip size in pixels.
        densify: points per edge (>= 1).
    """
    steps = max(int(densify), 1)
    cols: list[float] = []
    rows: list[float] = []
    edges = (((0, 0), (width, 0)), ((width, 0), (width, height)), ((width, height), (0, height)), ((0, height), (0, 0)))
    for (c0, r0), (c1, r1) in edges:
        for k in range(steps):
            f = k / steps
            cols.append(c0 + (c1 - c0) * f)
            rows.append(r0 + (r1 - r0) * f)
    xs, ys = transform @ (np.asarray(cols), np.asarray(rows))
    lons, lats = _to_wgs84(epsg).transform(xs, ys)
    lons = np.asarray(lons)
    if lons.max() - lons.min() > 180.0:  # the ring jumps from +180 to -180: unwrap, then cut at the antimeridian
        unwrapped = Polygon(zip(np.where(lons < 0, lons + 360.0, lons), lats, strict=True))
        east = unwrapped.intersection(shapely.box(-180.0, -90.0, 180.0, 90.0))
        west = shapely.affinity.translate(unwrapped.intersection(shapely.box(180.0, -90.0, 540.0, 90.0)), -360.0)
        parts = [p for g in (east, west) for p in getattr(g, "geoms", [g]) if isinstance(p, Polygon) and not p.is_empty]
        return shapely.normalize(MultiPolygon(parts))
    polygon = Polygon(zip(lons, lats, strict=True))
    return shapely.normalize(polygon) if polygon.is_valid else polygon


def utm_epsg_for(lon: float, lat: float) -> int:
    """The WGS84 UTM EPSG code of the zone containing a point: 326xx north of the equator, 327xx south.

    The hemisphere comes from the latitude, never from an existing EPSG code (USGS Landsat puts southern scenes on
    northern codes). Latitude is clipped to +-85 degrees; longitude is wrapped to [-180, 180).

    Args:
        lon: longitude in degrees.
        lat: latitude in degrees.
    """
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise ValueError(f"Longitude/latitude must be finite numbers, got ({lon}, {lat}).")
    lat = max(-MAX_ABS_LATITUDE, min(MAX_ABS_LATITUDE, lat))
    lon = (lon + 180.0) % 360.0 - 180.0
    zone = int((lon + 180.0) // 6.0) + 1
    zone = min(max(zone, 1), 60)
    # Norway and Svalbard exceptions of the UTM definition (zones 32V, 31X-37X).
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    elif 72.0 <= lat <= 84.0 and lon >= 0.0:
        if lon < 9.0:
            zone = 31
        elif lon < 21.0:
            zone = 33
        elif lon < 33.0:
            zone = 35
        elif lon < 42.0:
            zone = 37
    return (32600 if lat >= 0 else 32700) + zone

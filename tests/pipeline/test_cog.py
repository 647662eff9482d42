"""Tests for pipeline.cog: href routing, GDAL env, redaction and bounds-based windowed reads onto target grids."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import from_bounds

from pipeline.cog import AssetReader, gdal_env, gdal_path, redact_href
from pipeline.errors import CRSNotFoundError, RasterReadError
from pipeline.grid import PixelGrid
from tests.data.synthetic.data import S2_ALIGNED, S2_MISALIGNED

MIS = S2_MISALIGNED.parent
ALIGNED = S2_ALIGNED.parent


def _write(path: Path, data: np.ndarray, transform: Affine, crs: str | None, nodata: float | None = None) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1, "dtype": data.dtype.name}
    profile.update({"transform": transform, "nodata": nodata})
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("/data/x.tif", "/data/x.tif"),
        ("file:///data/x.tif", "/data/x.tif"),
        ("s3://bucket/a/b.tif", "/vsis3/bucket/a/b.tif"),
        ("https://host/a.tif?sig=1", "/vsicurl/https://host/a.tif?sig=1"),
        ("relative/x.tif", "relative/x.tif"),
    ],
)
def test_gdal_path(href: str, expected: str) -> None:
    assert gdal_path(href) == expected


def test_gdal_path_rejects_unknown_scheme() -> None:
    with pytest.raises(RasterReadError, match="ftp"):
        gdal_path("ftp://host/x.tif?token=secret")


def test_redact_href_drops_tokens_and_userinfo() -> None:
    assert redact_href("https://user:pw@host/a.tif?se=2024&sig=SECRET#f") == "https://host/a.tif"
    assert redact_href("s3://bucket/k.tif") == "s3://bucket/k.tif"
    assert redact_href("/local/a.tif") == "/local/a.tif"


def test_gdal_env_defaults_and_overrides() -> None:
    env = gdal_env({"AWS_HTTPS": False, "GDAL_HTTP_MAX_RETRY": 2, "GDAL_CACHEMAX": "64"})
    assert env["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert ".tif" in str(env["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"])
    assert env["AWS_HTTPS"] == "NO" and env["GDAL_HTTP_MAX_RETRY"] == "2" and env["GDAL_CACHEMAX"] == 64


def test_read_10m_window_equals_direct_read() -> None:
    with AssetReader(str(ALIGNED / "B04.tif")) as reader:
        target = reader.grid.subgrid(16, 32, 64, 48)
        data, covered = reader.read([1], target, fill_value=0)
    with rasterio.open(ALIGNED / "B04.tif") as ds:
        direct = ds.read(1, window=((32, 80), (16, 80)))
    np.testing.assert_array_equal(data[0], direct)
    assert covered.all() and data.dtype == np.uint16


def test_read_20m_onto_misaligned_10m_grid_by_bounds() -> None:
    with rasterio.open(MIS / "B02.tif") as ref:
        target = PixelGrid(32618, ref.transform, 64, 64).subgrid(8, 20, 64, 64)
    with AssetReader(str(MIS / "B05.tif")) as reader:
        data, covered = reader.read([1], target, resampling="bilinear", fill_value=0)
    assert not covered[data[0] == 0].any() and 0.5 < covered.mean() < 1  # the lower-left nodata wedge
    with rasterio.open(MIS / "B05.tif") as ds:
        left, bottom, right, top = target.bounds
        window = from_bounds(left, bottom, right, top, ds.transform)
        # 10 m x=435730+80 lies at 20 m column (435810-435720)/20 = 4.5: a half-pixel offset.
        assert window.col_off == pytest.approx(4.5) and window.row_off == pytest.approx(10.0)
        expected = ds.read(1, window=window, out_shape=(64, 64), resampling=Resampling.bilinear)
        naive = ds.read(1, window=((10, 42), (4, 36)), out_shape=(64, 64), resampling=Resampling.bilinear)
    np.testing.assert_array_equal(data[0], expected)
    assert not np.array_equal(data[0], naive)  # scaling 10 m indices by 2 would be off by half a 20 m pixel


def test_bilinear_masks_pixels_whose_kernel_touches_nodata(tmp_path: Path) -> None:
    data = np.full((6, 6), 1000, dtype=np.uint16)
    data[2, 2] = 0
    path = _write(tmp_path / "hole.tif", data, Affine(20, 0, 399960, 0, -20, 4200000), "EPSG:32618", nodata=0)
    target = PixelGrid(32618, Affine(10, 0, 399960, 0, -10, 4200000), 12, 12)
    with AssetReader(str(path)) as reader:
        values, covered = reader.read([1], target, resampling="bilinear", fill_value=0)
        _, nearest_covered = reader.read([1], target, resampling="nearest", fill_value=0)
    expected = np.ones((12, 12), dtype=bool)
    expected[3:7, 3:7] = False  # target centres whose 2 x 2 source neighbourhood includes source pixel (2, 2)
    np.testing.assert_array_equal(covered, expected)
    assert (values[0][expected] == 1000).all()
    assert nearest_covered.all()  # nearest never blends; its nodata is found by value


def test_read_60m_band_shifted_20m_up() -> None:
    with rasterio.open(MIS / "B02.tif") as ref:
        target = PixelGrid(32618, ref.transform, 100, 100).subgrid(0, 0, 64, 64)
    with AssetReader(str(MIS / "B01.tif")) as reader:
        assert reader.grid.transform.f == 4179480  # 60 m origin 20 m higher than the 10 m one
        data, covered = reader.read([1], target, resampling="nearest", fill_value=0)
    with rasterio.open(MIS / "B01.tif") as ds:
        window = from_bounds(*target.bounds, ds.transform)
        assert window.row_off == pytest.approx(20 / 60)
        expected = ds.read(1, window=window, out_shape=(64, 64), resampling=Resampling.nearest)
    np.testing.assert_array_equal(data[0], expected)
    assert covered.all()


def test_read_outside_extent_is_filled_and_masked() -> None:
    with AssetReader(str(ALIGNED / "B05.tif")) as reader:  # 20 m, 64 x 64 = 1280 m square
        ref = PixelGrid(32618, Affine(10, 0, 399960, 0, -10, 4200000), 128, 128)
        target = ref.subgrid(100, -10, 64, 64)  # 36 columns and 10 rows outside
        data, covered = reader.read([1], target, fill_value=7)
    assert covered[10:, :28].all()
    assert not covered[:10].any() and not covered[:, 28:].any()
    assert (data[0][~covered] == 7).all()
    with AssetReader(str(ALIGNED / "B05.tif")) as reader:
        far = PixelGrid(32618, Affine(10, 0, 0, 0, -10, 0), 8, 8)
        data, covered = reader.read([1], far, fill_value=0)
    assert not covered.any() and not data.any()


def test_read_into_a_caller_buffer_equals_a_fresh_read() -> None:
    with AssetReader(str(ALIGNED / "B05.tif")) as reader:
        ref = PixelGrid(32618, Affine(10, 0, 399960, 0, -10, 4200000), 128, 128)
        target = ref.subgrid(100, -10, 64, 64)  # part outside the asset: filled, box read in place
        fresh, fresh_covered = reader.read([1], target, fill_value=7)
        strip = np.full((3, 64, 64), 99, dtype=fresh.dtype)  # (C, H, W); band 1 of it is the buffer
        data, covered = reader.read([1], target, fill_value=7, out=strip[1:2])
        assert np.shares_memory(data, strip)
        with pytest.raises(ValueError, match=r"out must be a writeable C-contiguous \(1, 64, 64\) uint16 array"):
            reader.read([1], target, out=np.empty((1, 64, 32), dtype=fresh.dtype))
    np.testing.assert_array_equal(strip[1], fresh[0])
    np.testing.assert_array_equal(covered, fresh_covered)
    assert (strip[0] == 99).all() and (strip[2] == 99).all()  # neighbouring bands untouched


def test_read_from_another_utm_zone_warps_once(tmp_path: Path) -> None:
    # The same ground in EPSG:32617 (the western neighbour zone), warped onto a 32618 target grid.
    with rasterio.open(ALIGNED / "B02.tif") as src:
        source = src.read(1)
        src_transform = src.transform
    dst_transform = Affine(10, 0, 927200, 0, -10, 4210700)  # covers the scene in zone 17
    warped = np.zeros((160, 160), dtype=np.uint16)
    reproject(source, warped, src_transform=src_transform, src_crs="EPSG:32618", dst_transform=dst_transform,
              dst_crs="EPSG:32617", resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
    assert warped.any()
    path = _write(tmp_path / "west.tif", warped, dst_transform, "EPSG:32617", nodata=0)
    target = PixelGrid(32618, src_transform, 128, 128).subgrid(32, 32, 64, 64)
    with AssetReader(str(path)) as reader:
        data, covered = reader.read([1], target, resampling="nearest", fill_value=0)
    assert covered.all()
    truth = source[32:96, 32:96]
    both = (data[0] > 0) & (truth > 0)
    assert both.mean() > 0.95
    # Two nearest-neighbour warps: most pixels round-trip exactly, the rest come from an adjacent pixel.
    assert np.mean(data[0][both] == truth[both]) > 0.9
    assert np.abs(data[0][both].astype(int) - truth[both]).mean() < 0.01 * truth[both].mean()
    # Outside the warped footprint the VRT yields the fill value, never a stray 0 from the warper.
    with AssetReader(str(path)) as reader:
        edge = PixelGrid(32618, src_transform, 128, 128).subgrid(100, 100, 64, 64)
        data, _ = reader.read([1], edge, resampling="bilinear", fill_value=7)
    assert (data[0][:, 40:] == 7).all() and (data[0][:20, :20] != 7).all()


def test_geographic_crs_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "ll.tif", np.ones((4, 4), np.uint8), Affine(0.1, 0, 10, 0, -0.1, 50), "EPSG:4326")
    with pytest.raises(CRSNotFoundError, match="angular"):
        AssetReader(str(path))


def test_missing_crs_uses_fallback_or_fails(tmp_path: Path) -> None:
    path = _write(tmp_path / "nocrs.tif", np.ones((4, 4), np.uint8), Affine(10, 0, 399960, 0, -10, 4200000), None)
    with pytest.raises(CRSNotFoundError, match="proj:code"):
        AssetReader(str(path))
    with AssetReader(str(path), fallback_epsg=32618) as reader:
        assert reader.epsg == 32618


def test_open_errors_name_the_href_without_secrets(tmp_path: Path) -> None:
    with pytest.raises(RasterReadError, match="missing.tif") as info:
        AssetReader(str(tmp_path / "missing.tif"))
    assert "Check that the href exists" in str(info.value)
    href = "http://127.0.0.1:9/scene/B04.tif?se=2030&sig=TOPSECRET"
    with pytest.raises(RasterReadError) as info:
        AssetReader(href, options={"GDAL_HTTP_MAX_RETRY": 0, "GDAL_HTTP_TIMEOUT": 2})
    assert "TOPSECRET" not in str(info.value) and "scene/B04.tif" in str(info.value)


class _Redirect(BaseHTTPRequestHandler):
    """Answers every request with a redirect to ``server.location`` (a remote asset pointing at a local file)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.server.location)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD


def test_an_http_asset_cannot_redirect_the_read_to_a_local_file() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    server.location = (ALIGNED / "B04.tif").resolve().as_uri()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RasterReadError, match="scene/B04.tif"):
            AssetReader(f"http://127.0.0.1:{server.server_address[1]}/scene/B04.tif",
                        options={"GDAL_HTTP_MAX_RETRY": 0})
    finally:
        server.shutdown()
        server.server_close()
    with AssetReader(str(ALIGNED / "B04.tif")) as reader:  # the file itself is readable: only the redirect is refused
        assert reader.grid.width == 128


def test_truncated_file_is_a_read_error(tmp_path: Path) -> None:
    blob = (ALIGNED / "B02.tif").read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(RasterReadError, match="cut.tif") as excinfo:
        reader = AssetReader(str(path))
        reader.read([1], reader.grid, fill_value=0)
    # The message carries GDAL's own reason, not rasterio's pointer to "the previous exception".
    assert "See previous exception" not in str(excinfo.value)
    assert "failed" in str(excinfo.value).lower()


def test_read_through_s3(moto_s3) -> None:  # type: ignore[no-untyped-def]
    prefix = moto_s3.upload_tree(ALIGNED, "cog-test/aligned")
    with AssetReader(f"{prefix}/B11.tif", options=moto_s3.gdal_env) as reader:
        data, covered = reader.read([1], reader.grid.subgrid(0, 0, 32, 32), fill_value=0)
    with rasterio.open(ALIGNED / "B11.tif") as ds:
        np.testing.assert_array_equal(data[0], ds.read(1, window=((0, 32), (0, 32))))
    assert covered.all()
    with pytest.raises(RasterReadError, match="s3://rsvheat-test/cog-test/aligned/nope.tif"):
        AssetReader(f"{prefix}/nope.tif", options=moto_s3.gdal_env)

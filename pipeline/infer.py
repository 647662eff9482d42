"""Infer a sensor from an item's own STAC metadata when its collection matches no entry of the sensor config.

A hand-made static catalog often has no ``collection`` at all, and a new archive has a collection id nobody listed in
``sensors.yaml``. Such an item is still ingested (docs/ingest-inputs.md, "Unknown collections"):

* **data assets**: roles ``data`` (or no roles, or roles that say nothing about quality), a GeoTIFF/COG/JP2 media
  type (or a ``.tif``/``.tiff``/``.jp2`` href when there is no type); thumbnails, overviews, visual renderings,
  metadata and mask assets are skipped. An ``SCL`` or ``qa_pixel`` asset becomes the quality raster, never a band.
* **bands**: one per entry of ``eo:bands`` / STAC 1.1 ``bands`` / ``raster:bands`` of each data asset (one per file
  band when the asset lists none): name, common name and centre wavelength from ``eo:bands`` or ``bands``, nodata,
  scale, offset, unit and data type from ``raster:bands`` (or ``bands``), else from the file's header.
* **georeferencing**: ``proj:*`` or the file's own header, exactly as for configured sensors (pipeline/items.py).

Nothing is converted that the metadata does not state: no dB conversion, no DN offset. :func:`pin_snippet` renders
the inferred sensor as a ready-to-paste ``sensors.yaml`` entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import yaml

from pipeline.cog import RasterHeader
from pipeline.errors import SensorNotFoundError
from pipeline.records import Modality, QualityKind, Resampling
from pipeline.sensors import BandSpec, QualitySpec, SensorSpec, normalize_platform

__all__ = ["INFERRED_FROM_METADATA", "infer_sensor", "inferred_name", "pin_snippet"]

INFERRED_FROM_METADATA = "item STAC metadata"

_RASTER_TYPES = ("tiff", "geotiff", "jp2", "cloud-optimized")
_RASTER_EXTENSIONS = (".tif", ".tiff", ".jp2")
_SKIP_ROLES = frozenset(
    {"thumbnail", "overview", "visual", "metadata", "cloud", "cloud-shadow", "snow-ice", "water-mask", "land-water",
     "data-mask", "saturation", "snow", "water"}
)
_QUALITY_KEYS: Mapping[str, QualityKind] = {"scl": "scl", "qa_pixel": "landsat_qa_pixel"}
_CLASS_ROLES = frozenset({"classification", "label", "labels"})

Probe = Callable[[str], RasterHeader]


def inferred_name(item: Mapping[str, Any]) -> str:
    """The collection and sensor name of an item whose collection no sensor lists: its ``collection``, else a stable
    name from its platform (or constellation) and data asset keys, e.g. ``stac-sentinel-2a-3f0c1d``."""
    collection = item.get("collection")
    if isinstance(collection, str) and collection:
        return collection
    properties = item.get("properties") or {}
    tag = next(
        (normalize_platform(str(properties[k])) for k in ("constellation", "platform") if properties.get(k)), "items"
    )
    assets = item.get("assets") or {}
    keys = sorted(k for k, a in assets.items() if isinstance(a, dict) and _skip_reason(k, a) is None)
    digest = hashlib.blake2b("\n".join(keys).encode(), digest_size=3).hexdigest()
    return f"stac-{tag}-{digest}"


def _is_raster(asset: Mapping[str, Any]) -> bool:
    media = str(asset.get("type") or "").lower()
    if media:
        return any(kind in media for kind in _RASTER_TYPES)
    path = urlsplit(str(asset.get("href") or "")).path.lower()
    return path.endswith(_RASTER_EXTENSIONS)


def _skip_reason(key: str, asset: Mapping[str, Any]) -> str | None:
    """Why an asset is not a data band (``None``: it is one)."""
    roles = {str(r).lower() for r in asset.get("roles") or ()}
    if not isinstance(asset.get("href"), str):
        return "no href"
    if key.lower() in _QUALITY_KEYS:
        return "quality raster"
    if not _is_raster(asset):
        return f"media type {asset.get('type') or 'unknown'!r} is not a GeoTIFF/COG/JP2"
    if "data" not in roles and roles & _SKIP_ROLES:
        return f"roles {sorted(roles)}"
    return None


def _entries(asset: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(eo:bands or STAC 1.1 bands, raster:bands)`` of an asset, dict entries only."""
    names = asset.get("eo:bands") or asset.get("bands") or []
    raster = asset.get("raster:bands") or []
    return [e for e in names if isinstance(e, dict)], [e for e in raster if isinstance(e, dict)]


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _gsd(asset: Mapping[str, Any], properties: Mapping[str, Any], raster: Mapping[str, Any]) -> float | None:
    transform = asset.get("proj:transform") or properties.get("proj:transform")
    from_transform = abs(float(transform[0])) if isinstance(transform, Sequence) and transform else None
    value = _first(raster.get("spatial_resolution"), asset.get("gsd"), from_transform)
    return None if value is None else float(value)


def _modality(properties: Mapping[str, Any], keys: Sequence[str]) -> Modality:
    tags = " ".join(normalize_platform(str(properties.get(k) or "")) for k in ("platform", "constellation"))
    sar = any(k.startswith("sar:") for k in properties) or "sentinel-1" in tags
    polarisations = {"vv", "vh", "hh", "hv"}
    return "sar" if sar or (keys and all(k.lower() in polarisations for k in keys)) else "optical"


def infer_sensor(item: Mapping[str, Any], *, probe: Probe | None = None, why: str = "") -> SensorSpec:
    """A :class:`SensorSpec` built from one item's STAC metadata (and, where that is silent, its files' headers).

    Args:
        item: the STAC item as a dict.
        probe: reads a raster header from an asset's href (relative hrefs as the item gives them); called only for
            assets whose metadata lists no bands or no nodata. ``None``: never open files (single-band, no nodata).
        why: why no configured sensor matched (prefixed to the error when nothing usable is found).

    Raises:
        SensorNotFoundError: the item has no data asset; the message lists every asset and why it was skipped.
    """
    item_id = str(item.get("id", "<no id>"))
    properties: Mapping[str, Any] = item.get("properties") or {}
    assets: Mapping[str, Any] = item.get("assets") or {}
    name = inferred_name(item)
    skipped: dict[str, str] = {}
    data_keys: list[str] = []
    for key in assets:  # the provider's asset order is the band order
        asset = assets[key]
        reason = _skip_reason(key, asset) if isinstance(asset, dict) else "not an object"
        if reason is None:
            data_keys.append(key)
        else:
            skipped[key] = reason
    if not data_keys:
        listed = "; ".join(f"`{k}`: {r}" for k, r in skipped.items()) or "none"
        raise SensorNotFoundError(
            f"{why + ' ' if why else ''}Item `{item_id}` has no usable data asset to infer a sensor from (assets: "
            f"{listed}). A data asset needs roles `data` (or none) and a GeoTIFF/COG/JP2 media type or .tif/.jp2 "
            "href; fix the item, or add a sensor entry for it to a sensors YAML passed with --sensors."
        )
    bands: list[BandSpec] = []
    band_dtypes: list[str | None] = []
    probed: list[str] = []
    for key in data_keys:
        asset = assets[key]
        names, raster = _entries(asset)
        header = None
        if probe is not None and (not (names or raster) or not any("nodata" in e for e in (*names, *raster))):
            header = probe(str(asset["href"]))
            probed.append(key)
        count = max(len(names), len(raster)) or (header.count if header is not None else 1)
        for index in range(count):
            entry = names[index] if index < len(names) else {}
            rb = raster[index] if index < len(raster) else {}
            band_name = entry.get("name") if count > 1 else None
            band_name = str(band_name or (key if count == 1 else f"{key}_{index + 1}"))
            dtype = _first(rb.get("data_type"), entry.get("data_type"),
                           header.dtypes[index] if header is not None and index < header.count else None)
            nodata = _first(rb.get("nodata"), entry.get("nodata"), asset.get("nodata"),
                            header.nodata if header is not None else None)
            classes = any(k.startswith("classification:") for k in (*asset, *rb)) or bool(
                _CLASS_ROLES & {str(r).lower() for r in asset.get("roles") or ()}
            )
            integer = dtype is not None and np.issubdtype(np.dtype(str(dtype)), np.integer)
            resampling: Resampling = "nearest" if classes and integer else "bilinear"
            aliases = tuple(dict.fromkeys(a for a in (key, entry.get("name")) if a)) if count == 1 else (key,)
            wavelength = _first(entry.get("center_wavelength"), entry.get("eo:center_wavelength"))
            gsd = _gsd(asset, properties, rb)
            bands.append(
                BandSpec(
                    name=band_name,
                    aliases=tuple(str(a) for a in aliases),
                    common_name=_first(entry.get("common_name"), entry.get("eo:common_name")),
                    center_wavelength_um=None if wavelength is None else float(wavelength),
                    gsd_m=gsd if gsd is not None else (header.gsd if header is not None else None),
                    nodata=None if nodata is None else float(nodata),
                    scale=float(_first(rb.get("scale"), entry.get("scale"), 1.0)),
                    offset=float(_first(rb.get("offset"), entry.get("offset"), 0.0)),
                    units=str(_first(rb.get("unit"), entry.get("unit"), "DN")),
                    resampling=resampling,
                    band_index=index + 1,
                )
            )
            band_dtypes.append(None if dtype is None else str(dtype))
    # A multi-band asset whose bands are also single-band assets is a rendering of them (Planetary Computer's
    # `visual` true-colour image lists B04, B03, B02): the single-band assets are the data.
    singles = {a.lower() for b in bands if b.band_index == 1 and len(_entries(assets[b.aliases[0]])[0]) <= 1
               for a in (b.name, *b.aliases)}
    renderings = {b.aliases[0] for b in bands if b.band_index > 1 or len(_entries(assets[b.aliases[0]])[0]) > 1
                  if b.name.lower() in singles}
    keep = [k for k, b in enumerate(bands) if b.aliases[0] not in renderings]
    bands, band_dtypes = [bands[k] for k in keep], [band_dtypes[k] for k in keep]
    probed = [k for k in probed if k not in renderings]
    seen: dict[str, int] = {}
    for pos, band in enumerate(bands):  # band names must be unique
        if band.name in seen:
            raise SensorNotFoundError(
                f"Item `{item_id}`: bands of assets {sorted(data_keys)} share the name `{band.name}`; inferring a "
                "sensor needs unique band names: give the assets distinct eo:bands names or pin a sensor entry."
            )
        seen[band.name] = pos
    dtypes = set(band_dtypes)
    quality = None
    for key in assets:
        kind = _QUALITY_KEYS.get(key.lower())
        if kind is not None and isinstance(assets[key], dict) and isinstance(assets[key].get("href"), str):
            quality = QualitySpec(kind=kind, aliases=(key,))
            break
    platforms = tuple(
        normalize_platform(str(properties[k])) for k in ("platform", "constellation") if properties.get(k)
    )
    collection = item.get("collection")
    return SensorSpec(
        name=name,
        modality=_modality(properties, data_keys),
        bands=tuple(bands),
        collections=(collection,) if isinstance(collection, str) and collection else (),
        platforms=tuple(dict.fromkeys(platforms)),
        description=f"Inferred from the STAC metadata of item `{item_id}`.",
        data_type=str(dtypes.pop()) if len(dtypes) == 1 and None not in dtypes else None,
        quality=quality,
        inferred={"from": INFERRED_FROM_METADATA, "item": item_id, "files_read": probed},
    )


def _band_entry(band: BandSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": band.name, "aliases": list(band.aliases)}
    for key, value in (
        ("common_name", band.common_name),
        ("center_wavelength_um", band.center_wavelength_um),
        ("gsd_m", band.gsd_m),
        ("nodata", band.nodata),
    ):
        if value is not None:
            entry[key] = value
    entry.update(scale=band.scale, offset=band.offset, units=band.units, resampling=band.resampling)
    if band.band_index != 1:
        entry["band_index"] = band.band_index
    return entry


def _flow(value: Any) -> str:
    text = str(yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 20))
    return text.strip().removesuffix("...").strip()  # a scalar document ends with "..."


def pin_snippet(spec: SensorSpec, collection: str, *, extends: str | None = None) -> str:
    """A ``sensors:`` YAML block that pins ``spec`` for ``collection`` (append its entry to a copy of
    pipeline/sensors.yaml and pass that with ``--sensors``); one line per band. With ``extends``, a two-line entry
    that files the collection under that configured sensor instead."""
    lines = ["sensors:", f"  {_flow(collection)}:"]
    if extends is not None:
        lines += [f"    extends: {_flow(extends)}", f"    collections: [{_flow(collection)}]"]
        return "\n".join(lines) + "\n"
    lines += [
        f"    modality: {spec.modality}",
        f"    description: {_flow(f'Pinned from the sensor inferred for {collection}; check every value.')}",
        f"    collections: [{_flow(collection)}]",
        f"    data_type: {_flow(spec.data_type)}",
        "    bands:",
        *(f"      - {_flow(_band_entry(b))}" for b in spec.bands),
    ]
    if spec.quality is not None:
        lines.append(f"    quality: {_flow({'kind': spec.quality.kind, 'aliases': list(spec.quality.aliases)})}")
    return "\n".join(lines) + "\n"

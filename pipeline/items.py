"""Resolve a raw STAC item into a :class:`~pipeline.records.ResolvedItem`: bands, CRS, radiometry, lineage.

Providers disagree on almost everything (docs/ingest.md §Item resolution): asset keys (``B04`` vs ``red``), where
``proj:*`` lives (asset or item), ``proj:code`` vs ``proj:epsg``, 6- vs 9-element transforms, and where band metadata
sits (``eo:bands``, ``raster:bands``, STAC 1.1 ``bands``). :func:`resolve_item` hides all of it behind the alias table
in ``sensors.yaml``, so every later stage sees one shape.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urljoin, urlsplit

from rasterio.crs import CRS
from rasterio.errors import CRSError

from pipeline.errors import AssetNotFoundError, CRSNotFoundError, InvalidItemError
from pipeline.ids import safe_id
from pipeline.records import QualityAsset, ResolvedBand, ResolvedItem, Transform6
from pipeline.sensors import BandSpec, SensorRegistry, SensorSpec, load_sensors
from pipeline.warnings import MissingBandWarning

__all__ = [
    "BandOverride",
    "asset_epsg",
    "is_absolute_href",
    "is_local_href",
    "item_base_href",
    "make_absolute_href",
    "parse_datetime",
    "resolve_item",
]

BandOverride = Mapping[str, float | None]
"""Per-band radiometry override: any of ``nodata``, ``scale``, ``offset``."""

_OVERRIDE_KEYS = frozenset({"nodata", "scale", "offset"})
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_URLJOIN_SCHEMES = frozenset({"http", "https", "file"})
_SKIP_ROLES = frozenset({"visual", "overview", "thumbnail"})
_DB_UNITS = frozenset({"db", "decibel", "decibels"})
# Scalar provenance copied into ResolvedItem.properties (and from there into the chip index).
_PROVENANCE_KEYS = (
    "eo:cloud_cover", "platform", "constellation", "s2:mgrs_tile", "s2:processing_baseline", "s2:product_type",
    "sat:orbit_state", "sat:relative_orbit", "sat:absolute_orbit", "sar:polarizations", "sar:instrument_mode",
    "sar:product_type", "sar:frequency_band", "landsat:wrs_path", "landsat:wrs_row", "landsat:collection_category",
    "created", "start_datetime", "end_datetime", "bigearthnet:labels", "bigearthnet:s2_patch",
)


def is_absolute_href(href: str) -> bool:
    """True for URLs with a scheme (``s3://``, ``https://``, ``file://``) and absolute local paths."""
    return bool(_SCHEME.match(href)) or os.path.isabs(href)


def is_local_href(href: str) -> bool:
    """True for hrefs that read this machine's files: paths (GDAL ``/vsi...`` paths included) and ``file://`` URLs."""
    match = _SCHEME.match(href)
    return match is None or match.group(0)[:-3].lower() == "file"


def make_absolute_href(href: str, base: str | None) -> str:
    """Resolve ``href`` against ``base`` (the location of the JSON file that contains it).

    Absolute hrefs are returned unchanged. Relative ones are joined to ``base``'s directory: with ``urljoin`` for
    ``http(s)``/``file`` URLs, with POSIX path rules for other schemes (``s3://``), with ``os.path`` for local paths.

    Args:
        href: an asset or link href.
        base: the href of the file containing it; ``None`` only works for absolute hrefs.

    Raises:
        InvalidItemError: ``href`` is relative and there is no base to resolve it against.
    """
    if is_absolute_href(href):
        return href
    if not base:
        raise InvalidItemError(
            f"Relative href `{href}` cannot be resolved: the item has no absolute `self` link and no base href was "
            "given; read it with pipeline.stac.read_catalog or pass base_href=."
        )
    match = _SCHEME.match(base)
    if match is None:
        return os.path.normpath(os.path.join(os.path.dirname(base), href))
    scheme = match.group(0)[:-3].lower()
    if scheme in _URLJOIN_SCHEMES:
        return urljoin(base, href)
    parts = urlsplit(base)
    path = posixpath.normpath(posixpath.join(posixpath.dirname(parts.path) or "/", href))
    return f"{parts.scheme}://{parts.netloc}{path}"


def parse_datetime(value: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 timestamp into an aware UTC ``datetime`` (naive values are taken as UTC)."""
    parsed = datetime.fromisoformat(value.strip())
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def asset_epsg(*sources: Mapping[str, Any]) -> int | None:
    """The first EPSG code found in ``sources`` (asset, then item properties).

    Reads ``proj:code`` (``"EPSG:32633"``, projection v2) and ``proj:epsg`` (int, v1.x), then converts ``proj:wkt2``
    or ``proj:projjson`` to EPSG where GDAL can. ``None`` means "read the raster header".
    """
    for source in sources:
        code = source.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:") and code[5:].strip().isdigit():
            return int(code[5:])
        epsg = source.get("proj:epsg")
        if isinstance(epsg, int) and not isinstance(epsg, bool):
            return epsg
        for key in ("proj:wkt2", "proj:projjson"):
            if source.get(key):
                crs = _crs_from_definition(source[key])
                return crs.to_epsg() if crs is not None else None
    return None


def _crs_from_definition(definition: Any) -> CRS | None:
    try:  # GDAL reads WKT2 and PROJJSON (as a JSON string) alike
        return CRS.from_user_input(json.dumps(definition) if isinstance(definition, dict) else str(definition))
    except CRSError:
        return None


@lru_cache(maxsize=256)
def _is_metric(epsg: int) -> bool:
    try:
        crs = CRS.from_epsg(epsg)
    except CRSError:
        return False
    return bool(crs.is_projected and crs.linear_units in ("metre", "meter"))


def _transform6(value: Any, where: str) -> Transform6 | None:
    if value is None:
        return None
    if not isinstance(value, Sequence) or len(value) not in (6, 9):
        raise InvalidItemError(f"{where}: `proj:transform` must have 6 or 9 numbers, got {value!r}.")
    a, b, c, d, e, f = (float(v) for v in value[:6])  # a 9-element 3x3 form ends with (0, 0, 1)
    return (a, b, c, d, e, f)


def _shape(value: Any, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, Sequence) or len(value) != 2:
        raise InvalidItemError(f"{where}: `proj:shape` must be [rows, cols], got {value!r}.")
    return (int(value[0]), int(value[1]))


def _band_entries(asset: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-band metadata of an asset: ``eo:bands`` or STAC 1.1 ``bands`` (with ``eo:common_name``)."""
    entries = asset.get("eo:bands") or asset.get("bands") or []
    return [entry for entry in entries if isinstance(entry, dict)]


def _find_asset(band: BandSpec, assets: Mapping[str, Mapping[str, Any]]) -> tuple[str, int] | None:
    """Find ``(asset_key, 1-based band index)`` for a band.

    Tries the alias keys, then the ``eo:bands``/``bands`` names of single-band assets, then a common name that exactly
    one single-band asset carries.
    """
    for alias in band.aliases:
        if alias in assets:
            return alias, 1
    lowered = {key.lower(): key for key in assets}
    for alias in band.aliases:
        if alias.lower() in lowered:
            return lowered[alias.lower()], 1
    names = {band.name.lower(), *(alias.lower() for alias in band.aliases)}
    common: list[tuple[str, int]] = []
    for key in sorted(assets):
        asset = assets[key]
        entries = _band_entries(asset)
        # NOTE: single-band assets only: a multi-band `visual` (TCI) also lists B04/B03/B02, but as an 8-bit rendering.
        if _SKIP_ROLES & set(asset.get("roles") or ()) or len(entries) != 1:
            continue
        entry = entries[0]
        if str(entry.get("name", "")).lower() in names:
            return key, 1
        entry_common = entry.get("common_name") or entry.get("eo:common_name")
        if band.common_name and entry_common == band.common_name:
            common.append((key, 1))
    return common[0] if len(common) == 1 else None


def _radiometry(asset: Mapping[str, Any], index: int) -> dict[str, Any]:
    """``nodata``/``scale``/``offset``/``unit`` for one band from ``raster:bands``, STAC 1.1 ``bands`` or the asset."""
    found: dict[str, Any] = {key: asset[key] for key in ("nodata", "unit") if key in asset}
    for list_key in ("bands", "raster:bands"):  # raster:bands wins over STAC 1.1 bands when both exist
        entries = asset.get(list_key) or []
        if len(entries) >= index and isinstance(entries[index - 1], dict):
            entry = entries[index - 1]
            found.update({key: entry[key] for key in ("nodata", "scale", "offset", "unit") if key in entry})
    return found


def _nodata_value(value: Any) -> float | None:
    return None if value is None else float(value)  # float() also takes STAC's "nan", "inf", "-inf" strings


def _check_overrides(overrides: Mapping[str, BandOverride] | None, spec: SensorSpec) -> None:
    for band_name, fields in (overrides or {}).items():
        if band_name != "*" and band_name not in spec.band_names:
            raise ValueError(
                f"Override for unknown band `{band_name}` of sensor `{spec.name}`; use one of "
                f"{', '.join(spec.band_names)} or `*` for every band."
            )
        unknown = set(fields) - _OVERRIDE_KEYS
        if unknown:
            raise ValueError(
                f"Override keys {sorted(unknown)} for band `{band_name}` are not in {sorted(_OVERRIDE_KEYS)}."
            )


def item_base_href(item: Mapping[str, Any], base_href: str | None) -> str | None:
    """The href relative asset hrefs resolve against: an absolute ``self`` link, else ``base_href`` (the file's)."""
    for link in item.get("links") or ():
        if isinstance(link, dict) and link.get("rel") == "self" and isinstance(link.get("href"), str):
            if is_absolute_href(link["href"]):
                return str(link["href"])
            if base_href:
                return make_absolute_href(link["href"], base_href)
    return base_href


def _item_datetime(item_id: str, properties: Mapping[str, Any]) -> datetime:
    for key in ("datetime", "start_datetime"):
        value = properties.get(key)
        if isinstance(value, str):
            try:
                return parse_datetime(value)
            except ValueError as err:
                raise InvalidItemError(f"Item `{item_id}` has an unparseable `{key}`: {value!r}.") from err
    raise InvalidItemError(
        f"Item `{item_id}` has neither `datetime` nor `start_datetime` in its properties; STAC requires one of them."
    )


def _check_metric(item_id: str, collection: str, epsg: int | None, where: str, spec: SensorSpec) -> None:
    if epsg is None or _is_metric(epsg):
        return
    note = f" {spec.crs_note}" if spec.crs_note else ""
    raise CRSNotFoundError(
        f"Item `{item_id}` (collection `{collection}`): {where} is in EPSG:{epsg}, which is not a projected CRS in "
        f"metres; chips are cut in metres on a UTM grid, so an angular or unknown CRS would give wrong pixel sizes."
        f"{note} Otherwise reproject the rasters to UTM first and update proj:code/proj:epsg."
    )


def _provenance(properties: Mapping[str, Any]) -> dict[str, str | float | int | None]:
    out: dict[str, str | float | int | None] = {}
    for key in _PROVENANCE_KEYS:
        value = properties.get(key)
        if value is None:
            continue
        out[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    mgrs_parts = ("utm_zone", "latitude_band", "grid_square")  # Earth Search v1 splits the MGRS tile (mgrs extension)
    if "s2:mgrs_tile" not in out and all(properties.get(f"mgrs:{k}") for k in mgrs_parts):
        zone = int(properties["mgrs:utm_zone"])
        out["s2:mgrs_tile"] = f"{zone:02d}{properties['mgrs:latitude_band']}{properties['mgrs:grid_square']}"
    return out


def resolve_item(
    item: Mapping[str, Any],
    sensors: SensorRegistry | None = None,
    *,
    base_href: str | None = None,
    overrides: Mapping[str, BandOverride] | None = None,
) -> ResolvedItem:
    """Normalise a raw STAC item for ingest.

    Bands come back in the sensor's canonical order, each resolved through the alias table, then ``eo:bands`` names,
    then a unique ``common_name``. ``proj:*`` is read from the asset first, then the item. Radiometry: sensors.yaml
    defaults < ``raster:bands`` < ``overrides``.

    Args:
        item: a STAC item as a dict (e.g. from :func:`pipeline.stac.read_catalog` or ``search_api``).
        sensors: the sensor registry; default: the packaged ``sensors.yaml``.
        base_href: where the item JSON lives, to resolve relative asset hrefs when it has no absolute self link.
        overrides: per band name (or ``"*"`` for all) a mapping of ``nodata``/``scale``/``offset`` overrides.

    Raises:
        InvalidItemError: no id, assets or datetime/start_datetime; malformed ``proj:*``; unresolvable relative href.
        SensorNotFoundError: no sensor matches the item.
        AssetNotFoundError: a required band has no asset; the message lists the available asset keys.
        CRSNotFoundError: the item or a band asset declares a non-metric CRS (e.g. raw S1 GRD in EPSG:4326).
    """
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise InvalidItemError(f"STAC item has no string `id` (keys: {sorted(item)}).")
    properties = item.get("properties")
    assets = item.get("assets")
    if not isinstance(properties, dict) or not isinstance(assets, dict):
        raise InvalidItemError(f"Item `{item_id}` needs `properties` and `assets` objects.")
    registry = sensors if sensors is not None else load_sensors()
    spec = registry.for_item(item)
    _check_overrides(overrides, spec)
    collection = str(item.get("collection") or spec.name)
    acquired = _item_datetime(item_id, properties)
    item_epsg = asset_epsg(properties)
    _check_metric(item_id, collection, item_epsg, "the item", spec)
    dn_offset, dn_reason = spec.harmonize.dn_offset_for(properties, acquired) if spec.harmonize else (0, "")
    # The DN offset a provider may also state as a physical raster:bands offset (Earth Search v1: -0.1): folded to 0
    # whether ingest applies it now or the provider already applied it to the DNs, so it never counts twice.
    stated_offset = dn_offset
    if spec.harmonize is not None and spec.harmonize.provider_applied(properties) is not None:
        stated_offset = spec.harmonize.dn_offset
    base = item_base_href(item, base_href)

    bands: list[ResolvedBand] = []
    for band in spec.bands:
        found = _find_asset(band, assets)
        if found is None:
            hint = (
                f"Item `{item_id}` (collection `{collection}`) has no asset for band `{band.name}`"
                f"{f' ({band.common_name})' if band.common_name else ''}; tried aliases {list(band.aliases)}; "
                f"available assets: {', '.join(sorted(assets))}; add an alias in pipeline/sensors.yaml "
                f"(sensor `{spec.name}`)."
            )
            if band.optional:
                warnings.warn(MissingBandWarning(hint + " The optional band is skipped."), stacklevel=2)
                continue
            raise AssetNotFoundError(hint)
        key, index = found
        bands.append(_resolve_band(item_id, collection, spec, band, key, index, assets[key], properties, base,
                                   dn_offset, stated_offset, overrides))

    return ResolvedItem(
        item_id=item_id,
        safe_id=safe_id(item_id),
        collection=collection,
        sensor=spec.name,
        modality=spec.modality,
        datetime=acquired,
        bands=tuple(bands),
        updated=str(properties["updated"]) if properties.get("updated") else None,
        epsg=item_epsg if item_epsg is not None else _common_epsg(bands),
        quality=_resolve_quality(item_id, collection, spec, assets, properties, base),
        properties={
            **_provenance(properties),
            "rs:sensor": spec.name,
            "rs:sensor_config_hash": spec.config_hash,
            "rs:dn_offset": dn_offset,
            "rs:dn_offset_reason": dn_reason or None,
        },
        item_json=json.dumps(item, separators=(",", ":"), sort_keys=True),
    )


def _resolve_band(
    item_id: str,
    collection: str,
    spec: SensorSpec,
    band: BandSpec,
    key: str,
    index: int,
    asset: Mapping[str, Any],
    properties: Mapping[str, Any],
    base: str | None,
    dn_offset: int,
    stated_offset: int,
    overrides: Mapping[str, BandOverride] | None,
) -> ResolvedBand:
    href = asset.get("href")
    if not isinstance(href, str) or not href:
        raise InvalidItemError(f"Item `{item_id}` asset `{key}` has no `href`.")
    epsg, transform, shape = _asset_georef(item_id, collection, spec, key, asset, properties)
    found = _radiometry(asset, index)
    nodata = _nodata_value(found["nodata"]) if "nodata" in found else band.nodata
    scale = float(found.get("scale", band.scale))
    offset = float(found.get("offset", band.offset))
    if stated_offset and "offset" in found and abs(offset - stated_offset * scale) <= 1e-9 + 1e-6 * abs(offset):
        offset = 0.0  # Earth Search v1 states the -1000 DN offset as offset=-0.1; it is (or was) applied to the DNs
    for override in ((overrides or {}).get("*", {}), (overrides or {}).get(band.name, {})):
        if "nodata" in override:  # an explicit None means "this band has no nodata value"
            nodata = _nodata_value(override["nodata"])
        if override.get("scale") is not None:
            scale = float(override["scale"])  # type: ignore[arg-type]
        if override.get("offset") is not None:
            offset = float(override["offset"])  # type: ignore[arg-type]
    # A band the item already declares in dB (raster:bands unit) is never converted a second time.
    to_db = band.to_db and str(found.get("unit", "")).strip().lower() not in _DB_UNITS
    return ResolvedBand(
        name=band.name,
        asset_key=key,
        href=make_absolute_href(href, base),
        common_name=band.common_name,
        center_wavelength_um=band.center_wavelength_um,
        gsd_m=band.gsd_m,
        nodata=nodata,
        scale=scale,
        offset=offset,
        dn_offset=dn_offset,
        units=band.units,
        to_db=to_db,
        resampling=band.resampling,
        band_index=index,
        epsg=epsg,
        transform=transform,
        shape=shape,
    )


def _asset_georef(
    item_id: str, collection: str, spec: SensorSpec, key: str, asset: Mapping[str, Any], properties: Mapping[str, Any]
) -> tuple[int | None, Transform6 | None, tuple[int, int] | None]:
    """An asset's EPSG code (checked to be metric), ``proj:transform`` and ``proj:shape``, else the item's."""
    where = f"Item `{item_id}` asset `{key}`"
    epsg = asset_epsg(asset, properties)
    _check_metric(item_id, collection, epsg, f"asset `{key}`", spec)
    transform = _transform6(asset.get("proj:transform", properties.get("proj:transform")), where)
    return epsg, transform, _shape(asset.get("proj:shape", properties.get("proj:shape")), where)


def _resolve_quality(
    item_id: str,
    collection: str,
    spec: SensorSpec,
    assets: Mapping[str, Mapping[str, Any]],
    properties: Mapping[str, Any],
    base: str | None,
) -> QualityAsset | None:
    if spec.quality is None:
        return None
    lowered = {key.lower(): key for key in assets}
    key = next((lowered[a.lower()] for a in spec.quality.aliases if a.lower() in lowered), None)
    if key is None or not isinstance(assets[key].get("href"), str):
        warnings.warn(
            MissingBandWarning(
                f"Item `{item_id}` (collection `{collection}`) has no `{spec.quality.kind}` quality asset (tried "
                f"{list(spec.quality.aliases)}); cloud_pct will be empty for its chips."
            ),
            stacklevel=3,
        )
        return None
    asset = assets[key]
    epsg, transform, shape = _asset_georef(item_id, collection, spec, key, asset, properties)
    rule = spec.quality
    scl = rule.kind == "scl"
    return QualityAsset(
        kind=rule.kind,
        asset_key=key,
        cloud=rule.cloud_values if scl else rule.cloud_bits,
        nodata=rule.nodata_values if scl else rule.nodata_bits,
        href=make_absolute_href(str(asset["href"]), base),
        epsg=epsg,
        transform=transform,
        shape=shape,
    )


def _common_epsg(bands: Sequence[ResolvedBand]) -> int | None:
    codes = {band.epsg for band in bands if band.epsg is not None}
    return codes.pop() if len(codes) == 1 else None

"""Sensor configuration: per-product bands, asset aliases, radiometry and quality rasters, loaded from ``sensors.yaml``.

:func:`load_sensors` reads the YAML into a :class:`SensorRegistry`; :meth:`SensorRegistry.for_item` picks the
:class:`SensorSpec` for a raw STAC item. :meth:`SensorSpec.to_metadata` is the JSON block that shards and
``dataset.json`` carry, so band identity, wavelengths and nodata travel with the pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from pipeline.errors import BandSelectionError, SensorConfigError, SensorNotFoundError
from pipeline.records import Modality, QualityKind, Resampling
from pipeline.times import parse_datetime

__all__ = [
    "DEFAULT_SENSORS_PATH",
    "OFFSET_APPLIED_FLAGS",
    "BandSpec",
    "HarmonizeSpec",
    "QualitySpec",
    "SensorRegistry",
    "SensorSpec",
    "load_sensors",
    "match_bands",
    "normalize_platform",
]

DEFAULT_SENSORS_PATH = Path(__file__).with_name("sensors.yaml")

_MODALITIES: tuple[Modality, ...] = ("optical", "sar")
_RESAMPLINGS: tuple[Resampling, ...] = ("nearest", "bilinear", "cubic", "average")
_QUALITY_KINDS: tuple[QualityKind, ...] = ("scl", "landsat_qa_pixel")
_BAND_KEYS = frozenset(
    {"name", "common_name", "aliases", "center_wavelength_um", "gsd_m", "nodata", "scale", "offset", "units", "to_db",
     "resampling", "optional", "band_index"}
)
_DEFAULT_KEYS = frozenset({"nodata", "scale", "offset", "units", "to_db", "resampling"})
_QUALITY_KEYS = frozenset({"kind", "aliases", "gsd_m", "nodata_values", "cloud_values", "nodata_bits", "cloud_bits"})
_HARMONIZE_KEYS = frozenset({"kind", "min_baseline", "dn_offset", "baseline_date"})
_SENSOR_KEYS = frozenset(
    {"extends", "modality", "description", "collections", "platforms", "product_types", "data_type", "harmonize",
     "defaults", "bands", "quality", "center_frequency_ghz", "crs_note"}
)
_PRODUCT_TYPE_KEYS = ("s2:product_type", "sar:product_type", "product_type")
# Item properties by which a provider says it already added the baseline offset to the DNs of its COGs (Earth Search
# v1 `sentinel-2-l2a`; `sentinel:` is its pre-2023 spelling, cirrus-geo/cirrus-earth-search#21, #33).
OFFSET_APPLIED_FLAGS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
# ESA product names carry the processing baseline, e.g. S2B_MSIL2A_20240419T095549_N0510_R122_T47XML_...: 05.10.
_PRODUCT_ID_KEYS = ("s2:product_uri", "sentinel:product_id")
_PRODUCT_BASELINE = re.compile(r"_N(\d{2})(\d{2})_")


def normalize_platform(value: str) -> str:
    """Normalise a STAC ``platform``/``constellation``: ``"Sentinel 2"`` and ``"SENTINEL-2"`` → ``"sentinel-2"``."""
    return "-".join(value.strip().lower().replace("_", " ").replace("-", " ").split())


@dataclass(frozen=True)
class BandSpec:
    """One band of a sensor, in canonical order. Physical value = ``(DN + dn_offset) * scale + offset``.

    ``band_index`` is the 1-based band inside the asset the aliases find (1 for single-band assets; multi-band
    assets of inferred sensors, docs/ingest-inputs.md).
    """

    name: str
    aliases: tuple[str, ...]
    common_name: str | None = None
    center_wavelength_um: float | None = None
    gsd_m: float | None = None
    nodata: float | None = None
    scale: float = 1.0
    offset: float = 0.0
    units: str = "DN"
    to_db: bool = False
    resampling: Resampling = "bilinear"
    optional: bool = False
    band_index: int = 1

    def to_metadata(self) -> dict[str, Any]:
        """The band's entry in shard metadata (``rs:dataset``) and ``dataset.json``."""
        extra = {"band_index": self.band_index} if self.band_index != 1 else {}  # absent: hashes stay as they were
        return {
            **extra,
            "name": self.name,
            "common_name": self.common_name,
            "center_wavelength_um": self.center_wavelength_um,
            "gsd_m": self.gsd_m,
            "nodata": self.nodata,
            "scale": self.scale,
            "offset": self.offset,
            "units": self.units,
            "to_db": self.to_db,
            "resampling": self.resampling,
            "optional": self.optional,
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True)
class QualitySpec:
    """A per-pixel quality raster: S2 ``SCL`` class values or Landsat ``qa_pixel`` bit flags."""

    kind: QualityKind
    aliases: tuple[str, ...]
    gsd_m: float | None = None
    nodata_values: tuple[int, ...] = ()
    cloud_values: tuple[int, ...] = ()
    nodata_bits: tuple[int, ...] = ()
    cloud_bits: tuple[int, ...] = ()

    def to_metadata(self) -> dict[str, Any]:
        """JSON description of the quality raster and which values/bits count as cloud or nodata."""
        return {
            "kind": self.kind,
            "aliases": list(self.aliases),
            "gsd_m": self.gsd_m,
            "nodata_values": list(self.nodata_values),
            "cloud_values": list(self.cloud_values),
            "nodata_bits": list(self.nodata_bits),
            "cloud_bits": list(self.cloud_bits),
            "resampling": "nearest",
        }


@dataclass(frozen=True)
class HarmonizeSpec:
    """A DN offset that depends on the product's processing baseline (S2 >= 04.00: -1000 DN)."""

    kind: Literal["s2_processing_baseline"]
    min_baseline: str
    dn_offset: int
    baseline_date: datetime | None = None

    def dn_offset_for(self, properties: Mapping[str, Any], acquired: datetime) -> tuple[int, str]:
        """Return ``(dn_offset, reason)`` for an item's properties and acquisition time.

        A provider flag saying the offset is already in the DNs (:data:`OFFSET_APPLIED_FLAGS`, true) gives 0, so
        the offset is never applied twice.

        Args:
            properties: the item's ``properties`` (reads ``s2:processing_baseline`` and the provider flags).
            acquired: the item's acquisition time; decides when the baseline is missing.
        """
        match self.kind:
            case "s2_processing_baseline":
                applied = self.provider_applied(properties)
                if applied is not None:
                    return 0, f"{applied}=true: the provider already applied the offset to the DNs"
                baseline, source = properties.get("s2:processing_baseline"), "s2:processing_baseline"
                if baseline is None:
                    baseline, source = _baseline_in_product_id(properties), "baseline in the product name"
                if baseline is not None:
                    applies = _baseline_tuple(str(baseline)) >= _baseline_tuple(self.min_baseline)
                    return (self.dn_offset if applies else 0), f"{source}={baseline}"
                if self.baseline_date is not None and acquired >= self.baseline_date:
                    return self.dn_offset, f"no s2:processing_baseline; acquired >= {self.baseline_date.date()}"
                return 0, "no s2:processing_baseline; acquired before baseline 04.00"

    @staticmethod
    def provider_applied(properties: Mapping[str, Any]) -> str | None:
        """The provider flag (e.g. ``earthsearch:boa_offset_applied``) that says the DNs are already offset, if set."""
        return next((flag for flag in OFFSET_APPLIED_FLAGS if properties.get(flag) is True), None)

    def to_metadata(self) -> dict[str, Any]:
        """JSON description of the rule (the per-item result is recorded on each item)."""
        return {
            "kind": self.kind,
            "min_baseline": self.min_baseline,
            "dn_offset": self.dn_offset,
            "baseline_date": self.baseline_date.isoformat() if self.baseline_date else None,
            "baseline_sources": ["s2:processing_baseline", *_PRODUCT_ID_KEYS],
            "applied_flags": list(OFFSET_APPLIED_FLAGS),
        }


def _baseline_in_product_id(properties: Mapping[str, Any]) -> str | None:
    """The baseline ``NN.NN`` encoded as ``_Nnnnn_`` in an ESA product name (``s2:product_uri``, Earth Search v0)."""
    for key in _PRODUCT_ID_KEYS:
        match = _PRODUCT_BASELINE.search(str(properties.get(key) or ""))
        if match:
            return f"{match.group(1)}.{match.group(2)}"
    return None


def _baseline_tuple(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.strip().split("."))
    except ValueError as err:
        raise SensorConfigError(f"Processing baseline `{value}` is not of the form `NN.NN` (e.g. `04.00`).") from err


@dataclass(frozen=True)
class SensorSpec:
    """One product's configuration: which collections it covers, its bands in order and its quality raster.

    Attributes:
        name: the entry's key in ``sensors.yaml`` (e.g. ``"sentinel-2-l2a"``).
        modality: ``"optical"`` or ``"sar"``.
        bands: every band in canonical order, optional ones included (see ``optional_bands``).
        quality: the quality raster, or ``None`` (S1, L1C, BigEarthNet patches).
        harmonize: DN-offset rule (S2 processing baseline), or ``None``.
        crs_note: extra advice shown when an item of this sensor has no metric CRS (raw S1 GRD).
    """

    name: str
    modality: Modality
    bands: tuple[BandSpec, ...]
    collections: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    product_types: tuple[str, ...] = ()
    description: str = ""
    data_type: str | None = None
    quality: QualitySpec | None = None
    harmonize: HarmonizeSpec | None = None
    center_frequency_ghz: float | None = None
    crs_note: str | None = None
    inferred: Mapping[str, Any] | None = None

    @property
    def band_names(self) -> tuple[str, ...]:
        """All canonical band names, in order."""
        return tuple(band.name for band in self.bands)

    @property
    def required_bands(self) -> tuple[BandSpec, ...]:
        """Bands an item must have; a missing one is an :class:`~pipeline.errors.AssetNotFoundError`."""
        return tuple(band for band in self.bands if not band.optional)

    @property
    def optional_bands(self) -> tuple[BandSpec, ...]:
        """Bands resolved when present and skipped with a :class:`~pipeline.warnings.MissingBandWarning` otherwise."""
        return tuple(band for band in self.bands if band.optional)

    def band(self, name: str) -> BandSpec:
        """Look a band up by canonical name."""
        for band in self.bands:
            if band.name == name:
                return band
        raise KeyError(f"Sensor `{self.name}` has no band `{name}`; bands: {', '.join(self.band_names)}.")

    def select(self, selectors: Sequence[str]) -> SensorSpec:
        """This sensor restricted to the bands ``selectors`` name (``--bands``), in their order, all required.

        Raises:
            BandSelectionError: a selector matches no band, or several, or two selectors pick one band.
        """
        bands = match_bands(self, selectors)
        return dataclasses.replace(self, bands=tuple(dataclasses.replace(b, optional=False) for b in bands))

    def to_metadata(self) -> dict[str, Any]:
        """The sensor block written into Parquet key-value metadata and ``dataset.json``."""
        extra = {"inferred": dict(self.inferred)} if self.inferred else {}
        return {
            **extra,
            "sensor": self.name,
            "modality": self.modality,
            "description": self.description,
            "collections": list(self.collections),
            "data_type": self.data_type,
            "center_frequency_ghz": self.center_frequency_ghz,
            "bands": [band.to_metadata() for band in self.bands],
            "quality": self.quality.to_metadata() if self.quality else None,
            "harmonize": self.harmonize.to_metadata() if self.harmonize else None,
            "config_hash": self.config_hash,
        }

    @property
    def config_hash(self) -> str:
        """A short, stable hash of this sensor's configuration (part of ``processing_version``)."""
        payload = {
            "sensor": self.name,
            "modality": self.modality,
            "data_type": self.data_type,
            "bands": [band.to_metadata() for band in self.bands],
            "quality": self.quality.to_metadata() if self.quality else None,
            "harmonize": self.harmonize.to_metadata() if self.harmonize else None,
        }
        return _short_hash(json.dumps(payload, sort_keys=True, separators=(",", ":")))


def _describe(band: BandSpec) -> str:
    common = f" ({band.common_name})" if band.common_name and band.common_name != band.name else ""
    return f"{band.name}{common}"


def match_bands(spec: SensorSpec, selectors: Sequence[str]) -> tuple[BandSpec, ...]:
    """The bands of ``spec`` that ``selectors`` name, in selector order (docs/ingest-inputs.md, "Band selection").

    A selector matches, case-insensitively and in this order of precedence: a canonical band name (``B08``), an alias
    (asset key, ``nir``), a common name (``nir``). The first level with a match decides; several bands at that level
    (``rededge`` is B05, B06 and B07) is ambiguous.

    Raises:
        BandSelectionError: a selector matches no band or several, or two selectors name the same band.
    """
    chosen: list[BandSpec] = []
    for selector in selectors:
        key = selector.strip().lower()
        levels = (
            [b for b in spec.bands if b.name.lower() == key],
            [b for b in spec.bands if key in (a.lower() for a in b.aliases)],
            [b for b in spec.bands if (b.common_name or "").lower() == key],
        )
        found = next((level for level in levels if level), [])
        listed = ", ".join(_describe(b) for b in spec.bands)
        if not found:
            quality = spec.quality is not None and key in (a.lower() for a in spec.quality.aliases)
            note = (
                f" `{selector}` is the sensor's quality raster: it is applied as the cloud/nodata rule, never stored "
                "as a band." if quality else ""
            )
            raise BandSelectionError(
                f"--bands `{selector}` matches no band of sensor `{spec.name}`; its bands are {listed}.{note} Use a "
                "band name, a common name or an asset key from that list."
            )
        if len(found) > 1:
            raise BandSelectionError(
                f"--bands `{selector}` is ambiguous for sensor `{spec.name}`: it matches "
                f"{', '.join(_describe(b) for b in found)}; name one of them."
            )
        if found[0] in chosen:
            raise BandSelectionError(
                f"--bands names band `{found[0].name}` of sensor `{spec.name}` twice (`{selector}`); list each once."
            )
        chosen.append(found[0])
    return tuple(chosen)


@dataclass(frozen=True)
class SensorRegistry:
    """All sensors of one ``sensors.yaml``, with lookups by collection id and by STAC item."""

    sensors: Mapping[str, SensorSpec]
    source: str = ""
    _by_collection: dict[str, SensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_collection: dict[str, SensorSpec] = {}
        for spec in self.sensors.values():
            for collection in spec.collections:
                if collection in by_collection:
                    raise SensorConfigError(
                        f"Collection `{collection}` is listed by both `{by_collection[collection].name}` and "
                        f"`{spec.name}` in {self.source or 'the sensor config'}; list it under one sensor only."
                    )
                by_collection[collection] = spec
        object.__setattr__(self, "_by_collection", by_collection)

    def __getitem__(self, name: str) -> SensorSpec:
        try:
            return self.sensors[name]
        except KeyError:
            raise SensorNotFoundError(
                f"No sensor `{name}` in {self.source or 'the sensor config'}; sensors: {', '.join(self.sensors)}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.sensors

    def __iter__(self) -> Iterator[SensorSpec]:
        return iter(self.sensors.values())

    def __len__(self) -> int:
        return len(self.sensors)

    @property
    def collections(self) -> tuple[str, ...]:
        """Every collection id some sensor claims, sorted."""
        return tuple(sorted(self._by_collection))

    def for_collection(self, collection: str) -> SensorSpec | None:
        """The sensor that lists ``collection``, or ``None``."""
        return self._by_collection.get(collection)

    def for_item(self, item: Mapping[str, Any], bands: Sequence[str] = ()) -> SensorSpec:
        """Pick the sensor for a raw STAC item (see :meth:`match_item`)."""
        return self.match_item(item, bands)[0]

    def match_item(self, item: Mapping[str, Any], bands: Sequence[str] = ()) -> tuple[SensorSpec, str]:
        """Pick the sensor for a raw STAC item and say how it matched (``"collection"`` or ``"platform and assets"``).

        Matches the item's ``collection`` first. Otherwise the candidates are the sensors listing its ``platform`` or
        ``constellation`` (or every sensor when neither matches), narrowed by product type, and the one whose required
        bands (the ``bands`` selected, when given) all resolve from the item's asset keys, with the most matching
        assets, wins.

        Args:
            item: a STAC item as a dict.
            bands: the ``--bands`` selectors, if any: only those bands must be present.

        Raises:
            SensorNotFoundError: no sensor matches; the message lists the known collections and how to add one.
        """
        collection = item.get("collection")
        if isinstance(collection, str) and collection in self._by_collection:
            return self._by_collection[collection], "collection"
        properties = item.get("properties") or {}
        keys = set(item.get("assets") or {})
        tags = {
            normalize_platform(str(properties[key]))
            for key in ("platform", "constellation")
            if isinstance(properties.get(key), str)
        }
        everything = list(self.sensors.values())
        by_platform = [spec for spec in everything if tags & set(spec.platforms)]
        candidates = by_platform or everything
        product_type = next((str(properties[k]) for k in _PRODUCT_TYPE_KEYS if properties.get(k)), None)
        if product_type is not None:
            candidates = [s for s in candidates if not s.product_types or product_type in s.product_types]
        scored = [(score, spec) for spec in candidates if (score := _asset_score(spec, keys, bands)) is not None]
        if scored:
            best = max(score for score, _ in scored)
            how = "platform and asset keys" if by_platform else "asset keys"
            return next(spec for score, spec in scored if score == best), how
        item_id = item.get("id", "<no id>")
        raise SensorNotFoundError(
            f"Item `{item_id}` (collection `{collection}`, platform `{properties.get('platform')}`) matches no sensor "
            f"in {self.source or 'the sensor config'}; known collections: {', '.join(self.collections)}; "
            f"asset keys: {', '.join(sorted(keys)) or 'none'}. Add the collection id to `collections:` of a sensor in "
            "pipeline/sensors.yaml (or add a sensor entry, e.g. with `extends:`)."
        )

    @property
    def config_hash(self) -> str:
        """A stable hash over every sensor's :attr:`SensorSpec.config_hash`."""
        return _short_hash(",".join(f"{name}={spec.config_hash}" for name, spec in sorted(self.sensors.items())))

    def to_metadata(self) -> dict[str, Any]:
        """Every sensor's metadata block, keyed by sensor name."""
        return {name: spec.to_metadata() for name, spec in self.sensors.items()}


def _short_hash(text: str) -> str:
    """A 16-hex-digit blake2b digest of ``text`` (the sensor and registry config hashes)."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _asset_score(spec: SensorSpec, keys: set[str], bands: Sequence[str] = ()) -> int | None:
    """How many of the sensor's bands (and its quality raster) ``keys`` has; ``None`` if a required band is missing.

    With ``bands`` (``--bands``), only the selected bands are required; a sensor they do not fit scores ``None``.
    """
    lowered = {key.lower() for key in keys}
    if bands:
        try:
            spec = spec.select(bands)
        except BandSelectionError:
            return None

    def found(aliases: Sequence[str]) -> bool:
        return any(alias in keys or alias.lower() in lowered for alias in aliases)

    if not all(found(band.aliases) for band in spec.required_bands):
        return None
    score = sum(found(band.aliases) for band in spec.bands)
    return score + int(spec.quality is not None and found(spec.quality.aliases))


def load_sensors(path: str | Path | None = None) -> SensorRegistry:
    """Load a sensor configuration file (default: the packaged ``pipeline/sensors.yaml``).

    Args:
        path: a YAML file with a top-level ``sensors:`` mapping.

    Raises:
        SensorConfigError: the file is malformed; the message names the sensor and key.
    """
    return _load_cached(str(Path(path if path is not None else DEFAULT_SENSORS_PATH).resolve()))


@lru_cache(maxsize=8)
def _load_cached(path: str) -> SensorRegistry:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SensorConfigError(f"Cannot read sensor config `{path}`: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("sensors"), dict):
        raise SensorConfigError(f"Sensor config `{path}` needs a top-level `sensors:` mapping of name -> sensor.")
    entries: dict[str, dict[str, Any]] = raw["sensors"]
    specs = {name: _parse_sensor(name, _merged(name, entries, path), path) for name in entries}
    return SensorRegistry(sensors=specs, source=path)


def _merged(name: str, entries: Mapping[str, Any], path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The sensor entry with its ``extends:`` chain applied (child keys replace parent keys)."""
    entry = entries[name]
    if not isinstance(entry, dict):
        raise SensorConfigError(f"Sensor `{name}` in `{path}` must be a mapping, got {type(entry).__name__}.")
    parent = entry.get("extends")
    if parent is None:
        return dict(entry)
    if parent in seen or parent == name:
        raise SensorConfigError(f"Sensor `{name}` in `{path}` has a cyclic `extends:` chain: {(*seen, name, parent)}.")
    if parent not in entries:
        raise SensorConfigError(f"Sensor `{name}` extends unknown `{parent}`; sensors: {', '.join(entries)}.")
    base = _merged(parent, entries, path, (*seen, name))
    base.update({key: value for key, value in entry.items() if key != "extends"})
    return base


def _check_keys(where: str, given: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise SensorConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}.")


def _choice(where: str, value: Any, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        raise SensorConfigError(f"{where}: `{value}` is not one of {list(allowed)}.")
    return value


def _parse_sensor(name: str, entry: Mapping[str, Any], path: str) -> SensorSpec:
    where = f"Sensor `{name}` in `{path}`"
    _check_keys(where, entry, _SENSOR_KEYS | {"extends"})
    defaults = entry.get("defaults") or {}
    _check_keys(f"{where}, `defaults`", defaults, _DEFAULT_KEYS)
    bands_raw = entry.get("bands")
    if not isinstance(bands_raw, list) or not bands_raw:
        raise SensorConfigError(f"{where}: `bands` must be a non-empty list of band mappings.")
    bands = tuple(_parse_band(f"{where}, band #{i}", {**defaults, **band}) for i, band in enumerate(bands_raw))
    names = [band.name for band in bands]
    if len(set(names)) != len(names):
        raise SensorConfigError(f"{where}: duplicate band names in {names}.")
    quality = entry.get("quality")
    harmonize = entry.get("harmonize")
    return SensorSpec(
        name=name,
        modality=_choice(f"{where}, `modality`", entry.get("modality"), _MODALITIES),
        bands=bands,
        collections=tuple(str(c) for c in entry.get("collections") or ()),
        platforms=tuple(normalize_platform(str(p)) for p in entry.get("platforms") or ()),
        product_types=tuple(str(p) for p in entry.get("product_types") or ()),
        description=str(entry.get("description") or "").strip(),
        data_type=entry.get("data_type"),
        quality=_parse_quality(f"{where}, `quality`", quality) if quality else None,
        harmonize=_parse_harmonize(f"{where}, `harmonize`", harmonize) if harmonize else None,
        center_frequency_ghz=entry.get("center_frequency_ghz"),
        crs_note=(str(entry["crs_note"]).strip() if entry.get("crs_note") else None),
    )


def _parse_band(where: str, raw: Mapping[str, Any]) -> BandSpec:
    _check_keys(where, raw, _BAND_KEYS)
    if not isinstance(raw.get("name"), str):
        raise SensorConfigError(f"{where}: every band needs a string `name`.")
    name = str(raw["name"])
    aliases = tuple(str(a) for a in raw.get("aliases") or ()) or (name,)
    return BandSpec(
        name=name,
        aliases=aliases,
        common_name=raw.get("common_name"),
        center_wavelength_um=_opt_float(raw.get("center_wavelength_um")),
        gsd_m=_opt_float(raw.get("gsd_m")),
        nodata=_opt_float(raw.get("nodata")),
        scale=float(raw.get("scale", 1.0)),
        offset=float(raw.get("offset", 0.0)),
        units=str(raw.get("units", "DN")),
        to_db=bool(raw.get("to_db", False)),
        resampling=_choice(f"{where} (`{name}`), `resampling`", raw.get("resampling", "bilinear"), _RESAMPLINGS),
        optional=bool(raw.get("optional", False)),
        band_index=int(raw.get("band_index", 1)),
    )


def _parse_quality(where: str, raw: Mapping[str, Any]) -> QualitySpec:
    _check_keys(where, raw, _QUALITY_KEYS)

    def ints(key: str) -> tuple[int, ...]:
        return tuple(int(v) for v in raw.get(key) or ())

    return QualitySpec(
        kind=cast(QualityKind, _choice(f"{where}, `kind`", raw.get("kind"), _QUALITY_KINDS)),
        aliases=tuple(str(a) for a in raw.get("aliases") or ()),
        gsd_m=_opt_float(raw.get("gsd_m")),
        nodata_values=ints("nodata_values"),
        cloud_values=ints("cloud_values"),
        nodata_bits=ints("nodata_bits"),
        cloud_bits=ints("cloud_bits"),
    )


def _parse_harmonize(where: str, raw: Mapping[str, Any]) -> HarmonizeSpec:
    _check_keys(where, raw, _HARMONIZE_KEYS)
    kind = _choice(f"{where}, `kind`", raw.get("kind"), ("s2_processing_baseline",))
    baseline = str(raw.get("min_baseline", ""))
    _baseline_tuple(baseline)
    date_raw = raw.get("baseline_date")
    date = None
    if date_raw is not None:
        try:
            date = parse_datetime(str(date_raw), f"{where}, `baseline_date`")
        except ValueError as err:
            raise SensorConfigError(str(err)) from None
    return HarmonizeSpec(kind=kind, min_baseline=baseline, dn_offset=int(raw.get("dn_offset", 0)), baseline_date=date)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)

"""Rule-based noisy segmentation labels from a chip's own bands: spectral-index thresholds in an editable YAML.

The rules (``pipeline/label_rules.yaml`` by default; docs/labels.md §Rule-based labels) name a class list, spectral
indices (normalised differences of two bands) and an ordered list of rules; the first rule whose conditions all hold
labels a pixel. Band values are physical (``stored * scale + offset`` from ``dataset.json``: reflectance for optical
bands, dB for SAR); invalid pixels, pixels no rule matches (``default: ignore``) and rules with class ``ignore`` give
:data:`pipeline.labels.IGNORE_INDEX`. ``scl`` is the Sentinel-2 scene classification, read from each chip's own SCL
asset (the shard's quality raster) with nearest resampling where the shard records one.

The label set is written like every other (:mod:`pipeline.labels`), with provenance ``noisy=True``, ``derived=True``
and the rules file's hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from pipeline.cog import redact_href
from pipeline.errors import LabelError
from pipeline.labels import IGNORE_INDEX, LabelSet, check_name, drop_ignored, write_label_table, written_index
from pipeline.manifest import OutputStore

__all__ = [
    "DEFAULT_RULES",
    "Condition",
    "LabelRules",
    "Rule",
    "apply_rules",
    "load_label_rules",
    "resolve_bands",
    "write_rule_labels",
]

DEFAULT_RULES = Path(__file__).with_name("label_rules.yaml")
SCL = "scl"  # the reserved variable: the Sentinel-2 L2A scene classification (docs/labels.md §Rule-based labels)
_OPS = ("gt", "ge", "lt", "le", "in")
_IGNORE = "ignore"


@dataclass(frozen=True)
class Condition:
    """``var`` compared with thresholds (all given ones must hold); ``isin`` for class rasters such as SCL."""

    var: str
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    isin: tuple[int, ...] | None = None

    def holds(self, value: np.ndarray) -> np.ndarray:
        """A ``(H, W)`` bool mask; NaN values never hold."""
        out = np.isfinite(value)
        if self.gt is not None:
            out &= value > self.gt
        if self.ge is not None:
            out &= value >= self.ge
        if self.lt is not None:
            out &= value < self.lt
        if self.le is not None:
            out &= value <= self.le
        if self.isin is not None:
            out &= np.isin(value, np.asarray(self.isin, np.float64))
        return out


@dataclass(frozen=True)
class Rule:
    """Pixels where every condition holds get ``target`` (a class index or ``IGNORE_INDEX``)."""

    target: int
    when: tuple[Condition, ...]


@dataclass(frozen=True)
class LabelRules:
    """A parsed rules file.

    Attributes:
        classes: class names; index ``i`` is ``classes[i]``.
        indices: index name -> the two band references of its normalised difference ``(a - b) / (a + b)``.
        rules: in the order they are tried.
        default: the value of pixels no rule matches (a class index or ``IGNORE_INDEX``).
        source: the file read.
        sha256: the file's hash (first 16 hex digits), recorded as provenance.
    """

    classes: tuple[str, ...]
    indices: dict[str, tuple[str, str]]
    rules: tuple[Rule, ...]
    default: int
    source: str
    sha256: str

    @property
    def band_refs(self) -> tuple[str, ...]:
        """The band references the rules need (index inputs and bands compared directly), in first-use order."""
        refs: dict[str, None] = {}
        for rule in self.rules:
            for cond in rule.when:
                if cond.var in self.indices:
                    refs.update(dict.fromkeys(self.indices[cond.var]))
                elif cond.var != SCL:
                    refs[cond.var] = None
        return tuple(refs)

    @property
    def uses_scl(self) -> bool:
        """Whether a rule reads the SCL scene classification."""
        return any(c.var == SCL for r in self.rules for c in r.when)


def _target(value: Any, classes: Sequence[str], where: str) -> int:
    if str(value) == _IGNORE:
        return IGNORE_INDEX
    if str(value) not in classes:
        raise LabelError(f"{where}: class {value!r} is not in classes {list(classes)} (nor `ignore`).")
    return list(classes).index(str(value))


def _condition(var: str, spec: Any, where: str) -> Condition:
    if not isinstance(spec, Mapping) or not spec or set(spec) - set(_OPS):
        raise LabelError(f"{where}: condition on {var!r} must be a mapping of {list(_OPS)}, got {spec!r}.")
    kwargs: dict[str, Any] = {}
    for op, value in spec.items():
        if op == "in":
            if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
                raise LabelError(f"{where}: `in` on {var!r} must be a list of integers, got {value!r}.")
            kwargs["isin"] = tuple(value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise LabelError(f"{where}: `{op}` on {var!r} must be a number, got {value!r}.")
        else:
            kwargs[op] = float(value)
    return Condition(var, **kwargs)


def load_label_rules(path: str | Path | None = None) -> LabelRules:
    """Parse a rules YAML (default :data:`DEFAULT_RULES`); see that file for the format.

    Raises:
        LabelError: the file cannot be read or is malformed (the message names the entry and what is allowed).
    """
    path = Path(path) if path is not None else DEFAULT_RULES
    try:
        data = path.read_bytes()
        raw = yaml.safe_load(data)
    except (OSError, yaml.YAMLError) as err:
        raise LabelError(f"Label rules {path} cannot be read: {err}") from err
    keys = {"classes", "indices", "rules", "default"}
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), list) or not isinstance(raw.get("rules"), list):
        raise LabelError(f"Label rules {path} must hold `classes: [names]` and `rules: [...]` (see {DEFAULT_RULES}).")
    if unknown := set(raw) - keys:
        raise LabelError(f"Label rules {path} has unknown keys {sorted(unknown)}; allowed: {sorted(keys)}.")
    classes = tuple(str(c) for c in raw["classes"])
    if len(set(classes)) != len(classes) or _IGNORE in classes or not 0 < len(classes) < IGNORE_INDEX:
        raise LabelError(f"Label rules {path}: classes {list(classes)} must be 1-254 distinct names other than ignore.")
    indices: dict[str, tuple[str, str]] = {}
    for name, spec in (raw.get("indices") or {}).items():
        pair = spec.get("normalized_difference") if isinstance(spec, Mapping) else None
        if set(spec or {}) != {"normalized_difference"} or not isinstance(pair, list) or len(pair) != 2:
            raise LabelError(f"Label rules {path}: index {name!r} must be `{{normalized_difference: [band, band]}}`.")
        if str(name) == SCL:
            raise LabelError(f"Label rules {path}: `{SCL}` is reserved for the scene classification; rename the index.")
        indices[str(name)] = (str(pair[0]), str(pair[1]))
    rules = []
    for i, entry in enumerate(raw["rules"]):
        where = f"Label rules {path}, rule {i}"
        if not isinstance(entry, Mapping) or set(entry) != {"class", "when"} or not isinstance(entry["when"], Mapping):
            raise LabelError(f"{where} must be `{{class: NAME | ignore, when: {{VAR: {{gt: x, ...}}}}}}`.")
        if not entry["when"]:
            raise LabelError(f"{where} has no condition; use `default:` for pixels no rule matches.")
        when = tuple(_condition(str(var), spec, where) for var, spec in entry["when"].items())
        rules.append(Rule(_target(entry["class"], classes, where), when))
    default = _target(raw.get("default", _IGNORE), classes, f"Label rules {path}, default")
    return LabelRules(classes, indices, tuple(rules), default, str(path), hashlib.sha256(data).hexdigest()[:16])


def resolve_bands(rules: LabelRules, bands: Sequence[str], band_meta: Sequence[Mapping[str, Any]],
                  where: str) -> dict[str, int]:
    """Channel index of every band reference of ``rules``: a band name, else a common name unique in ``bands``.

    Args:
        bands: the dataset's band names in channel order.
        band_meta: the sensor's per-band entries (``name``, ``common_name``), from ``dataset.json``.
        where: what the bands belong to, for messages (e.g. the collection).

    Raises:
        LabelError: a reference names no band, or a common name shared by several bands (the message lists them).
    """
    common = {str(m.get("name")): str(m.get("common_name") or "") for m in band_meta}
    out: dict[str, int] = {}
    for ref in rules.band_refs:
        if ref in bands:
            out[ref] = list(bands).index(ref)
            continue
        matches = [i for i, b in enumerate(bands) if common.get(b, "").lower() == ref.lower()]
        if len(matches) > 1:
            raise LabelError(
                f"Label rules {rules.source}: {ref!r} is the common name of several bands of {where} "
                f"{[bands[i] for i in matches]}; name one band instead."
            )
        if not matches:
            names = [f"{b} ({common[b]})" if common.get(b) else b for b in bands]
            raise LabelError(
                f"Label rules {rules.source} need band {ref!r}, which {where} lacks; its bands are {names}. Ingest "
                "the band (jobs/ingest.py --bands), label another collection (--collection), or edit the rules."
            )
        out[ref] = matches[0]
    return out


def apply_rules(rules: LabelRules, values: Mapping[str, np.ndarray], valid: np.ndarray) -> np.ndarray:
    """A ``(H, W)`` uint8 mask from physical band values (keyed by the rules' band references).

    Args:
        values: ``(H, W)`` float arrays per band reference, plus ``"scl"`` when the chip has a scene classification
            (NaN where it is unknown); rules on a missing ``scl`` never match.
        valid: ``(H, W)`` bool, False where the chip has no data (always ``IGNORE_INDEX``).
    """
    variables = dict(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, (a, b) in rules.indices.items():
            variables[name] = (values[a] - values[b]) / (values[a] + values[b])  # 0/0 -> NaN: no rule holds
    mask = np.full(valid.shape, rules.default, np.uint8)
    decided = ~valid
    mask[decided] = IGNORE_INDEX
    for rule in rules.rules:
        if any(c.var not in variables for c in rule.when):
            continue  # a rule on scl, for a chip without one
        hit = ~decided
        for cond in rule.when:
            hit &= cond.holds(variables[cond.var])
        mask[hit] = rule.target
        decided |= hit
    return mask


class _SclReader:
    """Each chip's SCL scene classification, read onto its grid (nearest) from its shard's quality asset."""

    def __init__(self, store: OutputStore) -> None:
        self.store = store
        self.hrefs: dict[str, str | None] = {}
        self.readers: dict[str, Any] = {}

    def _href(self, shard: str) -> str | None:
        if shard not in self.hrefs:
            from pipeline.shards import shard_metadata

            meta = shard_metadata(self.store.path(shard), self.store.filesystem)
            quality = meta.get("quality") or {}
            href = (meta.get("lineage") or {}).get("quality_asset")
            self.hrefs[shard] = href if quality.get("kind") == "scl" and href else None
        return self.hrefs[shard]

    def read(self, shard: str, chip: Mapping[str, Any]) -> np.ndarray | None:
        """``(H, W)`` float64 SCL classes (NaN outside the asset), or None when the shard records no SCL."""
        from affine import Affine

        from pipeline.cog import AssetReader
        from pipeline.errors import RasterReadError
        from pipeline.grid import PixelGrid

        href = self._href(shard)
        if href is None:
            return None
        if href not in self.readers:
            try:
                self.readers[href] = AssetReader(href)
            except RasterReadError as err:
                raise LabelError(
                    f"The SCL asset {redact_href(href)} of {shard} cannot be read ({err}); rules on `scl` read each "
                    "chip's own SCL. Make it readable (a signed URL expires), or drop the `scl` rules."
                ) from err
        _, height, width = chip["image"].shape
        target = PixelGrid(int(chip["crs"].split(":")[1]), Affine(*chip["transform"]), width, height)
        data, covered = self.readers[href].read((1,), target, resampling="nearest", fill_value=0)
        return np.where(covered, data[0].astype(np.float64), np.nan)

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


def _physical(image: np.ndarray, band_meta: Mapping[str, Mapping[str, Any]], bands: Sequence[str],
              channels: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Band reference -> ``(H, W)`` float64 ``stored * scale + offset`` (docs/data-format.md §Pixel encoding)."""
    out = {}
    for ref, c in channels.items():
        meta = band_meta.get(bands[c], {})
        scale = float(meta.get("scale") if meta.get("scale") is not None else 1.0)
        offset = float(meta.get("offset") if meta.get("offset") is not None else 0.0)
        out[ref] = image[c].astype(np.float64) * scale + offset
    return out


def write_rule_labels(
    dataset_dir: str,
    name: str,
    *,
    rules_file: str | Path | None = None,
    collection: str | None = None,
    max_ignored: float | None = 0.5,
    s3_endpoint: str | None = None,
) -> LabelSet:
    """Label every written chip from its own bands with the rules of ``rules_file`` (a segmentation label set).

    Without ``collection`` every collection that has the bands the rules need is labelled (the others are listed in
    the provenance as skipped, with the reason).

    Args:
        rules_file: the rules YAML; default :data:`DEFAULT_RULES`.
        max_ignored: chips with a larger fraction of ignored pixels are dropped (None keeps every chip).

    Raises:
        LabelError: malformed rules, a rule needs a band the collection lacks, or no chip is left.
    """
    from pipeline.dataset import load_chips, read_dataset_json

    check_name(name)
    rules = load_label_rules(rules_file)
    store = OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint)
    meta = read_dataset_json(dataset_dir, s3_endpoint=s3_endpoint)
    entries = {c: e for c, e in (meta.get("collections") or {}).items() if e.get("shards")}
    if collection is not None and collection not in entries:
        raise LabelError(f"{store.uri} has no written chip of collection {collection!r}; it holds {sorted(entries)}.")
    plans: dict[str, dict[str, int]] = {}
    skipped: dict[str, str] = {}
    for c in [collection] if collection is not None else sorted(entries):
        entry = entries[c]
        try:
            plans[c] = resolve_bands(rules, entry["bands"], (entry.get("sensor") or {}).get("bands") or [],
                                     f"collection {c!r}")
        except LabelError as err:
            if collection is not None:
                raise
            skipped[c] = str(err)
    if not plans:
        raise LabelError(f"No collection of {store.uri} has the bands the rules need: " + " ".join(skipped.values()))
    ids: list[str] = []
    masks: list[bytes] = []
    shapes: list[list[int]] = []
    dropped = scl_chips = 0
    scl = _SclReader(store) if rules.uses_scl else None
    try:
        for c, channels in plans.items():
            entry = entries[c]
            band_meta = {str(m.get("name")): m for m in (entry.get("sensor") or {}).get("bands") or []}
            index = written_index(store, c)
            main = set(entry["shards"])  # the collection's band set (items with another set are excluded)
            shard_of = {cid: s for cid, s in zip(index["chip_id"].to_pylist(), index["shard_path"].to_pylist(),
                                                  strict=True) if s in main}
            for chip in load_chips(dataset_dir, list(shard_of), collection=c, s3_endpoint=s3_endpoint):
                values = _physical(chip["image"], band_meta, chip["bands"], channels)
                if scl is not None and (scene := scl.read(shard_of[chip["chip_id"]], chip)) is not None:
                    values[SCL] = scene
                    scl_chips += 1
                mask = apply_rules(rules, values, chip["valid"])
                if drop_ignored(mask, max_ignored):
                    dropped += 1
                    continue
                ids.append(chip["chip_id"])
                masks.append(mask.tobytes())
                shapes.append(list(mask.shape))
    finally:
        if scl is not None:
            scl.close()
    if not ids:
        raise LabelError(
            f"The rules {rules.source} left no chip of {store.uri} with at most {max_ignored:.0%} ignored pixels "
            f"({dropped} dropped); relax the rules or raise --max-ignored."
        )
    table = pa.table({
        "chip_id": pa.array(ids, pa.string()),
        "mask": pa.array(masks, pa.binary()),
        "mask_shape": pa.array(shapes, pa.list_(pa.int32(), 2)),
    })
    provenance = {
        "source": f"rules {redact_href(rules.source)}", "rules": rules.sha256, "derived": True, "noisy": True,
        "max_ignored": max_ignored, "dropped_ignored": dropped, "collections": sorted(plans),
        "skipped_collections": skipped, "scl_chips": scl_chips if rules.uses_scl else None,
    }
    label_set = LabelSet(name=name, kind="segmentation", classes=list(rules.classes), collection=collection,
                         provenance=provenance)
    return write_label_table(store, label_set, table)

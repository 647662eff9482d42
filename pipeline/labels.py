"""Labels for an ingested dataset, stored as side tables keyed by chip id (docs/labels.md).

A label set lives at ``DATASET/labels/<name>/labels.parquet`` with ``labels.json`` beside it (kind, class list,
ignore index, provenance). The chips' own shards are never rewritten, so one ingest can carry several label sets
(real and derived, clean and noisy) and a label set can be rebuilt without re-reading any image.

Kinds and their columns (besides ``chip_id``):

- ``classification``: ``label`` int32, a class index.
- ``multilabel``: ``labels`` fixed-size list of uint8, multi-hot over the class list.
- ``segmentation``: ``mask`` raw uint8 bytes ``(H, W)`` on the chip's pixel grid, ``ignore_index`` where unlabelled.
- ``change``: the *after* chip's ``chip_id`` plus ``before_chip_id`` (same grid cell, an earlier date) and, with a
  change raster, ``mask`` (1 changed, 0 unchanged, ``ignore_index`` unknown).
- ``detection``: ``boxes``, a list of ``{xmin, ymin, xmax, ymax}`` in chip pixels plus ``box_labels`` int32.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.cog import redact_href
from pipeline.errors import LabelError
from pipeline.manifest import OutputStore

__all__ = [
    "IGNORE_INDEX",
    "LabelKind",
    "LabelSet",
    "check_name",
    "decode_masks",
    "drop_ignored",
    "load_class_remap",
    "read_labels",
    "resolve_raster_source",
    "write_box_labels",
    "write_change_pairs",
    "write_label_table",
    "write_majority_labels",
    "write_raster_labels",
    "write_scene_labels",
    "written_index",
]

LabelKind = Literal["classification", "multilabel", "segmentation", "change", "detection"]
IGNORE_INDEX = 255
LABELS_FORMAT = "rsvheat-labels"
LABELS_FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BOX = pa.struct([("xmin", pa.float32()), ("ymin", pa.float32()), ("xmax", pa.float32()), ("ymax", pa.float32())])


@dataclass(frozen=True)
class LabelSet:
    """What ``labels.json`` says about one label set.

    Attributes:
        name: the set's name (``labels/<name>/``).
        kind: see the module docstring.
        classes: class names; index ``i`` is class ``classes[i]``.
        ignore_index: the value of unlabelled pixels in masks.
        chips: labelled chips.
        provenance: where the labels came from: ``source`` (redacted href or item property), ``derived`` (True when
            the labels are made by a rule rather than given by a person or a product), ``noisy``, notes.
        collection: the collection labelled, if one.
    """

    name: str
    kind: LabelKind
    classes: list[str]
    ignore_index: int = IGNORE_INDEX
    chips: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    collection: str | None = None


# ------------------------------------------------------------------------------------------------- common plumbing


def check_name(name: str) -> None:
    """Refuse a label set name that could not be a single folder name."""
    if not _NAME.match(name):
        raise LabelError(f"Label set name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (it names a folder).")


def written_index(store: OutputStore, collection: str | None) -> pa.Table:
    """The written chips (of ``collection``), or a :class:`LabelError` naming the collections there are."""
    from pipeline.dataset import read_index

    index = read_index(store, collection)
    if collection is not None and index.num_rows == 0:
        held = sorted(set(read_index(store, None)["collection"].to_pylist()))
        raise LabelError(f"{store.uri} has no written chip of collection {collection!r}; it holds {held}.")
    return index


def write_label_table(store: OutputStore, label_set: LabelSet, table: pa.Table) -> LabelSet:
    """Write ``labels.parquet`` (sorted by chip id) and ``labels.json``; returns the set with its chip count."""
    if table.num_rows == 0:
        raise LabelError(f"Label set {label_set.name!r} would label no chip of {store.uri}; nothing was written.")
    final = LabelSet(**{**asdict(label_set), "chips": table.num_rows})
    meta = {"format": LABELS_FORMAT, "format_version": LABELS_FORMAT_VERSION, **asdict(final),
            "created": datetime.now(UTC).isoformat(timespec="seconds")}
    store.write_table(f"labels/{final.name}/labels.parquet", table.sort_by("chip_id"))
    store.write_bytes(f"labels/{final.name}/labels.json", json.dumps(meta, indent=2, sort_keys=True).encode())
    return final


def drop_ignored(mask: np.ndarray, max_ignored: float | None) -> bool:
    """Whether a chip's mask has more than ``max_ignored`` (a fraction) ignored pixels; None keeps every chip."""
    if max_ignored is None:
        return False
    return float(np.mean(mask == IGNORE_INDEX)) > max_ignored


def read_labels(dataset_dir: str, name: str, *, s3_endpoint: str | None = None) -> tuple[pa.Table, LabelSet]:
    """A label set's table (keyed by ``chip_id``) and its description.

    Raises:
        LabelError: no such label set; the message lists the ones the dataset has.
    """
    check_name(name)
    store = OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint)
    if not store.exists(f"labels/{name}/labels.json"):
        have = sorted({p.split("/")[1] for p in store.list_files("labels", "labels.json")})
        raise LabelError(f"{store.uri} has no label set {name!r}; it has {have or 'none'} (see jobs/labels.py).")
    meta = json.loads(store.read_bytes(f"labels/{name}/labels.json"))
    if meta.get("format") != LABELS_FORMAT or meta.get("format_version") != LABELS_FORMAT_VERSION:
        raise LabelError(
            f"labels/{name}/labels.json of {store.uri} has format {meta.get('format')!r} version "
            f"{meta.get('format_version')!r}; this rsvheat reads {LABELS_FORMAT!r} version {LABELS_FORMAT_VERSION}."
        )
    fields = {f for f in LabelSet.__dataclass_fields__}
    label_set = LabelSet(**{k: v for k, v in meta.items() if k in fields})
    with store.filesystem.open_input_file(store.path(f"labels/{name}/labels.parquet")) as handle:
        return pq.read_table(handle), label_set


def load_class_remap(path: str | os.PathLike[str]) -> tuple[list[str], dict[int, int]]:
    """A class-remap YAML: ``classes: [name, ...]`` and ``remap: {source value: class name | ignore}``.

    Returns:
        The class list and ``source value → class index`` (``IGNORE_INDEX`` for ``ignore``).

    Raises:
        LabelError: malformed file, or a remap target that is not in ``classes``.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise LabelError(f"Class remap {path} cannot be read: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), list) or not isinstance(raw.get("remap"), dict):
        raise LabelError(f"Class remap {path} must hold `classes: [names]` and `remap: {{value: name|ignore}}`.")
    classes = [str(c) for c in raw["classes"]]
    index = {c: i for i, c in enumerate(classes)}
    remap: dict[int, int] = {}
    for value, target in raw["remap"].items():
        if str(target) == "ignore":
            remap[int(value)] = IGNORE_INDEX
        elif str(target) in index:
            remap[int(value)] = index[str(target)]
        else:
            raise LabelError(f"Class remap {path}: value {value} maps to {target!r}, not one of classes {classes}.")
    return classes, remap


# -------------------------------------------------------------------------------------------------- scene labels


def _snapshot_items(store: OutputStore) -> dict[str, dict[str, Any]]:
    """The latest snapshot copy of every item the dataset's runs searched, by item id."""
    items: dict[str, dict[str, Any]] = {}
    for rel in store.list_files("snapshots", ".ndjson"):  # names sort by run time: later runs win
        for line in store.read_bytes(rel).decode().splitlines():
            if line.strip():
                item = json.loads(line)
                items[str(item.get("id"))] = item
    return items


def write_scene_labels(
    dataset_dir: str,
    name: str,
    *,
    property: str,
    multilabel: bool = True,
    classes: Sequence[str] | None = None,
    collection: str | None = None,
    items: Iterable[Mapping[str, Any]] | None = None,
    s3_endpoint: str | None = None,
) -> LabelSet:
    """Label every written chip with its item's classes, read from an item property (e.g. ``bigearthnet:labels``).

    Args:
        property: the STAC item property holding a class name (or a list of names for multi-label).
        multilabel: multi-hot ``labels`` (True) or a single ``label`` (the property must then hold one name).
        classes: the class list (order = index); default: every value found, sorted.
        items: the STAC items; default: the dataset's own search snapshots.

    Raises:
        LabelError: an item lacks the property, a value is not in ``classes``, or no chip could be labelled.
    """
    check_name(name)
    store = OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint)
    index = written_index(store, collection)
    by_id = {str(i.get("id")): dict(i) for i in items} if items is not None else _snapshot_items(store)
    chip_ids = index["chip_id"].to_pylist()
    item_ids = index["item_id"].to_pylist()
    values: dict[str, list[str]] = {}
    for item_id in sorted(set(item_ids)):
        item = by_id.get(item_id)
        if item is None or property not in (item.get("properties") or {}):
            raise LabelError(
                f"Item {item_id!r} has no property {property!r}"
                + ("" if item is not None else " (it is not in the items given or the dataset's snapshots)")
                + "; every labelled item needs one. Label only the collection that has it (--collection)."
            )
        raw = item["properties"][property]
        found = [str(v) for v in raw] if isinstance(raw, list) else [str(raw)]
        if not multilabel and len(found) != 1:
            raise LabelError(f"Item {item_id!r} has {len(found)} values in {property!r}; single-label needs exactly 1.")
        values[item_id] = found
    class_list = list(classes) if classes is not None else sorted({v for vs in values.values() for v in vs})
    position = {c: i for i, c in enumerate(class_list)}
    unknown = sorted({v for vs in values.values() for v in vs} - set(position))
    if unknown:
        raise LabelError(f"Values {unknown} of {property!r} are not in the class list {class_list}; add or remap them.")
    if multilabel:
        hot = np.zeros((len(chip_ids), len(class_list)), np.uint8)
        for row, item_id in enumerate(item_ids):
            hot[row, [position[v] for v in values[item_id]]] = 1
        column = pa.FixedSizeListArray.from_arrays(pa.array(hot.reshape(-1)), len(class_list))  # (N*K,) -> (N, K)
        table = pa.table({"chip_id": pa.array(chip_ids, pa.string()), "labels": column})
    else:
        labels = [position[values[i][0]] for i in item_ids]
        table = pa.table({"chip_id": pa.array(chip_ids, pa.string()), "label": pa.array(labels, pa.int32())})
    label_set = LabelSet(
        name=name, kind="multilabel" if multilabel else "classification", classes=class_list, collection=collection,
        provenance={"source": f"item property {property!r}", "derived": False, "noisy": False},
    )
    return write_label_table(store, label_set, table)


# ------------------------------------------------------------------------------------------------ raster labels


@dataclass(frozen=True)
class _ChipGrid:
    chip_id: str
    epsg: int
    transform: tuple[float, ...]
    height: int
    width: int


def _chip_grids(store: OutputStore, index: pa.Table) -> list[_ChipGrid]:
    """Each written chip's pixel grid, from its shard's scalar columns (no pixels are read)."""
    wanted = set(index["chip_id"].to_pylist())
    grids: list[_ChipGrid] = []
    for shard in sorted(set(index["shard_path"].to_pylist())):
        with store.filesystem.open_input_file(store.path(shard)) as handle:
            table = pq.read_table(handle, columns=["chip_id", "crs_epsg", "transform", "shape"])
        for row in table.to_pylist():
            if row["chip_id"] in wanted:
                _, height, width = row["shape"]
                grids.append(_ChipGrid(row["chip_id"], int(row["crs_epsg"]), tuple(row["transform"]), height, width))
    return grids


def _open_label_raster(href: str) -> Any:
    from pipeline.cog import AssetReader
    from pipeline.errors import CRSNotFoundError, RasterReadError

    try:
        return AssetReader(href)
    except CRSNotFoundError as err:
        raise LabelError(
            f"Label raster {redact_href(href)} is not in a projected, metric CRS ({err}); reproject it to the chips' "
            "UTM zone (e.g. gdalwarp -t_srs EPSG:326xx -r near) so classes are not blended."
        ) from err
    except RasterReadError as err:
        raise LabelError(f"Label raster {redact_href(href)} cannot be opened: {err}") from err


def _read_on_chips(
    href: str, grids: Sequence[_ChipGrid], remap: Mapping[int, int] | None, num_classes: int, ignore_index: int
) -> tuple[list[str], list[bytes], set[int]]:
    """Nearest-neighbour reads of a class raster onto each chip grid; remapped; unknown ids collected."""
    from affine import Affine

    from pipeline.grid import PixelGrid

    reader = _open_label_raster(href)
    ids: list[str] = []
    masks: list[bytes] = []
    unknown: set[int] = set()
    nodata = reader.nodata  # the label file's own nodata: unlabelled
    try:
        for grid in grids:
            target = PixelGrid(grid.epsg, Affine(*grid.transform), grid.width, grid.height)
            left, bottom, right, top = target.bounds
            sl, sb, sr, st = reader.grid.bounds
            if reader.epsg == grid.epsg and (min(right, sr) <= max(left, sl) or min(top, st) <= max(bottom, sb)):
                continue  # no overlap: this chip is not labelled by this raster
            data, covered = reader.read((1,), target, resampling="nearest", fill_value=nodata)
            if not covered.any():
                continue
            raw = data[0].astype(np.int64)
            labelled = covered if nodata is None or math.isnan(nodata) else covered & (raw != int(nodata))
            mask = np.full(raw.shape, ignore_index, np.uint8)
            values = raw[labelled]
            if remap is not None:
                lut_keys = np.fromiter(remap.keys(), np.int64)
                unknown |= set(np.setdiff1d(np.unique(values), lut_keys).tolist())
                mapped = np.full(values.shape, ignore_index, np.int64)
                for source, target_class in remap.items():
                    mapped[values == source] = target_class
                values = mapped
            else:
                bad = np.unique(values[(values < 0) | (values >= num_classes)])
                unknown |= set(bad.tolist())
                values = np.where((values >= 0) & (values < num_classes), values, ignore_index)
            mask[labelled] = values.astype(np.uint8)
            ids.append(grid.chip_id)
            masks.append(mask.tobytes())
    finally:
        reader.close()
    return ids, masks, unknown


def write_raster_labels(
    dataset_dir: str,
    name: str,
    *,
    raster: str,
    classes: Sequence[str] | None = None,
    remap_file: str | None = None,
    collection: str | None = None,
    noisy: bool = False,
    derived: bool = False,
    max_ignored: float | None = None,
    asset: str | None = None,
    s3_endpoint: str | None = None,
) -> LabelSet:
    """Co-register a class raster (GeoTIFF/COG) to every written chip it covers: nearest resampling, masks of uint8.

    The raster's nodata becomes ``IGNORE_INDEX``. With ``remap_file`` (see :func:`load_class_remap`) every value in
    the raster must be listed (the remap is total); without it the raster holds class indices ``0..len(classes)-1``.

    Args:
        raster: the GeoTIFF/COG, or a STAC item JSON whose ``asset`` (or only raster asset) is read.
        max_ignored: chips with a larger fraction of ignored pixels are dropped (None keeps every covered chip).
        asset: the asset key when ``raster`` is a STAC item.

    Raises:
        LabelError: the raster is not in a projected CRS, covers no chip, or holds values the class list does not
            name (the message lists them).
    """
    check_name(name)
    if (classes is None) == (remap_file is None):
        raise LabelError("Give the class list either as classes=[...] (raster holds indices) or in a remap file.")
    remap: dict[int, int] | None = None
    if remap_file is not None:
        class_list, remap = load_class_remap(remap_file)
    else:
        class_list = list(classes or [])
    if len(class_list) >= IGNORE_INDEX:
        raise LabelError(f"{len(class_list)} classes do not fit uint8 masks with ignore index {IGNORE_INDEX}.")
    store = OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint)
    grids = _chip_grids(store, written_index(store, collection))
    source = raster
    raster = resolve_raster_source(raster, asset)
    ids, masks, unknown = _read_on_chips(raster, grids, remap, len(class_list), IGNORE_INDEX)
    if unknown:
        where = f"the remap {remap_file}" if remap_file else f"the {len(class_list)} classes {class_list}"
        raise LabelError(
            f"Label raster {redact_href(raster)} holds values {sorted(unknown)[:20]} that {where} do not name; a "
            "remap must be total: map each value to a class or to `ignore`."
        )
    if not ids:
        raise LabelError(
            f"Label raster {redact_href(raster)} covers no written chip of {store.uri}"
            f"{f' (collection {collection!r})' if collection else ''}; check its extent and CRS against index.parquet."
        )
    shapes = {g.chip_id: (g.height, g.width) for g in grids}
    keep = [k for k, m in enumerate(masks) if not drop_ignored(np.frombuffer(m, np.uint8), max_ignored)]
    if not keep:
        raise LabelError(
            f"Every chip that {redact_href(raster)} covers has more than {max_ignored:.0%} ignored pixels; raise "
            "--max-ignored or check the remap (which values map to `ignore`)."
        )
    table = pa.table({
        "chip_id": pa.array([ids[k] for k in keep], pa.string()),
        "mask": pa.array([masks[k] for k in keep], pa.binary()),
        "mask_shape": pa.array([list(shapes[ids[k]]) for k in keep], pa.list_(pa.int32(), 2)),
    })
    provenance = {"source": redact_href(source), "remap": _file_hash(remap_file), "derived": derived, "noisy": noisy,
                  "max_ignored": max_ignored, "dropped_ignored": len(ids) - len(keep)}
    if raster != source:
        provenance["asset"] = redact_href(raster)
    label_set = LabelSet(name=name, kind="segmentation", classes=class_list, collection=collection,
                         provenance=provenance)
    return write_label_table(store, label_set, table)


def resolve_raster_source(raster: str, asset: str | None = None) -> str:
    """The raster href of a label source: ``raster`` itself, or the asset of a STAC item JSON (``*.json``).

    Without ``asset`` the item must have exactly one GeoTIFF asset (or one asset with role ``data``).

    Raises:
        LabelError: the item cannot be read, is not one item, or the asset is missing or ambiguous.
    """
    if not raster.split("?", 1)[0].endswith(".json"):
        if asset is not None:
            raise LabelError(f"--asset {asset!r} applies to a STAC item (*.json), not to {redact_href(raster)}.")
        return raster
    from pipeline.errors import InvalidItemError
    from pipeline.stac import read_catalog

    try:
        items = read_catalog(raster).items
    except InvalidItemError as err:
        raise LabelError(f"Label source {redact_href(raster)} cannot be read as a STAC item: {err}") from err
    if len(items) != 1:
        raise LabelError(f"Label source {redact_href(raster)} holds {len(items)} STAC items; point at one item.")
    assets = items[0].get("assets") or {}
    if asset is None:
        tiffs = [k for k, a in assets.items() if "tiff" in str(a.get("type", "")).lower()]
        data = [k for k, a in assets.items() if "data" in (a.get("roles") or [])]
        candidates = tiffs if len(tiffs) == 1 else data
        if len(candidates) != 1:
            raise LabelError(
                f"STAC item {items[0].get('id')!r} has assets {sorted(assets)}; name the class raster with --asset."
            )
        asset = candidates[0]
    if asset not in assets:
        raise LabelError(f"STAC item {items[0].get('id')!r} has no asset {asset!r}; it has {sorted(assets)}.")
    return str(assets[asset]["href"])


def _file_hash(path: str | None) -> str | None:
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def decode_masks(table: pa.Table) -> np.ndarray:
    """``(N, H, W)`` uint8 masks of a segmentation or change label table (zero-copy per row)."""
    shapes = {tuple(s) for s in table["mask_shape"].to_pylist()}
    if len(shapes) != 1:
        raise LabelError(f"Label masks have several shapes {sorted(shapes)}; one label set holds one chip size.")
    (height, width), = shapes
    buffers = [np.frombuffer(b, np.uint8) for b in table["mask"].to_pylist()]
    return np.stack(buffers).reshape(len(buffers), height, width)  # (N, H*W) -> (N, H, W)


def write_majority_labels(
    dataset_dir: str,
    name: str,
    *,
    source: str,
    min_fraction: float = 0.5,
    s3_endpoint: str | None = None,
) -> LabelSet:
    """Chip classes from a segmentation label set: each chip's most frequent labelled class.

    A chip is labelled only when that class covers at least ``min_fraction`` of its labelled pixels (mixed chips are
    left out, not forced into a class). Provenance records the source set, and ``derived`` is True.

    Raises:
        LabelError: ``source`` is not a segmentation set, or no chip is dominated by one class.
    """
    check_name(name)
    table, source_set = read_labels(dataset_dir, source, s3_endpoint=s3_endpoint)
    if source_set.kind != "segmentation":
        raise LabelError(f"Label set {source!r} is {source_set.kind!r}; majority labels need a segmentation set.")
    masks = decode_masks(table)  # (N, H, W)
    k = len(source_set.classes)
    counts = np.stack([(masks == c).sum(axis=(1, 2)) for c in range(k)], axis=1)  # (N, K)
    labelled = counts.sum(axis=1)
    winner = counts.argmax(axis=1)
    share = counts.max(axis=1) / np.maximum(labelled, 1)
    keep = (labelled > 0) & (share >= min_fraction)
    chip_ids = [c for c, ok in zip(table["chip_id"].to_pylist(), keep, strict=True) if ok]
    if not chip_ids:
        raise LabelError(f"No chip of label set {source!r} has one class on >= {min_fraction:.0%} of its pixels.")
    out = pa.table({"chip_id": pa.array(chip_ids, pa.string()), "label": pa.array(winner[keep], pa.int32())})
    label_set = LabelSet(
        name=name, kind="classification", classes=list(source_set.classes), collection=source_set.collection,
        provenance={"source": f"majority class of label set {source!r}", "derived": True,
                    "noisy": bool(source_set.provenance.get("noisy")), "min_fraction": min_fraction,
                    "source_provenance": dict(source_set.provenance)},
    )
    store = OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint)
    return write_label_table(store, label_set, out)


# ------------------------------------------------------------------------------------------------ change pairs


def write_change_pairs(
    dataset_dir: str,
    name: str,
    *,
    collection: str,
    change_raster: str | None = None,
    max_days: float | None = None,
    s3_endpoint: str | None = None,
) -> LabelSet:
    """Bi-temporal pairs from the chip index: each chip and the latest earlier chip of the same grid cell.

    With ``change_raster`` (1 = changed, 0 = unchanged, its nodata = unknown) each pair also gets a co-registered
    change mask on the after chip's grid; pairs the raster does not cover are left out.

    Raises:
        LabelError: no grid cell of ``collection`` has two dates (within ``max_days``).
    """
    check_name(name)
    store = OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint)
    written = written_index(store, collection)
    index = written.select(["chip_id", "grid_cell", "datetime", "shard_path"])
    rows = sorted(index.to_pylist(), key=lambda r: (r["grid_cell"], r["datetime"], r["chip_id"]))
    after_ids: list[str] = []
    before_ids: list[str] = []
    for prev, cur in itertools.pairwise(rows):
        if prev["grid_cell"] != cur["grid_cell"] or prev["datetime"] == cur["datetime"]:
            continue
        gap = (cur["datetime"] - prev["datetime"]).total_seconds() / 86400.0
        if max_days is None or gap <= max_days:
            after_ids.append(cur["chip_id"])
            before_ids.append(prev["chip_id"])
    if not after_ids:
        raise LabelError(
            f"No grid cell of collection {collection!r} in {store.uri} has chips of two dates"
            f"{f' within {max_days} days' if max_days is not None else ''}; change pairs need repeat acquisitions "
            "on one tile grid."
        )
    columns: dict[str, Any] = {"chip_id": after_ids, "before_chip_id": before_ids}
    provenance: dict[str, Any] = {"source": "chip index (same grid_cell, earlier date)", "derived": True,
                                  "noisy": False, "max_days": max_days}
    if change_raster is not None:
        after = set(after_ids)
        grids = [g for g in _chip_grids(store, written) if g.chip_id in after]
        ids, masks, unknown = _read_on_chips(change_raster, grids, None, 2, IGNORE_INDEX)
        if unknown:
            raise LabelError(
                f"Change raster {redact_href(change_raster)} holds values {sorted(unknown)[:20]}; expected 0 "
                "(unchanged), 1 (changed) or its nodata."
            )
        if not ids:
            raise LabelError(f"Change raster {redact_href(change_raster)} covers no pair's after chip.")
        keep = {c: i for i, c in enumerate(ids)}
        pairs = [(a, b) for a, b in zip(after_ids, before_ids, strict=True) if a in keep]
        shapes = {g.chip_id: (g.height, g.width) for g in grids}
        columns = {
            "chip_id": [a for a, _ in pairs],
            "before_chip_id": [b for _, b in pairs],
            "mask": pa.array([masks[keep[a]] for a, _ in pairs], pa.binary()),
            "mask_shape": pa.array([list(shapes[a]) for a, _ in pairs], pa.list_(pa.int32(), 2)),
        }
        provenance["change_mask"] = redact_href(change_raster)
    table = pa.table(columns)
    label_set = LabelSet(name=name, kind="change", classes=["unchanged", "changed"], collection=collection,
                         provenance=provenance)
    return write_label_table(store, label_set, table)


# ----------------------------------------------------------------------------------------------------- boxes


def write_box_labels(
    dataset_dir: str,
    name: str,
    *,
    geojson: str,
    class_property: str,
    classes: Sequence[str],
    collection: str | None = None,
    min_pixels: float = 2.0,
    min_visible: float = 0.3,
    s3_endpoint: str | None = None,
) -> LabelSet:
    """Object boxes from a GeoJSON FeatureCollection (CRS84) as pixel boxes per chip, clipped to the chip.

    A box keeps a chip only if its clipped part is at least ``min_pixels`` wide and high and at least ``min_visible``
    of its area inside the chip (tiny leftovers at chip edges are dropped). Chips without a box are labelled with an
    empty list (background chips are training signal for a detector).

    Raises:
        LabelError: a feature has no ``class_property`` or a class outside ``classes``, or no box lands on a chip.
    """
    import shapely
    from pyproj import Transformer
    from shapely.geometry import shape

    check_name(name)
    try:
        collection_json = json.loads(Path(geojson).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LabelError(f"Box file {geojson} cannot be read as GeoJSON: {err}") from err
    features = collection_json.get("features") if isinstance(collection_json, dict) else None
    if not isinstance(features, list):
        raise LabelError(f"Box file {geojson} is not a GeoJSON FeatureCollection (no `features` list).")
    crs = (collection_json.get("crs") or {}).get("properties", {}).get("name")
    if crs not in (None, "urn:ogc:def:crs:OGC:1.3:CRS84", "EPSG:4326", "urn:ogc:def:crs:EPSG::4326"):
        raise LabelError(f"Box file {geojson} declares CRS {crs!r}; GeoJSON boxes must be in CRS84 (RFC 7946).")
    position = {c: i for i, c in enumerate(classes)}
    shapes: list[tuple[Any, int]] = []
    for k, feature in enumerate(features):
        props = feature.get("properties") or {}
        value = props.get(class_property)
        if value is None:
            raise LabelError(f"Feature {k} of {geojson} has no property {class_property!r}.")
        if str(value) not in position:
            raise LabelError(f"Feature {k} of {geojson} has class {value!r}, not in the class list {list(classes)}.")
        shapes.append((shape(feature["geometry"]), position[str(value)]))
    store = OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint)
    grids = _chip_grids(store, written_index(store, collection))
    in_utm: dict[int, list[tuple[tuple[float, float, float, float], int]]] = {}  # per zone: each box reprojected once
    ids: list[str] = []
    boxes: list[list[dict[str, float]]] = []
    box_labels: list[list[int]] = []
    placed = 0
    for grid in grids:
        if grid.epsg not in in_utm:
            t = Transformer.from_crs("OGC:CRS84", grid.epsg, always_xy=True)
            in_utm[grid.epsg] = [
                (shapely.transform(g, lambda xy, t=t: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))).bounds, label)
                for g, label in shapes
            ]
        a, _, c, _, e, f = grid.transform
        chip_boxes: list[dict[str, float]] = []
        chip_labels: list[int] = []
        for (x0, y0, x1, y1), label in in_utm[grid.epsg]:  # UTM metres
            px0, px1 = (x0 - c) / a, (x1 - c) / a  # columns
            py0, py1 = (y1 - f) / e, (y0 - f) / e  # rows (e < 0: the top edge is the larger northing)
            full = max(px1 - px0, 0.0) * max(py1 - py0, 0.0)
            cx0, cy0 = max(px0, 0.0), max(py0, 0.0)
            cx1, cy1 = min(px1, float(grid.width)), min(py1, float(grid.height))
            if cx1 - cx0 < min_pixels or cy1 - cy0 < min_pixels:
                continue
            if full > 0 and (cx1 - cx0) * (cy1 - cy0) / full < min_visible:
                continue
            chip_boxes.append({"xmin": cx0, "ymin": cy0, "xmax": cx1, "ymax": cy1})
            chip_labels.append(label)
        ids.append(grid.chip_id)
        boxes.append(chip_boxes)
        box_labels.append(chip_labels)
        placed += len(chip_boxes)
    if placed == 0:
        raise LabelError(f"No box of {geojson} lands on a written chip of {store.uri}; check its extent (CRS84).")
    table = pa.table({
        "chip_id": pa.array(ids, pa.string()),
        "boxes": pa.array(boxes, pa.list_(_BOX)),
        "box_labels": pa.array(box_labels, pa.list_(pa.int32())),
    })
    label_set = LabelSet(
        name=name, kind="detection", classes=list(classes), collection=collection,
        provenance={"source": redact_href(str(geojson)), "class_property": class_property, "derived": False,
                    "noisy": False, "min_pixels": min_pixels, "min_visible": min_visible},
    )
    return write_label_table(store, label_set, table)

"""Fine-tuning data: a label set joined to the chip feed, split into spatially separated train and val sets.

The plan (:class:`TaskData`) is made on the driver from ``dataset.json``, ``index.parquet`` and the label set's
``labels.json`` / ``labels.parquet`` (docs/finetune-job.md "Data"). It is plain data, so it travels to the trial
and worker processes in ``train_loop_config``.

**Split.** Chips are grouped into square spatial blocks (``block_chips`` chip widths on a side, in each chip's own
UTM CRS, by the chip's centre). Blocks are ordered by a seeded hash and the first ``val_fraction`` of them (at least
one) are validation; the rest are training. A validation chip whose footprint overlaps a training chip (the chips of
a stride smaller than the chip size overlap) is left out of both splits, so no training pixel is ever seen in
validation. Chips of one grid cell, and the two dates of a change pair, always share a split.

**Join.** Each split is :func:`pipeline.read_dataset` of the labelled collection (native pixels, normalised by the
worker's collate, ``jobs/_native_feed.py``) followed by one stateless batch UDF (:class:`LabelJoiner`) that keeps
the split's labelled chips and adds the task's target columns by ``chip_key``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from jobs._config import ConfigError
from jobs._pretrain_data import stem_name
from pipeline.dataset import load_chips, read_dataset, read_dataset_json, read_index
from pipeline.feed import Normalize, normalize_numpy, stats_vector
from pipeline.labels import decode_masks, read_labels
from pipeline.manifest import OutputStore, chip_key

if TYPE_CHECKING:
    import ray.data

__all__ = ["KIND_OF_TASK", "LabelJoiner", "TaskData", "build_split_datasets", "plan_task", "spatial_split"]

KIND_OF_TASK = {
    "classification": "classification",
    "multilabel": "multilabel",
    "segmentation": "segmentation",
    "change": "change",
    "detection": "detection",
}
_CELL = re.compile(r"^(?P<epsg>\d+)_E(?P<x>-?[\d.]+)_N(?P<y>-?[\d.]+)_(?P<size>\d+)px_(?P<gsd>[\d.eE+-]+)m$")


@dataclass(frozen=True)
class TaskData:
    """What a trial needs to read and label the data (plain data)."""

    data: str
    collection: str
    labels: str
    task: str
    classes: tuple[str, ...]
    ignore_index: int
    stem: str
    modality: str
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stats_hash: str
    chip_shape: tuple[int, int, int]
    dataset_version: str | None
    train_keys: tuple[int, ...]
    val_keys: tuple[int, ...]
    max_boxes: int = 0
    split: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    s3_endpoint: str | None = None

    @property
    def num_classes(self) -> int | None:
        """The head's class count (None for change, which is binary)."""
        return None if self.task == "change" else len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``train_loop_config``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskData:
        """Inverse of :meth:`to_dict` (lists back to tuples)."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def _cell_geometry(cell: str) -> tuple[int, float, float, float]:
    """``(epsg, x0, y0, extent_m)`` of a grid cell key (its top-left corner in metres and its side)."""
    match = _CELL.match(cell)
    if match is None:
        raise ConfigError(f"grid_cell {cell!r} is not '<epsg>_E<x>_N<y>_<size>px_<gsd>m'; re-ingest the dataset.")
    size, gsd = int(match["size"]), float(match["gsd"])
    return int(match["epsg"]), float(match["x"]), float(match["y"]), size * gsd


def _block_rank(seed: int, block: tuple[int, int, int]) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{block}".encode()).digest()[:8], "big")


def spatial_split(
    cells: Sequence[str], *, val_fraction: float, block_chips: int, seed: int
) -> tuple[list[bool], list[bool], dict[str, Any]]:
    """Per chip (given by its grid cell): ``(is_val, excluded)`` and a summary; see the module docstring.

    Raises:
        ConfigError: fewer than two spatial blocks (no split can be spatially separated).
    """
    geometry = [_cell_geometry(c) for c in cells]
    blocks = []
    for epsg, x0, y0, extent in geometry:
        side = extent * block_chips
        cx, cy = x0 + extent / 2, y0 - extent / 2
        blocks.append((epsg, math.floor(cx / side), math.floor(cy / side)))
    distinct = sorted(set(blocks), key=lambda b: _block_rank(seed, b))
    if len(distinct) < 2:
        raise ConfigError(
            f"All {len(cells)} labelled chips lie in one spatial block of {block_chips} chips; a spatially "
            "separated validation split needs at least two. Lower --split-block-chips or label a larger area."
        )
    n_val = min(len(distinct) - 1, max(1, round(val_fraction * len(distinct))))
    val_blocks = set(distinct[:n_val])
    is_val = [b in val_blocks for b in blocks]
    # Guard band: drop val chips that overlap any train chip (same CRS), so no train pixel is validated on.
    train_boxes: dict[int, list[tuple[float, float, float, float]]] = {}
    for (epsg, x0, y0, extent), val in zip(geometry, is_val, strict=True):
        if not val:
            train_boxes.setdefault(epsg, []).append((x0, y0 - extent, x0 + extent, y0))
    arrays = {e: np.asarray(b) for e, b in train_boxes.items()}
    excluded = []
    for (epsg, x0, y0, extent), val in zip(geometry, is_val, strict=True):
        boxes = arrays.get(epsg)
        if not val or boxes is None:
            excluded.append(False)
            continue
        overlap = (boxes[:, 0] < x0 + extent) & (boxes[:, 2] > x0) & (boxes[:, 1] < y0) & (boxes[:, 3] > y0 - extent)
        excluded.append(bool(overlap.any()))
    summary = {"blocks": len(distinct), "val_blocks": n_val, "block_chips": block_chips, "seed": seed,
               "val_fraction": val_fraction, "guard_dropped": int(sum(excluded))}
    return is_val, excluded, summary


def _choose_labels(store: OutputStore, task: str, name: str | None) -> str:
    have = sorted({p.split("/")[1] for p in store.list_files("labels", "labels.json")})
    if name is not None:
        return name
    kind = KIND_OF_TASK[task]
    fitting = [n for n in have if json.loads(store.read_bytes(f"labels/{n}/labels.json")).get("kind") == kind]
    if len(fitting) != 1:
        raise ConfigError(
            f"--labels not given and {store.uri} has {len(fitting)} label sets of kind {kind!r} "
            f"({fitting or 'none'}; all: {have or 'none'}); pass --labels NAME (write one with jobs/labels.py)."
        )
    return fitting[0]


def plan_task(
    data: str,
    task: str,
    *,
    labels: str | None = None,
    val_fraction: float = 0.2,
    block_chips: int = 2,
    seed: int = 0,
    s3_endpoint: str | None = None,
) -> TaskData:
    """The :class:`TaskData` of ``task`` on the ingest output ``data`` with one of its label sets.

    Raises:
        ConfigError: no fitting label set, a label set of another kind, labels on no written chip, or too little
            area for a spatial split.
        FileNotFoundError: ``data`` is not an ingest output.
    """
    store = OutputStore.open(data, s3_endpoint=s3_endpoint)
    meta = read_dataset_json(data, s3_endpoint=s3_endpoint)
    name = _choose_labels(store, task, labels)
    table, label_set = read_labels(data, name, s3_endpoint=s3_endpoint)
    if label_set.kind != KIND_OF_TASK[task]:
        raise ConfigError(
            f"Label set {name!r} of {store.uri} is of kind {label_set.kind!r}; --task {task} needs "
            f"{KIND_OF_TASK[task]!r} labels."
        )
    if task == "change" and "mask" not in table.column_names:
        raise ConfigError(
            f"Change label set {name!r} holds pairs without change masks; training a change head needs them "
            "(jobs/labels.py pairs ... --change-raster MASK.tif)."
        )
    index = read_index(store, label_set.collection)
    collections = sorted(set(index["collection"].to_pylist()))
    if len(collections) != 1:
        raise ConfigError(
            f"Label set {name!r} spans collections {collections}; a fine-tuning run trains one stem on one "
            "collection: rebuild it with jobs/labels.py ... --collection NAME."
        )
    collection = collections[0]
    cell_of = dict(zip(index["chip_id"].to_pylist(), index["grid_cell"].to_pylist(), strict=True))
    labelled = [c for c in table["chip_id"].to_pylist() if c in cell_of]
    if not labelled:
        raise ConfigError(f"Label set {name!r} labels no written chip of {store.uri} (was the data re-ingested?).")
    is_val, excluded, summary = spatial_split([cell_of[c] for c in labelled], val_fraction=val_fraction,
                                              block_chips=block_chips, seed=seed)
    train = tuple(chip_key(c) for c, v, x in zip(labelled, is_val, excluded, strict=True) if not v)
    val = tuple(chip_key(c) for c, v, x in zip(labelled, is_val, excluded, strict=True) if v and not x)
    if not val:
        raise ConfigError(
            f"Every validation chip of label set {name!r} overlaps a training chip; ingest with --stride equal to "
            "the chip size, or raise --split-block-chips."
        )
    entry = meta["collections"][collection]
    stats = entry["stats"]
    sensor = entry.get("sensor") or {}
    shape = tuple(int(v) for v in (entry.get("pixel_encoding") or {}).get("chip_shape", (0, 0, 0)))
    max_boxes = 0
    if task == "detection":
        max_boxes = max((len(b) for b in table["box_labels"].to_pylist()), default=0)
    return TaskData(
        data=data, collection=collection, labels=name, task=task, classes=tuple(label_set.classes),
        ignore_index=int(label_set.ignore_index), stem=stem_name(str(sensor.get("sensor") or collection)),
        modality=str(sensor.get("modality") or "optical"), bands=tuple(entry["bands"]),
        mean=tuple(float(v) for v in stats_vector(stats["mean"], 0.0, positive=False)),
        std=tuple(float(v) for v in stats_vector(stats["std"], 1.0, positive=True)),
        stats_hash=str(stats["stats_hash"]), chip_shape=shape,  # type: ignore[arg-type]
        dataset_version=meta.get("dataset_version"), train_keys=train, val_keys=val, max_boxes=max_boxes,
        split={**summary, "train_chips": len(train), "val_chips": len(val)},
        provenance=dict(label_set.provenance), s3_endpoint=s3_endpoint,
    )


class LabelJoiner:
    """Ray Data batch UDF: keep one split's labelled chips and add the task's targets (and the change *before*).

    Added columns: ``target`` (class ids ``(B,)`` int64, multi-hot ``(B, K)`` float32, or a ``(B, H, W)`` uint8
    mask with invalid pixels set to the ignore index); for change also ``before`` / ``before_valid``; for detection
    ``boxes`` ``(B, M, 4)`` float32 and ``box_labels`` ``(B, M)`` int64, padded with -1.
    """

    def __init__(self, plan: TaskData, keys: Sequence[int]) -> None:
        self.plan = plan
        self.keys = np.asarray(sorted(keys), dtype=np.int64)
        self._rows: dict[int, int] | None = None
        self._table: pa.Table | None = None
        self._masks: np.ndarray | None = None

    def _load(self) -> None:
        table, _ = read_labels(self.plan.data, self.plan.labels, s3_endpoint=self.plan.s3_endpoint)
        self._rows = {chip_key(c): i for i, c in enumerate(table["chip_id"].to_pylist())}
        self._table = table
        if "mask" in table.column_names:
            self._masks = decode_masks(table)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._rows is None:
            self._load()
        assert self._rows is not None and self._table is not None
        keys = batch["chip_key"]
        keep = np.isin(keys, self.keys) & np.asarray([int(k) in self._rows for k in keys], dtype=bool)
        out = {k: v[keep] for k, v in batch.items()}
        rows = np.asarray([self._rows[int(k)] for k in out["chip_key"]], dtype=np.int64)
        plan = self.plan
        match plan.task:
            case "classification":
                out["target"] = self._table["label"].to_numpy()[rows].astype(np.int64)
            case "multilabel":
                column = self._table["labels"]
                flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
                multi_hot = flat.reshape(len(column), len(plan.classes))  # (N * K,) -> (N, K)
                out["target"] = multi_hot[rows].astype(np.float32)
            case "segmentation":
                out["target"] = self._mask_target(rows, out["valid"])
            case "change":
                self._add_before(out, rows)
                out["target"] = self._mask_target(rows, out["valid"] & out["before_valid"])
            case "detection":
                self._add_boxes(out, rows)
        return out

    def _mask_target(self, rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
        assert self._masks is not None
        target = self._masks[rows].copy()  # (B, H, W) uint8
        if target.shape[1:] != valid.shape[1:]:
            raise ValueError(
                f"Label masks of {self.plan.labels!r} are {list(target.shape[1:])} but the chips are "
                f"{list(valid.shape[1:])}; rebuild the label set on this ingest."
            )
        target[~valid] = self.plan.ignore_index
        return target

    def _add_before(self, out: dict[str, np.ndarray], rows: np.ndarray) -> None:
        assert self._table is not None
        ids = [self._table["before_chip_id"][int(r)].as_py() for r in rows]
        c, h, w = out["image"].shape[1:]
        if not ids:
            out["before"] = np.zeros((0, c, h, w), np.float32)
            out["before_valid"] = np.zeros((0, h, w), bool)
            return
        chips = list(load_chips(self.plan.data, ids, s3_endpoint=self.plan.s3_endpoint))
        raw = np.stack([chip["image"] for chip in chips])  # (B, C, H, W), native dtype
        valid = np.stack([chip["valid"] for chip in chips])  # (B, H, W)
        mean = np.asarray(self.plan.mean, np.float32)
        std = np.asarray(self.plan.std, np.float32)
        out["before"] = normalize_numpy(raw, valid, mean, std)  # the feed's own arithmetic
        out["before_valid"] = valid

    def _add_boxes(self, out: dict[str, np.ndarray], rows: np.ndarray) -> None:
        assert self._table is not None
        m = max(self.plan.max_boxes, 1)
        boxes = np.full((len(rows), m, 4), -1.0, np.float32)
        labels = np.full((len(rows), m), -1, np.int64)
        for j, r in enumerate(rows.tolist()):
            chip_boxes = self._table["boxes"][r].as_py()
            for k, (box, label) in enumerate(zip(chip_boxes, self._table["box_labels"][r].as_py(), strict=True)):
                boxes[j, k] = (box["xmin"], box["ymin"], box["xmax"], box["ymax"])
                labels[j, k] = label
        out["boxes"] = boxes
        out["box_labels"] = labels


def split_nbytes(plan: TaskData) -> int:
    """Bytes both splits take decoded, at most (images counted as float32: native uint16 chips take half; plus the
    before images of change pairs)."""
    c, h, w = plan.chip_shape
    per_chip = c * h * w * 4 * (2 if plan.task == "change" else 1) + h * w * 2
    return per_chip * (len(plan.train_keys) + len(plan.val_keys))


def build_split_datasets(plan: TaskData, *, materialize: bool, normalize: Normalize = "device"
                         ) -> dict[str, ray.data.Dataset]:
    """``{"train": ..., "val": ...}``: the labelled collection's feed, joined to the labels, one per split.

    ``normalize="device"`` (the default) ships the native pixels (half the bytes of float32 for uint16 sources, in
    the object store too): the workers normalise them with :func:`jobs._native_feed.consumer_collate` (the change
    task's ``before`` chips are normalised by :class:`LabelJoiner`). ``"worker"`` normalises in the read tasks.

    With ``materialize`` both splits are decoded once into the object store and every trial and epoch reads them
    from there (labelled sets are usually small); the train split is then mixed per epoch by the workers' local
    shuffle buffer. Otherwise they stream (row groups re-read each epoch, in a new random order).
    """
    out = {}
    for split, keys in (("train", plan.train_keys), ("val", plan.val_keys)):
        ds = read_dataset(plan.data, collection=plan.collection, s3_endpoint=plan.s3_endpoint,
                          shuffle=split == "train" and not materialize, seed=None, normalize=normalize)
        ds = ds.map_batches(LabelJoiner(plan, keys), batch_format="numpy")  # stateless tasks
        out[split] = ds.materialize() if materialize else ds
    return out


"""The ``--objective noisy-labels`` pieces of ``jobs/pretrain.py``: labelled streams, the model, the step, validation.

Task-specific pretraining (Liu et al., arXiv 2402.16164; docs/noisy-pretraining.md): a registry encoder plus a
segmentation head (``rsvheat.build_task_model("segmentation", ...)``, UPerNet decoder) trains on a noisy label set
(``jobs/labels.py``: a land-cover raster, a STAC item, or the rule-based labels), and only the encoder is exported.

**Data.** The feed is the SSL job's (``jobs/_pretrain_data.plan_feed`` without pairs: one stream per sensor), kept
to the chips of the label set ``--labels`` and joined with their masks by a stateless batch UDF
(:class:`MaskJoiner`). Chips are split by grid cell (all dates of one place on one side): a seeded hash puts the
fraction ``--val-fraction`` of the cells into noisy validation (at least one cell). With ``--clean-labels`` every
chip that has a clean mask is held out of training and scored against its clean mask (clean-validation mIoU).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs._pretrain_data import FeedPlan, StreamInfo, build_datasets
from pipeline.dataset import read_index
from pipeline.feed import Normalize
from pipeline.labels import IGNORE_INDEX, decode_masks, read_labels
from pipeline.manifest import OutputStore, chip_key

if TYPE_CHECKING:
    import ray.data
    import torch
    from torch import nn

__all__ = ["TERMS", "MaskJoiner", "NoisyPlan", "build_noisy_datasets", "build_task_model", "evaluate",
           "noisy_from_summary", "noisy_step", "plan_noisy", "validation_nbytes"]

TERMS = ("ce", "dice", "kept")
VAL, CLEAN = "val:", "clean:"  # dataset-name prefixes of the validation streams


@dataclass(frozen=True)
class NoisyPlan:
    """The label side of the feed: classes, and per stream the chips of each split (``chip_key -> chip_id``).

    ``streams`` holds every stream with a labelled chip, also those with validation chips only (e.g. a collection
    whose chips all have clean masks), which the training plan leaves out.
    """

    classes: tuple[str, ...]
    labels: str
    clean_labels: str | None
    train: dict[str, dict[int, str]]
    val: dict[str, dict[int, str]]
    clean: dict[str, dict[int, str]]
    provenance: dict[str, Any]
    streams: dict[str, StreamInfo]

    def summary(self) -> dict[str, Any]:
        """Plain data for the workers and the lineage (chip counts, not the chip lists)."""
        return {"classes": list(self.classes), "labels": self.labels, "clean_labels": self.clean_labels,
                "stems": {n: s.stems[0] for n, s in self.streams.items()},
                "train_chips": {n: len(v) for n, v in self.train.items()},
                "val_chips": {n: len(v) for n, v in self.val.items()},
                "clean_chips": {n: len(v) for n, v in self.clean.items()}, "provenance": self.provenance}


def _in_val(cell: str, seed: int, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}\0{cell}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def _label_ids(dataset_dir: str, name: str, s3_endpoint: str | None) -> tuple[set[str], Any]:
    table, label_set = read_labels(dataset_dir, name, s3_endpoint=s3_endpoint)
    if label_set.kind != "segmentation":
        raise ValueError(f"Label set {name!r} of {dataset_dir} is {label_set.kind!r}; --labels needs segmentation.")
    return set(table["chip_id"].to_pylist()), label_set


def plan_noisy(feed: FeedPlan, *, labels: str, clean_labels: str | None, val_fraction: float, seed: int,
               s3_endpoint: str | None = None) -> tuple[FeedPlan, NoisyPlan]:
    """Keep the feed's streams to the labelled chips and split them (see the module docstring).

    Raises:
        ValueError: a dataset lacks the label set, two label sets disagree on classes, or no chip is labelled.
    """
    classes: tuple[str, ...] | None = None
    train: dict[str, dict[int, str]] = {}
    val: dict[str, dict[int, str]] = {}
    clean: dict[str, dict[int, str]] = {}
    provenance: dict[str, Any] = {}
    streams: dict[str, StreamInfo] = {}
    labelled: dict[str, StreamInfo] = {}
    cache: dict[tuple[str, str], tuple[set[str], Any]] = {}
    for name, stream in feed.streams.items():
        dataset_dir, collection = stream.sources[0]
        if (dataset_dir, labels) not in cache:
            cache[(dataset_dir, labels)] = _label_ids(dataset_dir, labels, s3_endpoint)
        ids, label_set = cache[(dataset_dir, labels)]
        if classes is not None and tuple(label_set.classes) != classes:
            raise ValueError(f"Label set {labels!r} has classes {label_set.classes} in {dataset_dir} but {classes} "
                             "elsewhere; one pretraining run has one class list.")
        classes = tuple(label_set.classes)
        provenance[dataset_dir] = label_set.provenance
        clean_ids: set[str] = set()
        if clean_labels is not None:
            if (dataset_dir, clean_labels) not in cache:
                cache[(dataset_dir, clean_labels)] = _label_ids(dataset_dir, clean_labels, s3_endpoint)
            clean_ids, clean_set = cache[(dataset_dir, clean_labels)]
            if tuple(clean_set.classes) != classes:
                raise ValueError(f"--clean-labels {clean_labels!r} has classes {clean_set.classes}, --labels "
                                 f"{labels!r} has {list(classes)}; clean validation needs the same class list.")
        index = read_index(OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint), collection)
        rows = [r for r in index.select(["chip_id", "grid_cell"]).to_pylist() if r["chip_id"] in ids | clean_ids]
        cells = sorted({r["grid_cell"] for r in rows if r["chip_id"] not in clean_ids})
        held = {c for c in cells if _in_val(c, seed, val_fraction)}
        if val_fraction > 0 and not held and len(cells) > 1:  # at least one cell of noisy validation
            held = {min(cells, key=lambda c: hashlib.blake2b(f"{seed}\0{c}".encode()).digest())}
        split: dict[str, dict[int, str]] = {"train": {}, "val": {}, "clean": {}}
        for row in rows:
            cid = row["chip_id"]
            part = "clean" if cid in clean_ids else "val" if row["grid_cell"] in held else "train"
            if part != "clean" and cid not in ids:
                continue
            split[part][chip_key(cid)] = cid
        if any(split.values()):
            train[name], val[name], clean[name] = split["train"], split["val"], split["clean"]
            labelled[name] = stream
        if split["train"]:
            streams[name] = replace(stream, rows=len(split["train"]))
    if classes is None or not streams:
        raise ValueError(f"No chip of the feed's streams {list(feed.streams)} has a mask in label set {labels!r} "
                         "(outside --clean-labels); build one with jobs/labels.py.")
    plan = FeedPlan(feed.stems, streams, {**feed.lineage, "labels": labels, "clean_labels": clean_labels},
                    dict(feed.excluded))
    return plan, NoisyPlan(classes, labels, clean_labels, train, val, clean, provenance, labelled)


class MaskJoiner:
    """Ray Data batch UDF: keep the rows of one split and add their ``mask`` (H, W) uint8 from a label set."""

    def __init__(self, keys: Mapping[int, str], dataset_dir: str, labels: str, s3_endpoint: str | None = None) -> None:
        self.keys = dict(keys)
        self.dataset_dir, self.labels, self.s3_endpoint = dataset_dir, labels, s3_endpoint

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = np.asarray([int(k) in self.keys for k in batch["chip_key"]], dtype=bool)
        out = {k: v[keep] for k, v in batch.items()}
        ids = [self.keys[int(k)] for k in out["chip_key"]]
        height, width = out["image"].shape[-2:] if out["image"].ndim == 4 else (0, 0)
        if not ids:
            out["mask"] = np.zeros((0, height, width), np.uint8)
            return out
        store = OutputStore.open(self.dataset_dir, s3_endpoint=self.s3_endpoint)
        with store.filesystem.open_input_file(store.path(f"labels/{self.labels}/labels.parquet")) as handle:
            table = pq.read_table(handle, filters=pc.field("chip_id").isin(ids))  # row-group stats: sorted ids
        masks = dict(zip(table["chip_id"].to_pylist(), decode_masks(table), strict=True)) if table.num_rows else {}
        out["mask"] = np.stack([masks.get(i, np.full((height, width), IGNORE_INDEX, np.uint8)) for i in ids])
        return out


def validation_nbytes(plan: FeedPlan, noisy: NoisyPlan) -> int:
    """Bytes the validation chips take decoded: float32 images, the valid mask and the label mask."""
    total = 0
    for split in (noisy.val, noisy.clean):
        for name, chips in split.items():
            c, h, w = plan.stems[noisy.streams[name].stems[0]].chip_shape
            total += len(chips) * (c * h * w * 4 + 2 * h * w)
    return total


def build_noisy_datasets(plan: FeedPlan, noisy: NoisyPlan, *, s3_endpoint: str | None = None,
                         materialize_validation: bool = False, normalize: Normalize = "device",
                         ) -> dict[str, ray.data.Dataset]:
    """Per training stream of ``plan`` its split (shuffled), and per labelled stream ``val:``/``clean:`` datasets.

    ``normalize`` as in :func:`jobs._pretrain_data.build_datasets` (native pixels by default: the consumer
    normalises them with the collates of :func:`jobs._pretrain_data.stream_collates` and :func:`evaluate`).

    With ``materialize_validation`` the validation datasets are read, joined and decoded once into the object store
    here, so each validation only iterates their blocks instead of starting a new read (seconds per validation on
    the sample data, benchmarks/RESULTS.md "Pretraining step wall time").
    """
    out = {}
    every = FeedPlan(plan.stems, noisy.streams, plan.lineage)
    for split, prefix, labels, source in ((noisy.train, "", noisy.labels, plan), (noisy.val, VAL, noisy.labels, every),
                                          (noisy.clean, CLEAN, noisy.clean_labels, every)):
        base = build_datasets(source, s3_endpoint=s3_endpoint, shuffle=not prefix, normalize=normalize)
        for name, ds in base.items():
            if split.get(name) and labels is not None:
                dataset_dir = source.streams[name].sources[0][0]
                joiner = MaskJoiner(split[name], dataset_dir, labels, s3_endpoint)
                ds = ds.map_batches(joiner, batch_format="numpy")  # an instance: stateless tasks
                out[prefix + name] = ds.materialize() if prefix and materialize_validation else ds
    return out


def build_task_model(plan: FeedPlan, *, model: str, num_classes: int, img_size: int,
                     model_kwargs: Mapping[str, Any]) -> nn.Module:
    """The registry encoder (one stem per sensor of the plan) with a segmentation head of ``num_classes``."""
    import rsvheat

    backbone_kwargs = {"in_chans": plan.in_chans, "img_size": img_size, **model_kwargs}
    return rsvheat.build_task_model("segmentation", model, num_classes, backbone_kwargs)


def noisy_step(model: nn.Module, batch: Mapping[str, torch.Tensor], stem: str, device: torch.device, *,
               label_smoothing: float, dice_weight: float, drop_fraction: float) -> dict[str, torch.Tensor]:
    """One micro-batch: logits of the stream's stem, then CE + Dice on the noisy masks (invalid pixels ignored)."""
    import torch

    from rsvheat.heads.noisy_loss import noisy_segmentation_loss

    image = batch["image"].to(device, non_blocking=True)
    target = batch["mask"].to(device, non_blocking=True).long()
    if "valid" in batch:
        target = torch.where(batch["valid"].to(device).bool(), target, IGNORE_INDEX)
    logits = model(image, modality=stem)
    return noisy_segmentation_loss(logits, target, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing,
                                   dice_weight=dice_weight, drop_fraction=drop_fraction)


def evaluate(model: nn.Module, shards: Mapping[str, Any], stems: Mapping[str, str], num_classes: int, *,
             batch_size: int, device: torch.device, collates: Mapping[str, Any] | None = None) -> dict[str, float]:
    """mIoU over the validation datasets, summed across ranks: ``{"val_miou", "clean_miou"}`` (NaN: no chip).

    The validation datasets are not split across workers (an equal split would drop rows of small ones): every rank
    reads each of them and scores the batches ``i`` with ``i % world == rank``.

    Args:
        shards: dataset name (``val:STREAM`` / ``clean:STREAM``) -> this worker's (whole) dataset iterator.
        stems: stream name -> its stem.
        collates: stem name -> the ``collate_fn`` that normalises its native chips
            (:func:`jobs._native_feed.consumer_collate`); none: the datasets hold normalised chips.
    """
    import torch
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    from rsvheat.heads.metrics import SegmentationMetric

    metrics = {VAL: SegmentationMetric(num_classes, IGNORE_INDEX), CLEAN: SegmentationMetric(num_classes, IGNORE_INDEX)}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for name, shard in shards.items():
            prefix = VAL if name.startswith(VAL) else CLEAN
            stream = name[len(prefix):]
            collate = (collates or {}).get(stems[stream])
            batches = shard.iter_torch_batches(batch_size=batch_size, drop_last=False, device=device,
                                               collate_fn=collate)
            for i, batch in enumerate(batches):
                if i % world != rank:
                    continue
                target = torch.where(batch["valid"].bool(), batch["mask"].long(), IGNORE_INDEX)
                metrics[prefix].update(model(batch["image"], modality=stems[stream]), target)
    model.train(was_training)
    out = {}
    for prefix, key in ((VAL, "val_miou"), (CLEAN, "clean_miou")):
        confusion = metrics[prefix].confusion.to(device)
        if distributed:
            dist.all_reduce(confusion)  # every rank holds the same (K, K) shape, even with no batch
        metrics[prefix].confusion = confusion.cpu()
        out[key] = metrics[prefix].compute()["mIoU"] if int(confusion.sum()) else float("nan")
    return out


def noisy_from_summary(summary: Mapping[str, Any]) -> tuple[tuple[str, ...], Sequence[str], dict[str, str]]:
    """``(classes, validation dataset names, stem per stream)`` from :meth:`NoisyPlan.summary` (the workers' view)."""
    names = [VAL + n for n, c in summary["val_chips"].items() if c] + [
        CLEAN + n for n, c in summary["clean_chips"].items() if c]
    return tuple(summary["classes"]), names, dict(summary["stems"])


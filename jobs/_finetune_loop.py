"""One fine-tuning trial's Ray Train worker: epochs over the train split, validation on rank 0, a checkpoint per epoch.

Every worker builds the same model (the pretrained encoder, or a seeded initialisation) and trains on its equal
share of the train split (``DataConfig(datasets_to_split=["train"])``); world rank 0 validates on the whole val split
after each epoch and reports the task's metrics with a checkpoint (``model.pt``, :func:`rsvheat.save_checkpoint`),
which ``TuneReportCallback`` passes to Ray Tune for ASHA and the final choice (docs/finetune-job.md "Trials").
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs._finetune_data import TaskData
from jobs._finetune_model import build_model, freeze_encoder, param_groups
from jobs._native_feed import consumer_collate
from jobs._trial_cleanup import PLACEMENT_GROUP_KEY, current_placement_group_hex

__all__ = ["AUGMENTS", "TASK_METRICS", "TrialSettings", "augment_batch", "evaluate", "train_fn_per_worker"]

log = logging.getLogger("jobs.finetune")

MODEL_FILE = "model.pt"
AUGMENTS = ("none", "flip", "flip-rot90")
# The metric each task's trials are ranked by (mode "max"), and the ones reported beside it.
TASK_METRICS = {
    "classification": ("macro_f1", ("accuracy", "macro_f1")),
    "multilabel": ("mAP", ("mAP", "micro_f1", "macro_f1")),
    "segmentation": ("mIoU", ("mIoU", "pixel_accuracy")),
    "change": ("f1", ("f1", "iou", "precision", "recall")),
    "detection": ("mAP50", ("mAP50",)),
}


@dataclass(frozen=True)
class TrialSettings:
    """The fixed (not searched) settings of every trial; plain data."""

    model: str
    pretrained: str | None
    epochs: int
    batch_size: int
    cpus_per_worker: float
    seed: int
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    min_band_overlap: float = 0.5
    grad_clip: float = 1.0
    bf16: bool = True
    shuffle_buffer: int = 64
    metric: str = ""  # the metric trials are ranked by (kept finite for ASHA)


def _flip_boxes(boxes: torch.Tensor, size: int, axis: str) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    if axis == "x":
        return torch.stack([size - x1, y0, size - x0, y1], -1)
    return torch.stack([x0, size - y1, x1, size - y0], -1)


def augment_batch(batch: dict[str, torch.Tensor], mode: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One random dihedral transform for the whole batch, applied alike to images, masks, targets and boxes.

    ``flip``: horizontal and vertical flips; ``flip-rot90``: also quarter turns (square chips). Padding boxes
    (``-1``) stay padding.
    """
    if mode == "none":
        return batch
    draws = torch.randint(0, 2, (3,), generator=generator).tolist()
    flip_x, flip_y = bool(draws[0]), bool(draws[1])
    turn = mode == "flip-rot90" and bool(draws[2])
    out = dict(batch)
    spatial = [k for k in ("image", "before", "valid", "before_valid") if k in out]
    if "target" in out and out["target"].ndim == 3:
        spatial.append("target")
    size = int(out["image"].shape[-1])
    pad = out["boxes"][..., 0] < 0 if "boxes" in out else None
    for key in spatial:
        x = out[key]
        if flip_x:
            x = x.flip(-1)
        if flip_y:
            x = x.flip(-2)
        if turn:
            x = x.transpose(-1, -2)  # a transpose after the flips: with them, every quarter turn and mirror
        out[key] = x
    if "boxes" in out:
        boxes = out["boxes"]
        if flip_x:
            boxes = _flip_boxes(boxes, size, "x")
        if flip_y:
            boxes = _flip_boxes(boxes, size, "y")
        if turn:
            boxes = boxes[..., [1, 0, 3, 2]]
        out["boxes"] = torch.where(pad[..., None], torch.full_like(boxes, -1.0), boxes)  # type: ignore[index]
    return out


def targets_of(batch: Mapping[str, torch.Tensor], task: str) -> Any:
    """The head's targets: class ids, multi-hot, masks, or one ``{"boxes", "labels"}`` dict per chip."""
    if task != "detection":
        return batch["target"]
    out = []
    for boxes, labels in zip(batch["boxes"], batch["box_labels"], strict=True):
        keep = labels >= 0
        out.append({"boxes": boxes[keep].float(), "labels": labels[keep].long()})
    return out


def forward(model: Any, batch: Mapping[str, torch.Tensor], task: str, stem: str) -> Any:
    """The model on one batch (two dates for change)."""
    if task == "change":
        return model(batch["before"], batch["image"], modality=stem)
    return model(batch["image"], modality=stem)


@torch.no_grad()
def evaluate(core: Any, batches: Any, plan: TaskData, device: torch.device) -> dict[str, float]:
    """The task metric over ``batches`` (the model in eval mode, no augmentation)."""
    core.eval()
    metric = core.metric()
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = forward(core, batch, plan.task, plan.stem)
        metric.update(core.postprocess(out), targets_of(batch, plan.task))
    return {k: float(v) for k, v in metric.compute().items()}


def cosine_factor(epoch: int, epochs: int) -> float:
    """Learning-rate factor of ``epoch``: cosine decay from 1 to 0.01 over the run."""
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))


def _save(directory: Path, core: Any, plan: TaskData, settings: TrialSettings, hp: Mapping[str, Any], epoch: int,
          metrics: Mapping[str, float], transfer: Mapping[str, Any] | None) -> None:
    from rsvheat.checkpoint import save_checkpoint

    stats = {"stats_hash": plan.stats_hash, plan.stem: {"mean": list(plan.mean), "std": list(plan.std)}}
    save_checkpoint(
        directory / MODEL_FILE, core, bands={plan.stem: list(plan.bands)}, stats=stats,
        dataset_version=plan.dataset_version, epoch=epoch, metrics=dict(metrics),
        extra={"finetune": {"classes": list(plan.classes), "labels": plan.labels, "task": plan.task,
                            "collection": plan.collection, "ignore_index": plan.ignore_index,
                            "hyperparameters": dict(hp), "pretrained": settings.pretrained, "transfer": transfer,
                            "split": dict(plan.split), "label_provenance": dict(plan.provenance)}},
    )


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of one trial (see the module docstring)."""
    import ray
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = TrialSettings(**config["settings"])
    plan = TaskData.from_dict(config["data"])
    hp = dict(config["hp"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(settings.cpus_per_worker)))
    torch.manual_seed(settings.seed)

    head_kwargs = dict(settings.head_kwargs)
    if plan.task in ("segmentation", "change"):
        head_kwargs.setdefault("ignore_index", plan.ignore_index)
    with tempfile.TemporaryDirectory() as scratch:
        pretrained = None
        if config.get("pretrained_blob") is not None:  # the driver's checkpoint bytes, from the object store
            pretrained = Path(scratch) / "pretrained.pt"
            pretrained.write_bytes(ray.get(config["pretrained_blob"]))
        core, report = build_model(
            task=plan.task, model=settings.model, stem=plan.stem, bands=plan.bands, img_size=plan.chip_shape[1],
            num_classes=plan.num_classes, head_kwargs=head_kwargs, pretrained=None if pretrained is None else
            str(pretrained), min_band_overlap=settings.min_band_overlap,
        )
    transfer = None if report is None else {
        "source_stem": report.match.source, "new_bands": list(report.match.new_bands),
        "loaded": len(report.weights.loaded), "resized": list(report.weights.resized)}
    mode = str(hp.get("encoder", "full"))
    if mode == "frozen":
        freeze_encoder(core)
    groups = param_groups(core, mode=mode, lr=float(hp["lr"]), weight_decay=float(hp.get("weight_decay", 0.05)),
                          layer_decay=float(hp.get("layer_decay", 0.75)))
    model = ray.train.torch.prepare_model(core, parallel_strategy_kwargs={"find_unused_parameters": True})
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(settings.seed * 1009 + rank)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and settings.bf16
                else contextlib.nullcontext())
    collate = consumer_collate(plan.mean, plan.std, device)  # native chips normalised here (on the GPU if any)
    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")
    augment = str(hp.get("augment", "none"))
    for epoch in range(settings.epochs):
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * cosine_factor(epoch, settings.epochs)
        core.train()
        if mode == "frozen":
            core.encoder.eval()  # pretrained norm statistics stay as they are
        started, losses, chips = time.perf_counter(), [], 0
        for batch in train_shard.iter_torch_batches(batch_size=settings.batch_size, prefetch_batches=2,
                                                    local_shuffle_buffer_size=settings.shuffle_buffer or None,
                                                    collate_fn=collate):
            batch = augment_batch({k: v.to(device) for k, v in batch.items()}, augment, generator)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                out = forward(model, batch, plan.task, plan.stem)
            loss = core.loss(out, targets_of(batch, plan.task))
            loss.backward()
            if settings.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            chips += int(batch["image"].shape[0])
        if not losses:
            raise RuntimeError(
                f"Worker {rank} got no training batch in epoch {epoch + 1}: {len(plan.train_keys)} train chips are "
                "too few for this many workers; lower --num-workers."
            )
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                                     "chips_per_s": chips / max(time.perf_counter() - started, 1e-9)}
        if rank == 0:
            metrics[PLACEMENT_GROUP_KEY] = current_placement_group_hex()  # freed by Tune when the trial ends
            val_batches = val_data.iter_torch_batches(batch_size=settings.batch_size, collate_fn=collate)
            metrics.update(evaluate(core, val_batches, plan, device))
            ranked = metrics.get(settings.metric)
            if isinstance(ranked, float) and math.isnan(ranked):
                # Undefined on this val split (e.g. no changed pixel and none predicted): rank it last, not NaN,
                # which ASHA's cutoffs cannot order.
                log.warning("val %s is undefined at epoch %d (no positive in the split); ranked as 0",
                            settings.metric, epoch + 1)
                metrics[settings.metric] = 0.0
            log.info("epoch %d/%d %s", epoch + 1, settings.epochs,
                     " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        with tempfile.TemporaryDirectory() as directory:
            if rank == 0:  # only world rank 0 writes the checkpoint
                scores = {k: v for k, v in metrics.items() if k != PLACEMENT_GROUP_KEY}
                _save(Path(directory), core, plan, settings, hp, epoch + 1, scores, transfer)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if rank == 0 else None,
                             checkpoint_dir_name=f"checkpoint_{epoch + 1:04d}")

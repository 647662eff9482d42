"""Pretraining on Ray Train: ingest outputs → per-sensor streams → TorchTrainer → encoder.pt.

Two objectives (``--objective``): ``ssl``, the RS-vHeat self-supervised recipe (``rsvheat.ssl``), and
``noisy-labels``, task-specific pretraining of encoder + segmentation head on a noisy label set
(``jobs/_noisy_objective.py``, docs/noisy-pretraining.md); both export the encoder alone.

Run locally or on a cluster::

    python jobs/pretrain.py --config jobs/configs/pretrain_sample.yaml
    python jobs/pretrain.py --smoke-test --output /tmp/pt            # ingests .cache/samples first, 2 CPU workers
    python jobs/pretrain.py --objective noisy-labels --labels rules --data out/demo --output out/noisy
    ray job submit --working-dir . -- python jobs/pretrain.py --config jobs/configs/pretrain_sample.yaml \
        --samples $PWD/.cache/samples/catalog.json --output $PWD/out/pretrain-sample --storage-path $PWD/out/runs
    ray job submit --working-dir . -- python jobs/pretrain.py --data s3://bucket/datasets/s2 s3://bucket/datasets/s1 \
        --model rsvheat_base --num-workers 8 --use-gpu --run-name rsvheat-b-v1 --storage-path s3://bucket/runs \
        --output /shared/models/rsvheat-b-v1

Steps (docs/pretrain-job.md):

1. **Plan the feed** on the driver: read ``dataset.json`` and ``index.parquet`` of every ``--data``; one stem per
   sensor, optical-SAR pairs by grid cell/footprint and time window, one Ray Dataset per stream
   (``pipeline.read_dataset``).
2. **Train** with ``TorchTrainer`` over ``--num-workers``: every step picks one stream (one sensor, or one pair of
   sensors, per batch), runs the RS-vHeat objective (``rsvheat.ssl``), accumulates gradients, steps AdamW with
   warm-up + cosine decay, keeps every step's metrics and reports them with a checkpoint every
   ``--checkpoint-every`` steps (metrics alone every ``--report-every`` steps, off by default).
3. **Resume / recover**: the same ``--run-name`` and ``--storage-path`` continue from the last checkpoint (step count,
   optimizer, scheduler, data position); ``--max-failures`` restarts the workers after a failure.
4. **Export** on the driver: ``encoder.pt`` (encoder keys only, self-describing), ``encoder.json`` (STAC ``mlm``),
   ``metrics.csv`` and ``loss.png`` in ``--output``.

Ray touchpoints are numbered ``# [n]``. Exit status: 0 done, 1 training failed, 2 bad configuration.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/pretrain.py` (also under `ray job submit --working-dir .`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib
import json
import logging
import math
import os
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from jobs import _noisy_objective as noisy
from jobs._config import ConfigError, config_from_dict, parse_config, parse_pairs, to_dict
from jobs._native_feed import consumer_collate, read_normalize
from jobs._pretrain_data import (
    FeedPlan,
    StreamFeed,
    build_datasets,
    drop_small_streams,
    pick_stream,
    plan_feed,
    plan_from_dict,
    plan_to_dict,
    stream_collates,
    stream_nbytes,
)
from jobs._pretrain_outputs import (
    METRIC_COLUMNS,
    combined_stats_hash,
    metrics_csv_text,
    mlm_item,
    plot_loss_png,
    read_metrics_csv,
)
from jobs._ray import OBJECT_STORE_SHARE, fits_object_store, init_ray, run_storage
from pipeline.cog import redact_href

if TYPE_CHECKING:
    import pyarrow.fs
    import ray.data
    import ray.train
    import torch
    from torch import nn

__all__ = ["PretrainConfig", "main", "train_driver_fn", "train_fn_per_worker"]

log = logging.getLogger("jobs.pretrain")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
STATE_FILE, METRICS_FILE, CONFIG_FILE = "state.pt", "metrics.csv", "pretrain_config.json"
STATE_FORMAT = "rsvheat.pretrain-state"
# Keys that define the model or the data: a resumed run must keep them (docs/pretrain-job.md "Resume").
RESUME_LOCKED = ("model", "model_kwargs", "img_size", "fuse_at", "con_mode", "masking", "data", "collections",
                 "pairing", "objective", "labels", "clean_labels", "val_fraction")
TERMS = {"ssl": ("spa", "fre", "con"), "noisy-labels": noisy.TERMS}  # loss terms logged per objective
COLUMNS = {"ssl": METRIC_COLUMNS, "noisy-labels": ("step", "loss", *noisy.TERMS, "val_miou", "clean_miou",
                                                   *METRIC_COLUMNS[METRIC_COLUMNS.index("lr"):])}
DEFAULT_SAMPLES = ".cache/samples/catalog.json"


@dataclass(frozen=True)
class PretrainConfig:
    """Configuration of ``jobs/pretrain.py``; every field is a flag (``--max-steps``) and a YAML key (``max_steps``)."""

    # Data
    data: tuple[str, ...] = field(
        default=(), metadata={"help": "ingest outputs (local dirs or s3://); none: ingest --samples first"}
    )
    collections: tuple[str, ...] = field(default=(), metadata={"help": "only these collections (default: all)"})
    pairing: bool = field(default=True, metadata={"help": "pair optical and SAR chips of one place for L_con"})
    pair_window_hours: float = field(default=72.0, metadata={"help": "largest time gap of an optical-SAR pair"})
    pair_min_iou: float = field(default=0.8, metadata={"help": "footprint IoU for a pair on different grids"})
    s3_endpoint: str | None = field(default=None, metadata={"help": "S3 endpoint URL (default: AWS_ENDPOINT_URL)"})
    shuffle_buffer: int = field(default=64, metadata={"help": "rows in each worker's local shuffle buffer (0: off)"})
    prefetch_batches: int = field(default=4, metadata={"help": "batches prefetched per stream and worker"})
    cache_gib: float | None = field(
        default=None, metadata={"help": "GiB of decoded chips kept in the object store for epochs after the first "
                                "(default: all of them when they fit in a quarter of the object store, else none; "
                                "0: re-read every epoch)"})
    feed_normalize: Literal["consumer", "read"] = field(
        default="consumer", metadata={"help": "normalise chips in the training worker, from native pixels (on its GPU "
                                      "when it has one), or in Ray Data's read tasks (float32 through Ray)"})
    stream_sampling: Literal["proportional", "uniform"] = field(
        default="proportional", metadata={"help": "pick streams by their chip counts, or uniformly"}
    )
    # Model and objective
    model: str = field(default="rsvheat_base", metadata={"help": "registry backbone (rsvheat.list_models())"})
    model_kwargs: tuple[str, ...] = field(
        default=(), metadata={"help": "backbone overrides KEY=VALUE (YAML values), e.g. drop_path_rate=0.2"}
    )
    img_size: int | None = field(default=None, metadata={"help": "nominal input size (default: the chip size)"})
    masking: tuple[str, ...] = field(
        default=(), metadata={"help": "frequency-masking options KEY=VALUE, e.g. radius_mode=area pad_mode=reflect"}
    )
    fuse_at: tuple[int, ...] = field(default=(3, 4), metadata={"help": "stages where the two views are fused"})
    loss_weights: tuple[float, float, float] | None = field(
        default=None, metadata={"help": "weights of L_spa L_fre L_con (default 1 1 1)"}
    )
    con_mode: Literal["infonce", "cosine"] = field(default="infonce", metadata={"help": "form of L_con"})
    temperature: float = field(default=0.1, metadata={"help": "InfoNCE temperature"})
    grad_checkpointing: Literal["off", "blocks", "mlp"] = field(
        default="off",
        metadata={"help": "recompute activations in the backward: every block, or each block's MLP branch (HCO "
                          "backbones; docs/hco-training.md)"},
    )
    # Noisy-label objective (docs/noisy-pretraining.md)
    objective: Literal["ssl", "noisy-labels"] = field(
        default="ssl", metadata={"help": "ssl (RS-vHeat) or noisy-labels (encoder + segmentation head on --labels)"}
    )
    labels: str | None = field(default=None, metadata={"help": "noisy segmentation label set of every --data"})
    clean_labels: str | None = field(
        default=None, metadata={"help": "clean label set: its chips are held out and scored (clean-validation mIoU)"}
    )
    val_fraction: float = field(default=0.1, metadata={"help": "share of grid cells held out for noisy validation"})
    label_smoothing: float = field(default=0.0, metadata={"help": "CE label smoothing (e.g. 0.1)"})
    small_loss_drop: float = field(
        default=0.0, metadata={"help": "share of each batch's largest-loss chips left out (small-loss selection)"}
    )
    dice_weight: float = field(default=1.0, metadata={"help": "weight of the Dice term (CE + w * Dice)"})
    # Optimisation
    batch_size: int = field(default=8, metadata={"help": "chips per worker and micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on norms, biases, FVE/SCE)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(default=0.01, metadata={"help": "final lr of the cosine decay, as a fraction"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0: off)"})
    max_steps: int = field(default=1000, metadata={"help": "optimiser steps of the whole run (resumes count)"})
    seed: int = field(default=0, metadata={"help": "seed of weights, stream picks, masks and shuffles"})
    # Scaling
    num_workers: int = field(default=2, metadata={"help": "Ray Train workers"})
    use_gpu: bool | None = field(default=None, metadata={"help": "one GPU per worker (default: when the cluster has)"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs reserved per worker (leave some for data)"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on GPU (CPU runs stay fp32)"})
    # Run and storage
    run_name: str = field(default="pretrain", metadata={"help": "RunConfig name: the same name resumes"})
    storage_path: str | None = field(
        default=None, metadata={"help": "RunConfig storage (local dir or s3://; default ~/ray_results)"}
    )
    checkpoint_every: int = field(default=100, metadata={"help": "a checkpoint every K steps (and at the end)"})
    keep_checkpoints: int = field(default=3, metadata={"help": "checkpoints kept in storage"})
    max_failures: int = field(default=3, metadata={"help": "worker-group restarts after failures (-1: unlimited)"})
    output: str = field(default="out/pretrain", metadata={"help": "encoder.pt, encoder.json, metrics.csv, loss.png"})
    log_every: int = field(default=1, metadata={"help": "a progress line every N steps"})
    report_every: int = field(
        default=0, metadata={"help": "also report metrics to Ray Train every N steps (0: only with checkpoints); a "
                             "report waits for the controller's poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s)"}
    )
    samples: str = field(default=DEFAULT_SAMPLES, metadata={"help": "sample catalog ingested when --data is empty"})
    smoke_test: bool = field(default=False, metadata={"help": "2 CPU workers, *_test model, a few steps"})
    # Fault injection (tests)
    inject_kill_at_step: int | None = field(
        default=None, metadata={"help": "SIGKILL one worker once when it starts this step (tests recovery)"}
    )
    inject_kill_rank: int = field(default=-1, metadata={"help": "rank killed by --inject-kill-at-step (-1: last)"})


# ---------------------------------------------------------------------------------------------------- config helpers


def resolve_smoke(cfg: PretrainConfig) -> PretrainConfig:
    """``--smoke-test``: the same path, smaller: 2 CPU workers, the family's ``*_test`` model, a few small steps."""
    if not cfg.smoke_test:
        return cfg
    import rsvheat

    family = cfg.model if cfg.model.endswith("_test") else f"{cfg.model.split('_')[0]}_test"
    model = family if rsvheat.is_model(family) else "rsvheat_test"
    return replace(
        cfg, model=model, num_workers=2, use_gpu=False, cpus_per_worker=min(cfg.cpus_per_worker, 0.5),
        max_steps=min(cfg.max_steps, 8), batch_size=min(cfg.batch_size, 2), grad_accum=1,
        checkpoint_every=min(cfg.checkpoint_every, 2), warmup_steps=min(cfg.warmup_steps, 2),
        stream_sampling="uniform", shuffle_buffer=min(cfg.shuffle_buffer, 8), log_every=1,
    )


def validate(cfg: PretrainConfig) -> None:
    """Reject impossible settings up front, naming the flag.

    Raises:
        ConfigError: the first bad setting.
    """
    import rsvheat

    if not cfg.data and not Path(cfg.samples).exists():
        raise ConfigError(
            f"No --data given and no sample catalog at {cfg.samples}: pass --data DIR... (outputs of jobs/ingest.py, "
            "local or s3://), or --samples /absolute/path/catalog.json (build it with `python -m pipeline.samples "
            "--out .cache/samples`; under `ray job submit --working-dir .` the git-ignored .cache/ is not uploaded)."
        )
    if not rsvheat.is_model(cfg.model):
        raise ConfigError(f"--model {cfg.model!r} is not registered; choose one of {rsvheat.list_models()}.")
    for key in ("batch_size", "grad_accum", "max_steps", "checkpoint_every", "num_workers", "log_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(cfg, key)}.")
    if cfg.lr <= 0 or cfg.warmup_steps < 0 or not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(
            f"--lr must be > 0, --warmup-steps >= 0 and --min-lr-ratio in [0, 1]; got {cfg.lr}, "
            f"{cfg.warmup_steps}, {cfg.min_lr_ratio}."
        )
    if cfg.report_every < 0:
        raise ConfigError(f"--report-every must be >= 0 (0: report with checkpoints only), got {cfg.report_every}.")
    if cfg.cache_gib is not None and cfg.cache_gib < 0:
        raise ConfigError(f"--cache-gib must be >= 0 (0: no cache; not given: automatic), got {cfg.cache_gib}.")
    if cfg.cpus_per_worker <= 0:
        raise ConfigError(f"--cpus-per-worker must be > 0, got {cfg.cpus_per_worker}.")
    if not cfg.run_name or any(c in cfg.run_name for c in "/\\") or cfg.run_name in (".", ".."):
        raise ConfigError(f"--run-name {cfg.run_name!r} must be a plain name (no slashes); the same name resumes.")
    if not set(cfg.fuse_at) <= {1, 2, 3, 4} or not cfg.fuse_at:
        raise ConfigError(f"--fuse-at {list(cfg.fuse_at)} must be stages among 1 2 3 4.")
    parse_pairs(cfg.model_kwargs, "model_kwargs")
    parse_pairs(cfg.masking, "masking")
    if cfg.objective == "noisy-labels":
        if not cfg.labels:
            raise ConfigError("--objective noisy-labels needs --labels NAME, a segmentation label set of every --data "
                              "(build one with `python jobs/labels.py rules --data DIR --name NAME`).")
        if not 0 <= cfg.val_fraction <= 0.5 or not 0 <= cfg.label_smoothing < 1 or not 0 <= cfg.small_loss_drop < 1:
            raise ConfigError(
                f"--val-fraction must be in [0, 0.5], --label-smoothing and --small-loss-drop in [0, 1); got "
                f"{cfg.val_fraction}, {cfg.label_smoothing}, {cfg.small_loss_drop}."
            )
        if cfg.dice_weight < 0:
            raise ConfigError(f"--dice-weight must be >= 0, got {cfg.dice_weight}.")


def public_config(cfg: PretrainConfig) -> dict[str, Any]:
    """The resolved config as plain data, URLs without user info or query strings (no secrets in logs/files)."""
    data = to_dict(cfg)
    data["data"] = [redact_href(d) for d in cfg.data]
    for key in ("storage_path", "s3_endpoint"):
        if data.get(key):
            data[key] = redact_href(data[key])
    return data


# ------------------------------------------------------------------------------------------------------ data


def get_datasets(cfg: PretrainConfig) -> tuple[FeedPlan, dict[str, ray.data.Dataset]]:
    """The feed plan (stems, streams, pairs) and one Ray Dataset per stream (docs/pretrain-job.md "Data")."""

    labelled = cfg.objective == "noisy-labels"
    plan = plan_feed(
        cfg.data, collections=cfg.collections, pairing=cfg.pairing and not labelled,
        pair_window=timedelta(hours=cfg.pair_window_hours), min_iou=cfg.pair_min_iou, s3_endpoint=cfg.s3_endpoint,
    )
    if labelled:  # the labelled chips of each stream, split into training and validation
        plan, split = noisy.plan_noisy(plan, labels=str(cfg.labels), clean_labels=cfg.clean_labels,
                                       val_fraction=cfg.val_fraction, seed=cfg.seed, s3_endpoint=cfg.s3_endpoint)
    plan = drop_small_streams(plan, world_size=cfg.num_workers, batch_size=cfg.batch_size)
    for name, why in plan.excluded.items():
        log.warning("stream %s left out: %s", name, why)
    for name, stream in plan.streams.items():
        p = plan.weights[name] if cfg.stream_sampling == "proportional" else 1 / len(plan.streams)
        log.info("stream %-32s %6d %s, p=%.3f", name, stream.rows, "pairs" if len(stream.stems) == 2 else "chips", p)
    if not labelled:
        return plan, build_datasets(plan, s3_endpoint=cfg.s3_endpoint, cache_bytes=cache_budget(cfg, plan),
                                    normalize=read_normalize(cfg.feed_normalize))
    split = replace(split, train={n: split.train[n] for n in plan.streams})  # streams too small to train dropped
    plan = replace(plan, lineage={**plan.lineage, "noisy": split.summary()})
    log.info("noisy labels %r: %s", cfg.labels, {k: v for k, v in split.summary().items() if k != "provenance"})
    nbytes = noisy.validation_nbytes(plan, split)
    materialize = fits_object_store(nbytes)
    if materialize:
        log.info("decoding the validation chips once (%.1f MB) for every validation", nbytes / 1e6)
    return plan, noisy.build_noisy_datasets(plan, split, s3_endpoint=cfg.s3_endpoint,
                                            materialize_validation=materialize,
                                            normalize=read_normalize(cfg.feed_normalize))


def cache_budget(cfg: PretrainConfig, plan: FeedPlan) -> int | dict[str, int] | None:
    """The ``cache_bytes`` of :func:`build_datasets` for ``--cache-gib`` (docs/pretrain-job.md "Data").

    ``--cache-gib N``: N GiB shared by the streams in proportion to their rows (0: none). Not given: every stream
    whole when all of them together fit in ``OBJECT_STORE_SHARE`` of the object store (jobs/_ray.py), else none
    (a partial cache is decoded before the first step, so it is only made when asked for).
    """
    import ray

    if cfg.cache_gib is not None:
        return int(cfg.cache_gib * 2**30) or None
    sizes = stream_nbytes(plan, normalize=read_normalize(cfg.feed_normalize), s3_endpoint=cfg.s3_endpoint)
    store = ray.available_resources().get("object_store_memory", 0)
    total = sum(sizes.values())
    if fits_object_store(total):
        log.info("caching the decoded streams for epochs after the first (%.1f MB of %.1f MB object store)",
                 total / 1e6, store / 1e6)
        return sizes
    log.info("streaming every epoch from the shards: the decoded streams (%.1f MB) exceed %d %% of the object "
             "store (%.1f MB); --cache-gib N caches part of them", total / 1e6, 100 * OBJECT_STORE_SHARE, store / 1e6)
    return None


def to_inputs(batch: Mapping[str, torch.Tensor], stems: Sequence[str], device: torch.device
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """A stream batch as the pretrainer's ``(batch, valid)`` dicts keyed by stem (two stems for a pair stream)."""
    import torch

    images = {stems[0]: batch["image"].to(device, non_blocking=True)}
    masks = {}
    if "valid" in batch:
        masks[stems[0]] = batch["valid"].to(device, non_blocking=True).bool()
    if len(stems) == 2:
        images[stems[1]] = batch["partner"].to(device, non_blocking=True)
        masks[stems[1]] = batch["partner_valid"].to(device, non_blocking=True).bool()
        if stems[0] not in masks:  # the anchor's feed has no mask column: nodata is already 0 after normalising
            b, _, h, w = images[stems[0]].shape
            masks[stems[0]] = torch.ones((b, h, w), dtype=torch.bool, device=device)
    return images, (masks or None)


# ------------------------------------------------------------------------------------------------------ model


def build_pretrainer(cfg: PretrainConfig, plan: FeedPlan) -> nn.Module:
    """The model the objective trains over ``cfg.model``, one stem per sensor of the plan: the RS-vHeat pretraining
    wrapper (``ssl``), or the segmentation task model (``noisy-labels``)."""
    from rsvheat.ssl import build_pretrainer as build

    kwargs = {"img_size": cfg.img_size or max(s.chip_shape[1] for s in plan.stems.values()),
              **parse_pairs(cfg.model_kwargs, "model_kwargs")}
    if cfg.objective == "noisy-labels":
        classes = plan.lineage["noisy"]["classes"]
        return noisy.build_task_model(plan, model=cfg.model, num_classes=len(classes), img_size=kwargs.pop("img_size"),
                                      model_kwargs=kwargs)
    return build(
        cfg.model, plan.in_chans, backbone_kwargs=kwargs, masking=parse_pairs(cfg.masking, "masking") or None,
        fuse_at=tuple(cfg.fuse_at), loss_weights=None if cfg.loss_weights is None else {
            "spa": cfg.loss_weights[0], "fre": cfg.loss_weights[1], "con": cfg.loss_weights[2]},
        con_mode=cfg.con_mode, temperature=cfg.temperature,
    )


def make_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norm weights (1-D) and the FVE/SCE embeddings."""
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        (no_decay if param.ndim <= 1 or leaf in ("fve", "sce") else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def lr_factor(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``max_steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _core(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------------ checkpoints


def save_state(directory: Path, *, model: nn.Module, optimizer: Any, scheduler: Any, step: int,
               position: Mapping[str, Sequence[int]], config: Mapping[str, Any], history: Sequence[Mapping[str, Any]]
               ) -> None:
    """Write a training checkpoint: ``state.pt`` (plain data + tensors), ``metrics.csv`` and the config."""
    import torch

    state = {
        "format": STATE_FORMAT,
        "format_version": 1,
        "model": _core(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": int(step),
        "data_position": {name: [int(v) for v in pos] for name, pos in position.items()},
        "config": dict(config),
    }
    torch.save(state, directory / STATE_FILE)
    (directory / METRICS_FILE).write_text(metrics_csv_text(history, COLUMNS[config.get("objective", "ssl")]))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def load_state(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a checkpoint written by :func:`save_state` (``weights_only=True``) and its metric rows."""
    import torch

    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{directory} is not a jobs/pretrain.py checkpoint (no {STATE_FORMAT!r} {STATE_FILE}).")
    history = read_metrics_csv(directory / METRICS_FILE) if (directory / METRICS_FILE).exists() else []
    return state, [r for r in history if r["step"] <= state["step"]]


def maybe_inject_kill(cfg: PretrainConfig, step: int, rank: int, world: int) -> None:
    """Fault hook for tests: SIGKILL this worker process once when it starts ``--inject-kill-at-step``.

    "Once" is a marker file in ``--output`` created atomically (``O_EXCL``) just before the kill, so the restarted
    worker group passes the same step.
    """
    if cfg.inject_kill_at_step is None or step != cfg.inject_kill_at_step:
        return
    if rank != (cfg.inject_kill_rank % world):
        return
    marker = Path(cfg.output) / f".inject-kill-{cfg.run_name}-step{step}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    # Ray Train V2's controller collects reports (and so registers checkpoints) on its health-check poll; a worker
    # killed within one poll of the last report restarts from the checkpoint before it. Wait two polls, so the test
    # kills after the last checkpoint is registered, as a real failure long after it would.
    time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")) + 1.0)
    log.warning("fault injection: killing worker rank %d (pid %d) at step %d", rank, os.getpid(), step)
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------------------ worker


def _mean_across_ranks(values: list[float], device: torch.device) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()


def _progress(row: Mapping[str, Any], cfg: PretrainConfig, started: float, first: int) -> str:
    done = row["step"] - first
    rate = (time.perf_counter() - started) / max(done, 1)
    eta = timedelta(seconds=round(rate * (cfg.max_steps - row["step"])))
    terms = " ".join(f"{k} {row[k]:.4f}" for k in TERMS[cfg.objective])
    scores = "".join(f" {k} {row[k]:.4f}" for k in ("val_miou", "clean_miou") if math.isfinite(row.get(k, math.nan)))
    return (
        f"step {row['step']}/{cfg.max_steps} loss {row['loss']:.4f} ({terms}){scores} lr {row['lr']:.2e} "
        f"{row['chips_per_s']:.1f} chips/s data-wait {100 * row['data_wait']:.1f}% [{row['stream']}] eta {eta}"
    )


def report_kind(step_no: int, cfg: PretrainConfig) -> Literal["checkpoint", "metrics"] | None:
    """What step ``step_no`` (1-based) reports to Ray Train: metrics with a checkpoint every ``--checkpoint-every``
    steps and at ``--max-steps``, metrics alone every ``--report-every`` steps (0: never), else nothing.

    Every report waits for the controller to collect the one before (docs/pretrain-job.md "Metrics"), so the job
    reports no more often than asked; ``metrics.csv`` has every step either way.
    """
    if step_no % cfg.checkpoint_every == 0 or step_no == cfg.max_steps:
        return "checkpoint"
    if cfg.report_every and step_no % cfg.report_every == 0:
        return "metrics"
    return None


def objective_step(model: nn.Module, cfg: PretrainConfig, batch: Mapping[str, torch.Tensor], stems: Sequence[str],
                   device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One micro-batch of the objective: ``loss`` (with gradient) and its detached terms (:data:`TERMS`)."""
    if cfg.objective == "noisy-labels":
        return noisy.noisy_step(model, batch, stems[0], device, label_smoothing=cfg.label_smoothing,
                                dice_weight=cfg.dice_weight, drop_fraction=cfg.small_loss_drop)
    inputs, valid = to_inputs(batch, stems, device)
    return model(inputs, valid, generator=generator)  # type: ignore[no-any-return]


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: build the pretrainer, resume, then step through the interleaved streams."""
    import ray.train
    import ray.train.torch
    import torch
    from torch.nn.parallel import DistributedDataParallel

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_dict(PretrainConfig, config["cfg"], source="train_loop_config")
    plan = plan_from_dict(config["plan"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)

    pretrainer = build_pretrainer(cfg, plan)
    if cfg.grad_checkpointing != "off":
        encoder = pretrainer.encoder
        if hasattr(encoder, "set_grad_checkpointing"):
            encoder.set_grad_checkpointing(cfg.grad_checkpointing)
        elif rank == 0:
            log.warning("--grad-checkpointing: %s has no set_grad_checkpointing; ignored", cfg.model)
    # [1] DDP wrap + device placement; stems/decoders not in this step's stream get no gradient, hence unused params
    model = ray.train.torch.prepare_model(pretrainer, parallel_strategy_kwargs={"find_unused_parameters": True})
    optimizer = make_optimizer(_core(model), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))

    start, position, history = 0, {}, []
    checkpoint = ray.train.get_checkpoint()  # [2] the latest reported checkpoint: a restart or a resubmission
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state, history = load_state(Path(directory))
        _core(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, position = int(state["step"]), state["data_position"]
        for group in optimizer.param_groups:  # the schedule follows this run's --max-steps and --lr
            group["initial_lr"] = cfg.lr
            group["lr"] = cfg.lr * lr_factor(start, cfg)
        scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
        if rank == 0:
            log.info("resuming from checkpoint at step %d (data position %s)", start, position)

    names = list(plan.streams)
    weights = [plan.weights[n] if cfg.stream_sampling == "proportional" else 1.0 for n in names]
    shards = {name: ray.train.get_dataset_shard(name) for name in names}  # [3] this worker's slice of each stream
    terms = TERMS[cfg.objective]
    if cfg.objective == "noisy-labels":
        classes, val_names, val_stems = noisy.noisy_from_summary(plan.lineage["noisy"])
        val_shards = {name: ray.train.get_dataset_shard(name) for name in val_names}  # [3] ... and of validation
    collates = stream_collates(plan, device, cfg.feed_normalize)  # native chips normalised here (on the GPU if any)
    stem_collates = {n: consumer_collate(s.mean, s.std, device, cfg.feed_normalize) for n, s in plan.stems.items()}
    feed = StreamFeed(shards, batch_size=cfg.batch_size, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer,
                      prefetch_batches=cfg.prefetch_batches, position=position, device=device, collates=collates)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16
                else contextlib.nullcontext())
    public = config["public_cfg"]
    started = last_end = time.perf_counter()
    for step in range(start, cfg.max_steps):
        step_no = step + 1
        maybe_inject_kill(cfg, step_no, rank, world)
        t_start = time.perf_counter()
        wait = 0.0
        sums = dict.fromkeys(("loss", *terms), 0.0)
        chips = 0
        used = []
        optimizer.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            name = pick_stream(names, weights, cfg.seed, step, micro)
            used.append(name)
            t0 = time.perf_counter()
            batch = feed.next(name)
            wait += time.perf_counter() - t0
            generator = torch.Generator(device=device)
            generator.manual_seed(((cfg.seed * 1_000_003 + step) * 64 + micro) * 4096 + rank)
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or not isinstance(model, DistributedDataParallel) else (
                model.no_sync())
            with sync:
                with autocast:
                    out = objective_step(model, cfg, batch, plan.streams[name].stems, device, generator)
                (out["loss"] / cfg.grad_accum).backward()
            for key in sums:
                sums[key] += float(torch.as_tensor(out[key]).detach().float()) / cfg.grad_accum
            chips += batch["image"].shape[0]
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_end = time.perf_counter()
        step_s, wall_s, last_end = t_end - t_start, t_end - last_end, t_end  # wall: also the last report's wait
        *means, wait_mean, step_mean, wall_mean = _mean_across_ranks([*sums.values(), wait, step_s, wall_s], device)
        row = {
            "step": step_no, **dict(zip(sums, means, strict=True)), "lr": lr,
            "chips_per_s": chips * world / step_mean, "data_wait": wait_mean / step_mean, "stream": ",".join(used),
            "step_s": step_mean, "wall_s": wall_mean,
        }
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"loss is {row['loss']} at step {step_no} (stream {row['stream']}); lower --lr.")
        due = report_kind(step_no, cfg)  # "checkpoint", "metrics" or None
        if due == "checkpoint" and cfg.objective == "noisy-labels":  # validation with every checkpoint, all ranks
            row.update(noisy.evaluate(_core(model), val_shards, val_stems, len(classes),
                                      batch_size=cfg.batch_size, device=device, collates=stem_collates))
        history.append(row)  # every step's row: metrics.csv is written from here, whatever is reported
        metrics = {k: v for k, v in row.items()}
        if due == "metrics":
            ray.train.report(metrics)  # [4] metrics alone every --report-every steps (a barrier across workers)
        elif due == "checkpoint":
            with tempfile.TemporaryDirectory() as directory:
                if rank == 0:  # only world rank 0 writes the checkpoint directory
                    save_state(Path(directory), model=model, optimizer=optimizer, scheduler=scheduler,
                               step=step_no, position=feed.position, config=public, history=history)
                ray.train.report(  # [4] metrics and a checkpoint every K steps and at the end
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(directory) if rank == 0 else None,
                    checkpoint_dir_name=f"checkpoint_{step_no:08d}",
                )
        if rank == 0 and (step_no % cfg.log_every == 0 or step_no == cfg.max_steps or step_no == start + 1):
            log.info("%s", _progress(row, cfg, started, start))
    feed.close()


# ------------------------------------------------------------------------------------------------------ driver


def _storage(cfg: PretrainConfig) -> tuple[str, pyarrow.fs.FileSystem | None, str]:
    """``(storage_path for RunConfig, storage_filesystem or None, run directory path on that filesystem)``."""
    if cfg.storage_path is None:
        from ray.train.constants import DEFAULT_STORAGE_PATH

        root = os.path.expanduser(DEFAULT_STORAGE_PATH)
    else:
        root = cfg.storage_path
    storage, fs = run_storage(root, cfg.s3_endpoint)
    if fs is not None or "://" not in storage:
        return storage, fs, f"{storage}/{cfg.run_name}"
    import pyarrow.fs as pafs

    _, path = pafs.FileSystem.from_uri(storage)
    return storage, None, f"{path.rstrip('/')}/{cfg.run_name}"


def _run_files(cfg: PretrainConfig) -> tuple[pyarrow.fs.FileSystem, str]:
    import pyarrow.fs as pafs

    storage, fs, run_dir = _storage(cfg)
    if fs is None:
        fs = pafs.LocalFileSystem() if "://" not in storage else pafs.FileSystem.from_uri(storage)[0]
    return fs, run_dir


def check_resume(cfg: PretrainConfig, public: Mapping[str, Any], plan: FeedPlan) -> int:
    """Compare with the config saved beside the checkpoints of the same run; save this one there.

    Returns:
        How many checkpoints of the run exist already (0 for a new run).

    Raises:
        ConfigError: a key that defines the model or the data (``RESUME_LOCKED``) changed.
    """
    import pyarrow.fs as pafs

    fs, run_dir = _run_files(cfg)
    info = fs.get_file_info(f"{run_dir}/{CONFIG_FILE}")
    record = {"config": dict(public), "in_chans": plan.in_chans, "stems": {
        n: {"bands": list(s.bands), "stats_hash": s.stats_hash} for n, s in plan.stems.items()}}
    if info.type == pafs.FileType.File:
        with fs.open_input_stream(f"{run_dir}/{CONFIG_FILE}") as handle:
            old = json.loads(handle.read())
        changed = [k for k in RESUME_LOCKED if old["config"].get(k) != public.get(k)]
        if old.get("stems") != record["stems"]:
            changed.append("stems (bands or normalisation stats of the data)")
        if changed:
            raise ConfigError(
                f"Run {cfg.run_name!r} in {redact_href(str(_storage(cfg)[0]))} was started with other {changed}; "
                "a resumed run keeps the model and the data. Use a new --run-name for a new run, or restore "
                f"those settings (the first run's config is {run_dir}/{CONFIG_FILE})."
            )
    fs.create_dir(run_dir, recursive=True)
    with fs.open_output_stream(f"{run_dir}/{CONFIG_FILE}") as handle:
        handle.write(json.dumps(record, indent=2, sort_keys=True).encode())
    try:
        entries = fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True))
    except OSError:
        return 0
    return sum(1 for e in entries if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_"))


def _use_gpu(cfg: PretrainConfig) -> bool:
    import ray

    if cfg.use_gpu is not None:
        return cfg.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= 1


def train_driver_fn(cfg: PretrainConfig, public: Mapping[str, Any]) -> tuple[Any, FeedPlan]:
    """Plan the data, build the ``TorchTrainer`` and fit it; returns the Ray Train ``Result`` and the plan."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    plan, datasets = get_datasets(cfg)
    existing = check_resume(cfg, public, plan)
    if existing:
        log.info("run %r has %d checkpoint(s) in storage: resuming from the latest", cfg.run_name, existing)
    use_gpu = _use_gpu(cfg)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    scaling = ray.train.ScalingConfig(  # [5] workers, devices and what each reserves
        num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources
    )
    storage_path, storage_fs, _ = _storage(cfg)
    run_config = ray.train.RunConfig(  # [6] the same (name, storage_path) resumes the run
        name=cfg.run_name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
    )
    trainer = TorchTrainer(  # [7] one train_fn_per_worker per worker, gloo on CPU, nccl on GPU
        train_fn_per_worker,
        dataset_config=ray.train.DataConfig(datasets_to_split=list(plan.streams)),  # validation sets stay whole
        train_loop_config={"cfg": to_dict(cfg), "public_cfg": dict(public), "plan": plan_to_dict(plan)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run_config,
        datasets=datasets,
    )
    log.info("training %s on %d %s worker(s), %d stems %s, storage %s/%s", cfg.model, cfg.num_workers,
             "GPU" if use_gpu else "CPU", len(plan.stems), plan.in_chans, redact_href(storage_path), cfg.run_name)
    return trainer.fit(), plan  # [8] blocks until max_steps, restarting workers up to max_failures times


# ------------------------------------------------------------------------------------------------------ export


def export(cfg: PretrainConfig, plan: FeedPlan, checkpoint: Any) -> dict[str, Path]:
    """Write ``encoder.pt``, ``encoder.json``, ``metrics.csv`` and ``loss.png`` to ``--output`` from a checkpoint;
    with ``--objective noisy-labels`` also ``model_full.pt``, the whole segmentation model kept for analysis."""
    import torch

    import rsvheat
    from rsvheat.ssl import export_encoder

    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as directory:
        state, history = load_state(Path(directory))
    (output / METRICS_FILE).write_text(metrics_csv_text(history, COLUMNS[cfg.objective]))
    pretrainer = build_pretrainer(cfg, plan)
    pretrainer.load_state_dict(state["model"])
    per_stem_hash = {n: s.stats_hash for n, s in plan.stems.items()}
    stats = {"stats_hash": combined_stats_hash(per_stem_hash),
             **{n: {"mean": list(s.mean), "std": list(s.std)} for n, s in plan.stems.items()}}
    lineage = {**plan.lineage, "stats_hash_per_stem": per_stem_hash, "run_name": cfg.run_name,
               "steps": int(state["step"]), "config": state["config"]}
    bands = {n: list(s.bands) for n, s in plan.stems.items()}
    encoder_path = output / "encoder.pt"
    versions = sorted({str(d.get("dataset_version")) for d in plan.lineage.get("datasets", [])})
    metrics = {k: float(history[-1][k]) for k in ("loss", *TERMS[cfg.objective])} if history else None
    scored = [r for r in history if isinstance(r.get("val_miou"), float)]
    if metrics is not None and scored:
        metrics.update({k: float(scored[-1][k]) for k in ("val_miou", "clean_miou") if k in scored[-1]})
    extra: dict[str, Any] = {"objective": cfg.objective}
    if cfg.objective == "noisy-labels":
        extra["task"] = pretrainer.task_config  # the pretraining head, which transfer leaves behind
        extra["classes"] = list(plan.lineage["noisy"]["classes"])
    common = {"bands": bands, "stats": stats, "step": int(state["step"]), "dataset_version": "+".join(versions) or None,
              "metrics": metrics}
    export_encoder(pretrainer, encoder_path, lineage=lineage, extra=extra, **common)
    outputs = ["encoder.pt", "encoder.json", METRICS_FILE, "loss.png"]
    if cfg.objective == "noisy-labels":
        rsvheat.save_checkpoint(output / "model_full.pt", pretrainer, extra={**extra, "lineage": lineage}, **common)
        outputs.append("model_full.pt")
    encoder = pretrainer.encoder
    img_size = cfg.img_size or max(s.chip_shape[1] for s in plan.stems.values())
    item = mlm_item(
        encoder_path, run_name=cfg.run_name, model=cfg.model, model_kwargs=getattr(encoder, "model_kwargs", {}),
        stems={n: {"bands": s.bands, "mean": s.mean, "std": s.std, "stats_hash": s.stats_hash,
                   "modality": s.modality} for n, s in plan.stems.items()},
        img_size=img_size, num_features=int(encoder.feature_info[-1]["num_chs"]),
        total_parameters=sum(p.numel() for p in encoder.parameters()), lineage=lineage, steps=int(state["step"]),
        framework_version=str(torch.__version__),
        hyperparameters={k: state["config"].get(k) for k in (
            "lr", "weight_decay", "warmup_steps", "batch_size", "grad_accum", "num_workers", "max_steps",
            *(("fuse_at", "con_mode", "temperature", "masking", "loss_weights") if cfg.objective == "ssl" else (
                "objective", "labels", "clean_labels", "val_fraction", "label_smoothing", "small_loss_drop",
                "dice_weight")))},
    )
    (output / "encoder.json").write_text(json.dumps(item, indent=2))
    plot_loss_png(history, output / "loss.png", title=f"{cfg.model} run {cfg.run_name} ({cfg.objective})",
                  terms=TERMS[cfg.objective])
    return {name: output / name for name in outputs}


# ------------------------------------------------------------------------------------------------------ main


def _sample_data(cfg: PretrainConfig) -> PretrainConfig:
    """No ``--data``: ingest the sample catalog ``--samples`` into ``OUTPUT/sample-data`` first (idempotent)."""
    if cfg.data:
        return cfg
    from jobs.ingest import IngestConfig, run_ingest

    samples = Path(cfg.samples)
    target = str(Path(cfg.output).resolve() / "sample-data")
    summary = run_ingest(IngestConfig(catalog=str(samples.resolve()), output=target, chip_size=120, workers=2,
                                      progress=False))
    log.info("sample data: %d chips in %s (exit %d)", summary.chips_written, target, summary.exit_code)
    return replace(cfg, data=(target,))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = resolve_smoke(parse_config(PretrainConfig, argv, description=__doc__.split("\n\n")[0]))
        cfg = replace(cfg, output=str(Path(cfg.output).resolve()),
                      data=tuple(d if "://" in d else str(Path(d).resolve()) for d in cfg.data))
        validate(cfg)
        init_ray()  # join the cluster (RAY_ADDRESS under `ray job submit`) or start a local one
        cfg = _sample_data(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    public = public_config(cfg)
    log.info("config: %s", json.dumps(public, sort_keys=True))  # the resolved config, logged once
    try:
        result, plan = train_driver_fn(cfg, public)
    except (ConfigError, ValueError, FileNotFoundError, LookupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as err:  # ray.train.TrainingFailedError: max_failures exhausted
        log.error("training failed: %s: %s", type(err).__name__, err)
        return EXIT_FAILED
    if result.error is not None or result.checkpoint is None:
        log.error("training failed: %s", result.error or "no checkpoint was reported")
        return EXIT_FAILED
    files = export(cfg, plan, result.checkpoint)
    log.info("checkpoint %s", redact_href(result.checkpoint.path))
    for path in files.values():
        log.info("wrote %s", path)
    print(f"pretraining done: {result.metrics.get('step')} steps, loss {result.metrics.get('loss', float('nan')):.4f};"
          f" encoder {files['encoder.pt']}")
    return EXIT_OK


if __name__ == "__main__":
    # NOTE: run through the importable module, so Ray pickles `jobs.pretrain.train_fn_per_worker` by reference and the
    # workers resolve PretrainConfig's type hints there, not in their own `__main__`.
    from jobs.pretrain import main as _main

    sys.exit(_main())

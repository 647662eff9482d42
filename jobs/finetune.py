"""Fine-tuning on Ray Tune: a search over learning rate, freezing and augmentation, ASHA early stopping, one best model.

Run locally or on a cluster::

    python jobs/finetune.py --smoke-test --output /tmp/ft                  # sample data, 2 CPU workers, 2 trials
    python jobs/finetune.py --task multilabel --data out/demo --labels ben-multilabel \
        --pretrained out/pretrain/encoder.pt --num-samples 8 --output out/ft-ben
    ray job submit --working-dir . -- python jobs/finetune.py --config jobs/configs/finetune_sample.yaml \
        --data s3://bucket/datasets/s2 --pretrained s3://bucket/models/encoder.pt --use-gpu --num-workers 2 \
        --storage-path s3://bucket/runs --output /shared/models/ft-s2

Steps (docs/finetune-job.md):

1. **Plan** on the driver: the label set (``--labels``, or the dataset's only one of the task's kind), a
   deterministic spatially separated train/val split, the pretrained checkpoint read once and its stems matched to
   the data's bands (a clear error before any trial starts when they cannot be).
2. **Search** with ``Tuner``: one function trainable per trial builds a ``TorchTrainer`` over ``--num-workers``
   workers and reports each epoch's validation metric through ``TuneReportCallback``; ``ASHAScheduler`` stops trials
   that fall behind; ``max_concurrent_trials`` follows the cluster's CPUs and GPUs.
3. **Export**: ``results.csv`` (one row per trial: hyper-parameters, best metric, the epoch it stopped at), the best
   trial's best epoch as ``best.pt`` (self-describing: task, classes, bands, stats) and ``best.json`` (STAC ``mlm``).

Ray touchpoints are numbered ``# [n]``. Exit status: 0 done, 3 done but some trials failed, 1 no trial produced a
model, 2 bad configuration.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/finetune.py` (also under `ray job submit --working-dir .`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import csv
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from jobs._config import ConfigError, parse_config, parse_pairs, to_dict
from jobs._finetune_data import TaskData, build_split_datasets, plan_task, split_nbytes
from jobs._finetune_loop import AUGMENTS, MODEL_FILE, TASK_METRICS, TrialSettings, train_fn_per_worker
from jobs._finetune_model import ENCODER_MODES
from jobs._ray import fits_object_store, init_ray, run_storage
from jobs._search_space import parse_search, to_tune
from jobs._trial_cleanup import ReleaseTrialWorkers
from pipeline.cog import redact_href

__all__ = ["FinetuneConfig", "main", "run_finetune", "trial_fn"]

log = logging.getLogger("jobs.finetune")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_PARTIAL = 0, 1, 2, 3
TaskChoice = Literal["classification", "multilabel", "segmentation", "change", "detection"]
DEFAULT_SAMPLES = ".cache/samples/catalog.json"
DATA_CPUS = 1.0  # CPUs no trial may reserve: the data feed's read tasks run there


@dataclass(frozen=True)
class FinetuneConfig:
    """Configuration of ``jobs/finetune.py``; every field is a flag (``--num-samples``) and a YAML key."""

    # Task and data
    task: TaskChoice = field(default="multilabel", metadata={"help": "downstream task"})
    data: str | None = field(default=None, metadata={"help": "ingest output with labels (local dir or s3://)"})
    labels: str | None = field(default=None, metadata={"help": "label set name (default: the only one of the kind)"})
    val_fraction: float = field(default=0.2, metadata={"help": "share of spatial blocks held out for validation"})
    split_block_chips: int = field(default=2, metadata={"help": "side of a spatial split block, in chip widths"})
    s3_endpoint: str | None = field(default=None, metadata={"help": "S3 endpoint URL (default: AWS_ENDPOINT_URL)"})
    # Model
    pretrained: str | None = field(default=None, metadata={"help": "encoder.pt / any rsvheat checkpoint (or none)"})
    model: str = field(default="rsvheat_base", metadata={"help": "registry backbone when not --pretrained"})
    head_kwargs: tuple[str, ...] = field(default=(), metadata={"help": "head options KEY=VALUE, e.g. channels=64"})
    min_band_overlap: float = field(default=0.5, metadata={"help": "share of data bands the pretrained stem knows"})
    # Hyper-parameters: fixed values, unless --search names them
    encoder: Literal["frozen", "full", "layer-decay"] = field(default="full", metadata={"help": "encoder training"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of the head (AdamW)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on norms, biases, FVE/SCE)"})
    layer_decay: float = field(default=0.75, metadata={"help": "with --encoder layer-decay: lr factor per layer"})
    augment: Literal["none", "flip", "flip-rot90"] = field(default="flip", metadata={"help": "augmentations"})
    search: tuple[str, ...] = field(
        default=(), metadata={"help": "searched keys KEY=DIST(ARGS), e.g. 'lr=loguniform(1e-4, 3e-3)'"}
    )
    # Search
    num_samples: int = field(default=4, metadata={"help": "trials (times each grid(...) combination)"})
    metric: str | None = field(default=None, metadata={"help": "validation metric to maximise (default per task)"})
    epochs: int = field(default=10, metadata={"help": "epochs per trial (ASHA's max_t)"})
    grace_period: int = field(default=1, metadata={"help": "ASHA: epochs before a trial may be stopped"})
    reduction_factor: int = field(default=2, metadata={"help": "ASHA: keep 1/reduction_factor at each rung"})
    max_concurrent_trials: int = field(default=0, metadata={"help": "0: as many as the cluster's resources fit"})
    seed: int = field(default=0, metadata={"help": "seed of the split, search, weights and augmentation"})
    # Per trial
    batch_size: int = field(default=8, metadata={"help": "chips per worker and step"})
    num_workers: int = field(default=2, metadata={"help": "Ray Train workers per trial"})
    use_gpu: bool | None = field(default=None, metadata={"help": "one GPU per worker (default: when the cluster has)"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs reserved per worker"})
    trial_cpus: float = field(default=0.5, metadata={"help": "CPUs reserved by each trial's driver actor"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on GPU (CPU runs stay fp32)"})
    # Run and storage
    run_name: str = field(default="finetune", metadata={"help": "Tune experiment name"})
    storage_path: str | None = field(default=None, metadata={"help": "run storage (default OUTPUT/runs; s3:// ok)"})
    output: str = field(default="out/finetune", metadata={"help": "results.csv, best.pt, best.json"})
    samples: str = field(default=DEFAULT_SAMPLES, metadata={"help": "sample catalog used when --data is empty"})
    smoke_test: bool = field(default=False, metadata={"help": "2 CPU workers, *_test model, 2 trials, 2 epochs"})


# ---------------------------------------------------------------------------------------------------- config


def resolve_smoke(cfg: FinetuneConfig) -> FinetuneConfig:
    """``--smoke-test``: the same path, smaller: 2 CPU workers, the ``*_test`` model, 2 trials of 2 small epochs."""
    if not cfg.smoke_test:
        return cfg
    import rsvheat

    family = cfg.model if cfg.model.endswith("_test") else f"{cfg.model.split('_')[0]}_test"
    return replace(
        cfg, model=family if rsvheat.is_model(family) else "rsvheat_test", num_workers=2, use_gpu=False,
        cpus_per_worker=min(cfg.cpus_per_worker, 0.4), trial_cpus=min(cfg.trial_cpus, 0.1),
        epochs=min(cfg.epochs, 2), batch_size=min(cfg.batch_size, 2),
        num_samples=1 if not cfg.search else min(cfg.num_samples, 2),
        search=cfg.search or ("lr=grid(3e-3, 1e-6)",), head_kwargs=cfg.head_kwargs or _small_head(cfg.task),
    )


def _small_head(task: str) -> tuple[str, ...]:
    return () if task in ("classification", "multilabel") else ("channels=16",)


def validate(cfg: FinetuneConfig) -> None:
    """Reject impossible settings up front, naming the flag.

    Raises:
        ConfigError: the first bad setting.
    """
    import rsvheat

    if cfg.data is None and not Path(cfg.samples).exists():
        raise ConfigError(
            f"No --data given and no sample catalog at {cfg.samples}: pass --data DIR (an ingest output with a "
            "label set, see jobs/labels.py) or --samples /absolute/path/catalog.json (python -m pipeline.samples)."
        )
    if cfg.pretrained is None and not rsvheat.is_model(cfg.model):
        raise ConfigError(f"--model {cfg.model!r} is not registered; choose one of {rsvheat.list_models()}.")
    for key in ("epochs", "num_samples", "batch_size", "num_workers", "grace_period", "split_block_chips"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(cfg, key)}.")
    if cfg.reduction_factor < 2:
        raise ConfigError(f"--reduction-factor must be at least 2, got {cfg.reduction_factor}.")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {cfg.val_fraction}.")
    if cfg.lr <= 0 or cfg.weight_decay < 0 or not 0 < cfg.layer_decay <= 1:
        raise ConfigError(
            f"--lr must be > 0, --weight-decay >= 0 and --layer-decay in (0, 1]; got {cfg.lr}, {cfg.weight_decay}, "
            f"{cfg.layer_decay}."
        )
    if cfg.cpus_per_worker <= 0 or cfg.trial_cpus <= 0:
        raise ConfigError(f"--cpus-per-worker and --trial-cpus must be > 0, got {cfg.cpus_per_worker}, "
                          f"{cfg.trial_cpus}.")
    if not cfg.run_name or any(c in cfg.run_name for c in "/\\") or cfg.run_name in (".", ".."):
        raise ConfigError(f"--run-name {cfg.run_name!r} must be a plain name (no slashes).")
    metric = cfg.metric or TASK_METRICS[cfg.task][0]
    if metric not in TASK_METRICS[cfg.task][1]:
        raise ConfigError(f"--metric {metric!r} is not reported for --task {cfg.task}; choose one of "
                          f"{list(TASK_METRICS[cfg.task][1])}.")
    parse_search(cfg.search, {"encoder": ENCODER_MODES, "augment": AUGMENTS})
    parse_pairs(cfg.head_kwargs, "head_kwargs")


def public_config(cfg: FinetuneConfig) -> dict[str, Any]:
    """The resolved config as plain data, URLs without user info or query strings (no secrets in logs/files)."""
    data = to_dict(cfg)
    for key in ("data", "pretrained", "storage_path", "s3_endpoint"):
        if data.get(key):
            data[key] = redact_href(data[key])
    return data


# ---------------------------------------------------------------------------------------------------- resources


def trial_resources(cfg: FinetuneConfig, use_gpu: bool) -> tuple[dict[str, float], int]:
    """CPUs (and GPUs) one trial holds, and how many trials the cluster runs at once.

    Raises:
        ConfigError: one trial needs more than the whole cluster has.
    """
    import ray

    cluster = ray.cluster_resources()
    need_cpu = cfg.trial_cpus + cfg.num_workers * cfg.cpus_per_worker
    need_gpu = cfg.num_workers if use_gpu else 0
    # DATA_CPUS stay free for the Ray Data read tasks that feed the workers; without them every trial waits forever.
    fits = math.floor((cluster.get("CPU", 0) - DATA_CPUS) / need_cpu + 1e-9)
    if need_gpu:
        fits = min(fits, math.floor(cluster.get("GPU", 0) / need_gpu + 1e-9))
    if cfg.max_concurrent_trials > 0:
        return {"CPU": need_cpu, "GPU": need_gpu}, cfg.max_concurrent_trials  # e.g. an autoscaling cluster
    if fits < 1:
        raise ConfigError(
            f"One trial needs {need_cpu:g} CPUs and {need_gpu} GPUs ({cfg.num_workers} workers x "
            f"{cfg.cpus_per_worker:g} CPU + {cfg.trial_cpus:g} for the trial driver) plus {DATA_CPUS} CPU left for "
            "reading the data, but the cluster has "
            f"{cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs. Lower --num-workers or "
            "--cpus-per-worker, or pass --max-concurrent-trials N on an autoscaling cluster."
        )
    return {"CPU": need_cpu, "GPU": need_gpu}, fits


# ---------------------------------------------------------------------------------------------------- trials


def _storage(cfg: FinetuneConfig) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem or None)`` for RunConfig: ``--storage-path`` or ``OUTPUT/runs``."""
    return run_storage(cfg.storage_path or str(Path(cfg.output) / "runs"), cfg.s3_endpoint)


def trial_fn(config: dict[str, Any], fixed: Mapping[str, Any]) -> None:
    """One trial (a Tune function trainable): a ``TorchTrainer`` over the searched ``config``."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    plan = TaskData.from_dict(fixed["data"])
    settings = fixed["settings"]
    hp = {**fixed["hp"], **config}
    use_gpu = bool(fixed["use_gpu"])
    storage_path, storage_fs = fixed["storage"]
    trainer = TorchTrainer(  # [1] a multi-worker trial: DDP over num_workers, gloo on CPU, nccl on GPU
        train_fn_per_worker,
        train_loop_config={"settings": settings, "data": fixed["data"], "hp": hp,
                           "pretrained_blob": fixed.get("pretrained_blob")},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=fixed["num_workers"], use_gpu=use_gpu,
            resources_per_worker={"CPU": fixed["cpus_per_worker"], **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(  # [2] metrics and checkpoints flow to Tune through the callback
            name=f"{fixed['run_name']}-trial-{ray.tune.get_context().get_trial_id()}",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=fixed["metric"], checkpoint_score_order="max"),
        ),
        datasets=fixed["datasets"] or build_split_datasets(plan, materialize=False),  # [3] train split across
        # workers, val read whole by rank 0
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    trainer.fit()


# ---------------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class TrialRow:
    """One row of ``results.csv``."""

    trial_id: str
    status: str
    stopped_early: bool
    epochs_run: int
    best_epoch: int | None
    best: float | None
    last: float | None
    hyperparameters: dict[str, Any]
    checkpoint: str | None
    error: str | None
    curve: tuple[float, ...] = ()  # the metric after each epoch run


def _row(result: Any, metric: str, epochs: int, searched: Sequence[str]) -> TrialRow:
    frame = result.metrics_dataframe
    history = [] if frame is None or metric not in frame else frame.to_dict("records")
    scored = [r for r in history if r.get(metric) is not None and math.isfinite(float(r[metric]))]
    best = max(scored, key=lambda r: (float(r[metric]), -int(r["epoch"]))) if scored else None
    path = None
    if best is not None:
        # The best epoch's checkpoint (kept by CheckpointConfig's score order); ties: the earliest such epoch.
        path = best.get("checkpoint_path")
    metrics = result.metrics or {}
    epochs_run = int(metrics.get("epoch") or len(history))
    error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"
    return TrialRow(
        trial_id=str(metrics.get("trial_id") or Path(result.path).name),
        status="ERROR" if error else "TERMINATED",
        stopped_early=error is None and epochs_run < epochs,
        epochs_run=epochs_run,
        best_epoch=None if best is None else int(best["epoch"]),
        best=None if best is None else float(best[metric]),
        last=None if not scored else float(scored[-1][metric]),
        hyperparameters={k: result.config.get(k) for k in searched},
        checkpoint=path,
        error=error,
        curve=tuple(float(r[metric]) for r in sorted(scored, key=lambda r: int(r["epoch"]))),
    )


def results_csv_text(rows: Sequence[TrialRow], metric: str, fixed_hp: Mapping[str, Any]) -> str:
    """``results.csv``: one row per trial, best first; every hyper-parameter of the trial, searched or fixed."""
    keys = sorted({*fixed_hp, *(k for r in rows for k in r.hyperparameters)})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial_id", "status", *keys, metric, "best_epoch", f"{metric}_last", "epochs_run",
                     "stopped_early", f"{metric}_per_epoch", "error"])
    ordered = sorted(rows, key=lambda r: (r.best is None, -(r.best or 0.0), r.trial_id))
    for r in ordered:
        hp = {**fixed_hp, **r.hyperparameters}
        writer.writerow([r.trial_id, r.status, *(hp.get(k) for k in keys), r.best, r.best_epoch, r.last,
                         r.epochs_run, r.stopped_early, " ".join(f"{v:.6g}" for v in r.curve), r.error or ""])
    return buffer.getvalue()


def _read_checkpoint_file(uri: str, storage_fs: Any) -> bytes:
    import pyarrow.fs as pafs

    fs, path = (storage_fs, uri) if storage_fs is not None else (
        (pafs.LocalFileSystem(), uri) if "://" not in uri else pafs.FileSystem.from_uri(uri))
    with fs.open_input_stream(f"{path.rstrip('/')}/{MODEL_FILE}") as handle:
        return bytes(handle.read())


def task_mlm_item(best_path: Path, meta: Mapping[str, Any], plan: TaskData, row: TrialRow, metric: str,
                  cfg: FinetuneConfig) -> dict[str, Any]:
    """A STAC Item (``mlm`` extension) describing ``best.pt``: inputs, the task's output, the metric, lineage."""
    import datetime as dt

    from jobs._pretrain_outputs import FILE_SCHEMA, MLM_SCHEMA, mlm_inputs, weights_asset

    size = plan.chip_shape[1]
    stems = {plan.stem: {"bands": plan.bands, "mean": plan.mean, "std": plan.std, "modality": plan.modality}}
    k = len(plan.classes)
    outputs = {
        "classification": ([-1, k], ["batch", "class"], "class logits; argmax is the class"),
        "multilabel": ([-1, k], ["batch", "class"], "class logits; sigmoid > 0.5 marks each class"),
        "segmentation": ([-1, k, size, size], ["batch", "class", "height", "width"], "per-pixel class logits"),
        "change": ([-1, 1, size, size], ["batch", "channel", "height", "width"], "change logit of (before, after)"),
        "detection": ([-1, -1, 6], ["batch", "box", "xyxy+score+class"], "decoded boxes in chip pixels"),
    }[plan.task]
    mlm_task = {"classification": "classification", "multilabel": "classification",
                "segmentation": "semantic-segmentation", "change": "segmentation",
                "detection": "object-detection"}[plan.task]
    run = f"{meta['model']}-{cfg.run_name}"
    properties = {
        "datetime": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "description": f"{meta['model']} fine-tuned for {plan.task} on label set {plan.labels!r} by "
        f"jobs/finetune.py (trial {row.trial_id}, epoch {row.best_epoch}, val {metric} {row.best:.4f}); load with "
        "rsvheat.load_checkpoint.",
        "mlm:name": run,
        "mlm:architecture": meta["model"],
        "mlm:tasks": [mlm_task],
        "mlm:framework": "pytorch",
        "mlm:framework_version": str(meta.get("versions", {}).get("torch")),
        "mlm:memory_size": best_path.stat().st_size,
        "mlm:pretrained": cfg.pretrained is not None,
        "mlm:pretrained_source": redact_href(cfg.pretrained) if cfg.pretrained else None,
        "mlm:accelerator": None,
        "mlm:accelerator_constrained": False,
        "mlm:hyperparameters": dict(row.hyperparameters),
        "mlm:input": mlm_inputs(stems, size),
        "mlm:output": [{
            "name": plan.task,
            "description": outputs[2],
            "tasks": [mlm_task],
            "result": {"shape": outputs[0], "dim_order": outputs[1], "data_type": "float32"},
            "classification:classes": [{"value": i, "name": c} for i, c in enumerate(plan.classes)],
            "post_processing_function": None,
        }],
        "rsvheat:metrics": {metric: row.best, "epoch": row.best_epoch},
        "rsvheat:labels": {"name": plan.labels, "classes": list(plan.classes), "provenance": dict(plan.provenance)},
        "rsvheat:split": dict(plan.split),
        "rsvheat:dataset": {"uri": redact_href(plan.data), "collection": plan.collection,
                            "dataset_version": plan.dataset_version, "stats_hash": plan.stats_hash},
    }
    return {
        "type": "Feature", "stac_version": "1.1.0", "stac_extensions": [MLM_SCHEMA, FILE_SCHEMA], "id": run,
        "geometry": None, "properties": properties, "links": [],
        "assets": {"weights": weights_asset(best_path, f"{meta['model']} {plan.task} model (rsvheat checkpoint)")},
    }


def print_table(rows: Sequence[TrialRow], metric: str) -> None:
    """The results as an aligned table on stdout."""
    keys = sorted({k for r in rows for k in r.hyperparameters})
    header = ["trial", *keys, metric, "epoch", "ran", "status"]
    lines = [header]
    for r in sorted(rows, key=lambda r: (r.best is None, -(r.best or 0.0))):
        status = "ERROR" if r.error else ("stopped early" if r.stopped_early else "done")
        lines.append([r.trial_id, *(f"{r.hyperparameters[k]:.3g}" if isinstance(r.hyperparameters[k], float)
                                    else str(r.hyperparameters[k]) for k in keys),
                      "-" if r.best is None else f"{r.best:.4f}", str(r.best_epoch or "-"), str(r.epochs_run),
                      status])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))


# ---------------------------------------------------------------------------------------------------- driver


def _sample_data(cfg: FinetuneConfig) -> FinetuneConfig:
    """No ``--data``: the sample task of ``--task`` (docs/finetune-job.md "Sample tasks"), built once."""
    if cfg.data is not None:
        return cfg
    from jobs._finetune_samples import build_sample_task

    data, labels = build_sample_task(cfg.task, Path(cfg.samples), Path(cfg.output).resolve() / "sample-data")
    return replace(cfg, data=data, labels=cfg.labels or labels)


def run_finetune(cfg: FinetuneConfig) -> int:
    """Plan, search, export; returns the exit status (see the module docstring)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from jobs._model_io import read_checkpoint
    from rsvheat.transfer import match_stem

    assert cfg.data is not None
    metric = cfg.metric or TASK_METRICS[cfg.task][0]
    plan = plan_task(cfg.data, cfg.task, labels=cfg.labels, val_fraction=cfg.val_fraction,
                     block_chips=cfg.split_block_chips, seed=cfg.seed, s3_endpoint=cfg.s3_endpoint)
    log.info("labels %r (%d classes) on %s: %d train / %d val chips in %d spatial blocks (%d guard-dropped)",
             plan.labels, len(plan.classes), plan.collection, len(plan.train_keys), len(plan.val_keys),
             plan.split["blocks"], plan.split["guard_dropped"])
    blob_ref = None
    if cfg.pretrained is not None:
        blob = read_checkpoint(cfg.pretrained, s3_endpoint=cfg.s3_endpoint, flag="--pretrained")
        match = match_stem(blob.meta.get("bands") or {}, plan.bands, plan.stem, min_overlap=cfg.min_band_overlap,
                           source=redact_href(cfg.pretrained))  # fails here, before any trial, when bands don't fit
        log.info("pretrained %s (%s): stem %r -> %r%s", redact_href(cfg.pretrained), blob.meta["model"],
                 match.source, match.target, f", new bands {list(match.new_bands)}" if match.new_bands else "")
        blob_ref = ray.put(blob.data)  # [4] workers get the weights through the object store, not a shared disk
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) >= 1
    resources, concurrent = trial_resources(cfg, use_gpu)
    space = parse_search(cfg.search, {"encoder": ENCODER_MODES, "augment": AUGMENTS})
    fixed_hp = {k: getattr(cfg, k) for k in ("lr", "weight_decay", "layer_decay", "encoder", "augment")
                if k not in space}
    settings = TrialSettings(
        model=cfg.model, pretrained=redact_href(cfg.pretrained) if cfg.pretrained else None, epochs=cfg.epochs,
        batch_size=cfg.batch_size, cpus_per_worker=cfg.cpus_per_worker, seed=cfg.seed,
        head_kwargs=parse_pairs(cfg.head_kwargs, "head_kwargs"), min_band_overlap=cfg.min_band_overlap,
        bf16=cfg.bf16, metric=metric,
    )
    storage = _storage(cfg)
    datasets = None
    if fits_object_store(split_nbytes(plan)):
        log.info("decoding the %d labelled chips once (%.1f MB) for every trial and epoch",
                 len(plan.train_keys) + len(plan.val_keys), split_nbytes(plan) / 1e6)
        datasets = build_split_datasets(plan, materialize=True)  # [9] decoded once, shared by all trials
    fixed = {"datasets": datasets, "data": plan.to_dict(), "settings": asdict(settings), "hp": fixed_hp,
             "use_gpu": use_gpu, "num_workers": cfg.num_workers, "cpus_per_worker": cfg.cpus_per_worker,
             "metric": metric, "run_name": cfg.run_name, "storage": storage, "pretrained_blob": blob_ref}
    trainable = tune.with_resources(tune.with_parameters(trial_fn, fixed=fixed),
                                    {"cpu": cfg.trial_cpus})  # [5] the trial actor; its workers reserve their own
    scheduler = ASHAScheduler(  # [6] early stopping: at each rung keep the best 1/reduction_factor
        time_attr="training_iteration", max_t=cfg.epochs, grace_period=min(cfg.grace_period, cfg.epochs),
        reduction_factor=cfg.reduction_factor)
    tuner = tune.Tuner(  # [7] the search; trials run concurrently as far as the cluster fits them
        trainable,
        param_space=to_tune(space),
        tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=cfg.num_samples, scheduler=scheduler,
                                    search_alg=BasicVariantGenerator(random_state=cfg.seed,
                                                                     max_concurrent=concurrent)),
        run_config=tune.RunConfig(name=cfg.run_name, storage_path=storage[0], storage_filesystem=storage[1],
                                  callbacks=[ReleaseTrialWorkers()]),  # stopped trials free their workers
    )
    log.info("searching %s over %s (fixed %s): %d sample(s), up to %d trial(s) at once, each %d %s worker(s) "
             "(%s per trial)", metric, space or "nothing", fixed_hp, cfg.num_samples, concurrent, cfg.num_workers,
             "GPU" if use_gpu else "CPU", resources)
    grid = tuner.fit()  # [8] blocks until every trial finished or was stopped
    rows = [_row(result, metric, cfg.epochs, list(space)) for result in grid]
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.csv").write_text(results_csv_text(rows, metric, fixed_hp))
    print_table(rows, metric)
    scored = [r for r in rows if r.best is not None and r.checkpoint]
    if not scored:
        for r in rows:
            log.error("trial %s: %s", r.trial_id, r.error or "reported no metric")
        return EXIT_FAILED
    best = max(scored, key=lambda r: (r.best, -(r.best_epoch or 0)))
    return _export(cfg, plan, best, metric, storage[1], rows)


def _export(cfg: FinetuneConfig, plan: TaskData, best: TrialRow, metric: str, storage_fs: Any,
            rows: Sequence[TrialRow]) -> int:
    import rsvheat

    output = Path(cfg.output)
    data = _read_checkpoint_file(str(best.checkpoint), storage_fs)
    best_path = output / "best.pt"
    with tempfile.NamedTemporaryFile(dir=output, suffix=".tmp", delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, best_path)
    os.chmod(best_path, 0o644)
    meta = rsvheat.load_checkpoint_meta(best_path)
    (output / "best.json").write_text(json.dumps(task_mlm_item(best_path, meta, plan, best, metric, cfg), indent=2))
    failed = [r for r in rows if r.error]
    print(f"fine-tuning done: best trial {best.trial_id} {metric} {best.best:.4f} at epoch {best.best_epoch} "
          f"({len(rows)} trials, {sum(r.stopped_early for r in rows)} stopped early, {len(failed)} failed); "
          f"{output / 'results.csv'}, {best_path}, {output / 'best.json'}")
    return EXIT_PARTIAL if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = resolve_smoke(parse_config(FinetuneConfig, argv, description=__doc__.split("\n\n")[0]))
        cfg = replace(cfg, output=str(Path(cfg.output).resolve()),
                      data=cfg.data if cfg.data is None or "://" in cfg.data else str(Path(cfg.data).resolve()),
                      pretrained=cfg.pretrained if cfg.pretrained is None or "://" in cfg.pretrained
                      else str(Path(cfg.pretrained).resolve()))
        validate(cfg)
        init_ray()  # join the cluster (RAY_ADDRESS under `ray job submit`) or start a local one
        cfg = _sample_data(cfg)
        log.info("config: %s", json.dumps(public_config(cfg), sort_keys=True))
        return run_finetune(cfg)
    except (ConfigError, FileNotFoundError, LookupError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    # NOTE: run through the importable module, so Ray pickles `jobs.finetune.trial_fn` by reference.
    from jobs.finetune import main as _main

    sys.exit(_main())

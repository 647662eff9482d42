"""Self-describing checkpoints: weights plus everything needed to rebuild and correctly feed the model.

A checkpoint is a ``torch.save``d dict ``{"meta": ..., "state_dict": ...}`` of plain data only (dicts, lists, str,
numbers, tensors), so :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)`` and never unpickles code.
``meta`` records the registry name and kwargs (and, for task models, the task config), the band names and
normalisation stats per modality with their ``stats_hash``, the dataset version, progress and metrics, the pretraining
image size and FVE/SCE shapes (docs/hco.md §Resolution changes), and the torch/Ray versions and git sha. Nothing from
the environment.

Fine-tuning and inference call :func:`check_stats` to refuse data normalised with other stats
(docs/data-format.md §Statistics).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import os
import pickle
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsvheat._registry import create_model
from rsvheat.errors import StatsMismatchError
from rsvheat.tasks import BaseTaskModel, build_task_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "check_stats",
    "load_checkpoint",
    "load_checkpoint_meta",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "rsvheat.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
_STATS_SCALAR_KEYS = ("stats_hash", "stats_version")


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is data that ``torch.load(weights_only=True)`` can read back."""
    # NOTE: exact types on purpose: str/float subclasses (torch.__version__, numpy scalars) pickle as their class.
    if value is None or type(value) in (str, bool, int, float) or isinstance(value, torch.Tensor):
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"Checkpoint field {where} has a key {key!r} of type {type(key).__name__}; use str.")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"Checkpoint field {where} is a {type(value).__name__} ({value!r:.80}); only dicts, lists, tuples, str, "
        "numbers, None and tensors can be stored. Convert it to plain data first."
    )


def _plain_copy(value: Any) -> Any:
    """Mappings -> dicts, and str/number subclasses (e.g. numpy scalars) -> the builtin; tuples stay tuples."""
    if isinstance(value, Mapping):
        return {key: _plain_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        items = [_plain_copy(item) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    for builtin in (bool, int, float, str):
        if isinstance(value, builtin):
            return builtin(value)
    return value


def _encoder(model: nn.Module) -> nn.Module:
    return model.encoder if isinstance(model, BaseTaskModel) else model


def _in_chans(encoder: nn.Module) -> dict[str, int]:
    in_chans = getattr(encoder, "in_chans", None)
    if isinstance(in_chans, int):
        return {str(getattr(encoder, "default_modality", "default")): in_chans}
    if not isinstance(in_chans, Mapping):
        raise ValueError(
            f"{type(encoder).__name__} has no `in_chans` dict; save_checkpoint needs a registry backbone "
            "(or a TaskModel around one)."
        )
    return {str(name): int(count) for name, count in in_chans.items()}


def _format_bands(
    bands: Mapping[str, Sequence[str]] | Sequence[str] | None, in_chans: Mapping[str, int]
) -> dict[str, list[str]] | None:
    """Validate band names per modality against the stems' band counts."""
    if bands is None:
        return None
    if not isinstance(bands, Mapping):
        if isinstance(bands, str) or len(in_chans) != 1:
            raise ValueError(
                f"bands={bands!r:.80} must be a dict {{modality: [band names]}} for modalities {list(in_chans)}."
            )
        bands = {next(iter(in_chans)): bands}
    out = {}
    for modality, names in bands.items():
        if modality not in in_chans:
            raise ValueError(
                f"bands names modality {modality!r}, but the model's modalities are {list(in_chans)}; "
                "key the band lists by the stem names."
            )
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"bands[{modality!r}] must be a list of band names, got {names!r:.80}.")
        names = list(names)
        if len(names) != in_chans[modality]:
            raise ValueError(
                f"bands[{modality!r}] lists {len(names)} bands {names} but the {modality!r} stem takes "
                f"{in_chans[modality]} (in_chans); pass exactly the bands the model was trained on, in input order."
            )
        if len(set(names)) != len(names):
            raise ValueError(f"bands[{modality!r}] repeats a band name: {names}.")
        out[modality] = names
    return out


def _format_stats(
    stats: Mapping[str, Any] | None, in_chans: Mapping[str, int]
) -> tuple[dict[str, dict[str, list[float]]] | None, str | None, str | None]:
    """Validate ``{"stats_hash": str, modality: {"mean": [...], "std": [...]}, ...}``.

    Returns:
        The per-modality stats, the stats hash and the optional stats version.
    """
    if stats is None:
        return None, None, None
    stats_hash = stats.get("stats_hash")
    if not isinstance(stats_hash, str) or not stats_hash:
        raise ValueError(
            f"stats has no 'stats_hash' string (keys: {sorted(stats)}); pass the stats block of the dataset's "
            "dataset.json, which carries the hash of the normalisation stats."
        )
    version = stats.get("stats_version")
    per_modality: dict[str, dict[str, list[float]]] = {}
    for modality, block in stats.items():
        if modality in _STATS_SCALAR_KEYS:
            continue
        if modality not in in_chans:
            raise ValueError(
                f"stats names modality {modality!r}, but the model's modalities are {list(in_chans)}; "
                "key the mean/std blocks by the stem names."
            )
        if not isinstance(block, Mapping) or not {"mean", "std"} <= set(block):
            raise ValueError(f"stats[{modality!r}] must be a dict with 'mean' and 'std' lists, got {block!r:.80}.")
        entry = {}
        for key in ("mean", "std"):
            values = [float(v) for v in block[key]]
            if len(values) != in_chans[modality]:
                raise ValueError(
                    f"stats[{modality!r}][{key!r}] has {len(values)} values but the {modality!r} stem takes "
                    f"{in_chans[modality]} bands; the stats must match the model's bands one to one."
                )
            if not all(math.isfinite(v) for v in values) or (key == "std" and min(values) <= 0):
                raise ValueError(f"stats[{modality!r}][{key!r}] = {values} must be finite (and std > 0).")
            entry[key] = values
        per_modality[modality] = entry
    return per_modality, stats_hash, None if version is None else str(version)


def _git_sha() -> str | None:
    """The commit of the source tree this package is imported from, when it is a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    bands: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    stats: Mapping[str, Any] | None = None,
    dataset_version: str | None = None,
    epoch: int | None = None,
    step: int | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a self-describing checkpoint atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        path: destination file.
        model: a registry backbone (from ``create_model``) or a task model (from ``build_task_model``), possibly
            wrapped by DistributedDataParallel or ``torch.compile``.
        bands: band names per modality, in input order, e.g. ``{"optical": ["B02", ...], "sar": ["VV", "VH"]}``;
            a plain list is accepted for a single-modality model.
        stats: normalisation stats, ``{"stats_hash": str, "stats_version": str (optional),
            modality: {"mean": [...], "std": [...]}}``, as in the dataset's ``dataset.json``.
        dataset_version: version of the dataset trained on.
        epoch: epochs completed.
        step: optimiser steps completed.
        metrics: e.g. the best validation metric so far.
        extra: any further plain data (resolved config, optimiser settings).

    Returns:
        The path written.

    Raises:
        ValueError: the model was not built through the registry, or bands/stats do not match its stems.
        TypeError: ``metrics`` or ``extra`` hold something other than plain data.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # e.g. after ray.train.torch.prepare_model; keys must not carry "module."
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper; keys must not carry "_orig_mod."
    encoder = _encoder(model)
    name = getattr(encoder, "model_name", None)
    if not isinstance(name, str):
        raise ValueError(
            f"{type(encoder).__name__} has no `model_name`; build it with rsvheat.create_model(...) (or "
            "rsvheat.build_task_model(...)) so the checkpoint can rebuild it."
        )
    in_chans = _in_chans(encoder)
    per_modality_stats, stats_hash, stats_version = _format_stats(stats, in_chans)
    img_size = getattr(encoder, "img_size", None)
    state_dict = model.state_dict()
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": name,
        "model_kwargs": getattr(encoder, "model_kwargs", {}),
        "task": model.task_config if isinstance(model, BaseTaskModel) else None,
        "in_chans": in_chans,
        "bands": _format_bands(bands, in_chans),
        "stats": per_modality_stats,
        "stats_hash": stats_hash,
        "stats_version": stats_version,
        "dataset_version": dataset_version,
        "pretrain_img_size": list(img_size) if isinstance(img_size, tuple | list) else img_size,
        "fve_sce_shapes": {
            key: list(value.shape) for key, value in state_dict.items() if key.rsplit(".", 1)[-1] in ("fve", "sce")
        },
        "epoch": epoch,
        "step": step,
        "metrics": metrics,
        "extra": extra,
        "versions": {"torch": str(torch.__version__), "ray": _version("ray"), "rsvheat": _version("rsvheat")},
        "git_sha": _git_sha(),
        "saved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    meta = _plain_copy(meta)  # e.g. numpy scalars in metrics become floats
    _check_plain(meta, "meta")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"meta": meta, "state_dict": state_dict}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a checkpoint is meant to be read by others
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _read(path: str | os.PathLike[str], map_location: str | torch.device | None) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(
            f"{os.fspath(path)} holds objects other than plain data and tensors, so it is not loaded "
            f"(weights_only=True); only checkpoints written by rsvheat.save_checkpoint are accepted. {err}"
        ) from err
    if not isinstance(payload, dict) or not isinstance(payload.get("meta"), dict) or "state_dict" not in payload:
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{os.fspath(path)} is not an rsvheat checkpoint (top level: {keys}); expected 'meta' and 'state_dict' "
            "as written by rsvheat.save_checkpoint."
        )
    meta = payload["meta"]
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{os.fspath(path)} has format {meta.get('format')!r} version {meta.get('format_version')!r}; this "
            f"rsvheat reads {CHECKPOINT_FORMAT!r} version {CHECKPOINT_FORMAT_VERSION}."
        )
    return payload


def load_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a checkpoint, without building the model (e.g. to :func:`check_stats` first)."""
    return dict(_read(path, "cpu")["meta"])


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint` and load its weights.

    The file is read with ``torch.load(weights_only=True)``; the model is rebuilt from the stored registry name and
    kwargs (and task config), with no other input, and returned in eval mode.

    Args:
        path: checkpoint file.
        map_location: where tensors are loaded.

    Returns:
        The model and the checkpoint metadata.

    Raises:
        pickle.UnpicklingError: the file holds pickled objects other than plain data.
        ValueError: the file is not an rsvheat checkpoint.
    """
    payload = _read(path, map_location)
    meta = payload["meta"]
    task = meta.get("task")
    model: nn.Module
    if task:
        model = build_task_model(
            task["task"], meta["model"], task["num_classes"], meta["model_kwargs"], **task["head_kwargs"]
        )
    else:
        model = create_model(meta["model"], **meta["model_kwargs"])
    model.load_state_dict(payload["state_dict"])
    if map_location is not None:
        model.to(next(iter(payload["state_dict"].values())).device)
    return model.eval(), dict(meta)


def check_stats(meta: Mapping[str, Any], dataset_stats_hash: str | None, dataset_version: str | None = None) -> None:
    """Refuse to feed a model data normalised with other stats than it was trained with.

    Args:
        meta: checkpoint metadata from :func:`load_checkpoint` or :func:`load_checkpoint_meta`.
        dataset_stats_hash: the ``stats_hash`` of the dataset about to be used.
        dataset_version: that dataset's version, for the message.

    Raises:
        StatsMismatchError: the hashes differ, or either side has none.
    """
    checkpoint_hash = meta.get("stats_hash")
    if checkpoint_hash is None or dataset_stats_hash is None or checkpoint_hash != dataset_stats_hash:
        raise StatsMismatchError(
            checkpoint_hash,
            dataset_stats_hash,
            checkpoint_dataset_version=meta.get("dataset_version"),
            dataset_version=dataset_version,
        )

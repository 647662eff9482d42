"""Export the pretrained encoder, and load it into a backbone with other stems or another image size.

:func:`export_encoder` writes only the encoder (no ``fuse_frequency``, decoders or projection head; docs/pretraining.md
§3 "export rule") through :func:`rsvheat.save_checkpoint`, so ``rsvheat.load_checkpoint(path)`` rebuilds it with no
flags and ``weights_only=True``. :func:`load_encoder_weights` transfers those weights into a backbone built
differently: stems it shares with the checkpoint are copied, new stems keep their fresh initialisation, and
size-bound parameters (vHeat FVE/SCE, Heracles spectral weights) are resized to the new nominal size as
``docs/hco.md`` §Resolution changes prescribes (interpolated over normalised frequency, never zero-padded).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsvheat.checkpoint import load_checkpoint_meta, save_checkpoint
from rsvheat.layers.spectral_mixer import SpectralFilter, resize_spectral_weight
from rsvheat.models.vheat import VHeatStage, resize_embeddings

__all__ = ["EncoderTransfer", "export_encoder", "load_encoder_weights"]


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)  # torch.compile


def export_encoder(
    pretrainer: nn.Module,
    path: str | os.PathLike[str],
    *,
    bands: Mapping[str, Sequence[str]],
    stats: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
    dataset_version: str | None = None,
    step: int | None = None,
    epoch: int | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write the pretrainer's encoder as a self-describing checkpoint (encoder keys only).

    Args:
        pretrainer: a :class:`~rsvheat.ssl.FrequencyPretrainer` (DDP- or ``torch.compile``-wrapped is fine).
        path: destination file, e.g. ``out/encoder.pt``.
        bands: band names per stem, in input order, e.g. ``{"optical": ["B02", …], "sar": ["VV", "VH"]}``.
        stats: the normalisation stats block of ``dataset.json`` (``stats_hash`` and per-modality mean/std).
        lineage: plain data describing the training data (dataset URIs, versions, chip counts); stored under
            ``meta["extra"]["lineage"]``.
        dataset_version: version of the dataset trained on.
        step: optimiser steps completed.
        epoch: epochs completed.
        metrics: final loss terms.
        extra: further plain data; ``meta["extra"]`` also holds ``"pretraining"`` (the pretrainer's config).
    """
    pretrainer = _unwrap(pretrainer)
    encoder = getattr(pretrainer, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{type(pretrainer).__name__} has no `encoder`; pass the FrequencyPretrainer.")
    payload = dict(extra or {})
    payload["pretraining"] = getattr(pretrainer, "config", None)
    payload["lineage"] = dict(lineage) if lineage is not None else None
    save_checkpoint(
        path,
        encoder,
        bands=bands,
        stats=stats,
        dataset_version=dataset_version,
        epoch=epoch,
        step=step,
        metrics=metrics,
        extra=payload,
    )


@dataclass
class EncoderTransfer:
    """What :func:`load_encoder_weights` did.

    Attributes:
        loaded: target keys filled from the checkpoint.
        resized: the subset of ``loaded`` resized to the target's shape.
        new_stems: target stems the checkpoint has no weights for (left as initialised).
        new_heads: target classifier keys (``head.*``, ``aux_head.*``) left as initialised.
        skipped_stems: checkpoint stems that do not fit the target (absent, or another band count).
    """

    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    new_stems: list[str] = field(default_factory=list)
    new_heads: list[str] = field(default_factory=list)
    skipped_stems: list[str] = field(default_factory=list)


_HEAD_MODULES = ("head", "aux_head")  # a backbone's own classifier: never pretrained, so fresh when present


def _stem_name(key: str) -> str | None:
    parts = key.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "stems" else None


def _resize_to(target: nn.Module, key: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``value`` resized to the target parameter ``key``'s ``shape`` with the owning module's own rule."""
    owner_name, _, leaf = key.rpartition(".")
    owner = target.get_submodule(owner_name)
    if isinstance(owner, SpectralFilter) and leaf == "weight":
        return resize_spectral_weight(value, tuple(shape[1:]), owner.transform).to(value.dtype)
    if isinstance(owner, VHeatStage) and leaf in ("fve", "sce"):
        # Resized to the target's nominal stage size (the size its own parameter was built for).
        resized = resize_embeddings({key: value}, target.img_size, mode=owner.fve_interp)[key]
        if resized.shape == shape:
            return resized.to(value.dtype)
    raise ValueError(
        f"Checkpoint tensor {key!r} has shape {tuple(value.shape)} but the target needs {tuple(shape)}, and "
        f"{type(owner).__name__}.{leaf} is not a size-bound parameter that can be resized; build the target with the "
        "checkpoint's architecture (meta['model'], meta['model_kwargs'])."
    )


def load_encoder_weights(
    target: nn.Module, source: str | os.PathLike[str] | Mapping[str, torch.Tensor]
) -> EncoderTransfer:
    """Load an exported encoder into ``target`` (a registry backbone, or a task model's ``.encoder``).

    Every trunk key must exist in both with the same shape, except size-bound parameters, which are resized.
    Stems are matched by name and band count; the others are reported, not loaded. A classifier head of the target
    (``num_classes > 0``) keeps its initialisation.

    Args:
        target: the backbone to fill; may have other stems and another ``img_size`` than the checkpoint.
        source: an ``encoder.pt`` written by :func:`export_encoder` (read with ``weights_only=True``) or a state dict.

    Raises:
        ValueError: trunk keys are missing or have unresizable shapes (the architectures differ).
    """
    target = getattr(_unwrap(target), "encoder", _unwrap(target))
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        load_checkpoint_meta(source)  # validates the format with a clear message
        state = torch.load(Path(source), map_location="cpu", weights_only=True)["state_dict"]
    own = target.state_dict()
    report = EncoderTransfer()
    source_stems = {s for k in state if (s := _stem_name(k)) is not None}
    target_stems = {s for k in own if (s := _stem_name(k)) is not None}
    fitting = {
        s
        for s in source_stems & target_stems
        if all(state[k].shape == v.shape for k, v in own.items() if _stem_name(k) == s and k in state)
    }
    report.new_stems = sorted(target_stems - fitting)
    report.skipped_stems = sorted(source_stems - fitting)
    report.new_heads = [k for k in own if k.split(".")[0] in _HEAD_MODULES and k not in state]
    missing = [k for k in own if _stem_name(k) is None and k not in state and k not in report.new_heads]
    if missing:
        raise ValueError(
            f"The checkpoint lacks {len(missing)} trunk tensors of the target, e.g. {missing[:3]}; it was trained "
            "with another architecture (compare meta['model'] / meta['model_kwargs'] with the target's)."
        )
    new_state = {}
    for key, value in own.items():
        stem = _stem_name(key)
        if (stem is not None and stem not in fitting) or key not in state:
            new_state[key] = value
            continue
        loaded = state[key]
        if loaded.shape != value.shape:
            loaded = _resize_to(target, key, loaded, value.shape)
            report.resized.append(key)
        new_state[key] = loaded
        report.loaded.append(key)
    target.load_state_dict(new_state)
    return report

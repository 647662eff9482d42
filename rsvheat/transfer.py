"""Encoder transfer for fine-tuning: the pretrained stem that fits the data's bands, adapted, plus the trunk.

A pretraining run (``jobs/pretrain.py``) exports ``encoder.pt`` with one stem per sensor and the band names of each;
a fine-tuning dataset has its own band list, chip size and sensor name. :func:`load_pretrained_encoder` builds the
checkpoint's architecture for the data (one stem, the data's band count, the data's chip size), picks the checkpoint
stem that shares the most bands by name, keeps those input filters exactly and starts each missing band from the
mean filter, and loads the trunk with :func:`rsvheat.ssl.load_encoder_weights` (which resizes the size-bound FVE/SCE
and spectral weights). Any rsvheat checkpoint works: an exported encoder, a backbone, or a task model
(``best.pt`` of a previous fine-tune), whose ``encoder.`` keys are used and whose head is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsvheat._registry import create_model
from rsvheat.checkpoint import load_checkpoint_meta
from rsvheat.errors import BandMatchError
from rsvheat.ssl.export import EncoderTransfer, load_encoder_weights

__all__ = ["StemMatch", "TransferReport", "adapt_stem", "load_pretrained_encoder", "match_stem"]


@dataclass(frozen=True)
class StemMatch:
    """Which checkpoint stem feeds the target stem, band by band.

    Attributes:
        source: the checkpoint's stem name.
        target: the new model's stem name.
        source_bands: the checkpoint stem's bands, in its input order.
        target_bands: the data's bands, in input order.
        source_index: per target band, its input channel in the source stem, or None (a band the stem never saw).
    """

    source: str
    target: str
    source_bands: tuple[str, ...]
    target_bands: tuple[str, ...]
    source_index: tuple[int | None, ...]

    @property
    def new_bands(self) -> tuple[str, ...]:
        """Target bands the pretrained stem has no filter for."""
        return tuple(b for b, i in zip(self.target_bands, self.source_index, strict=True) if i is None)

    @property
    def exact(self) -> bool:
        """The same bands in the same order: the stem is loaded unchanged."""
        return self.source_index == tuple(range(len(self.source_bands)))


@dataclass(frozen=True)
class TransferReport:
    """What :func:`load_pretrained_encoder` did: the stem match, the loaded keys, and the checkpoint's metadata."""

    match: StemMatch
    weights: EncoderTransfer
    meta: dict[str, Any]


def _key(band: str) -> str:
    return band.strip().lower()


def match_stem(
    checkpoint_bands: Mapping[str, Sequence[str]],
    data_bands: Sequence[str],
    target: str,
    *,
    min_overlap: float = 0.5,
    source: str = "the checkpoint",
) -> StemMatch:
    """The checkpoint stem sharing the most of ``data_bands`` by name (case-insensitive).

    Ties go to a stem named ``target``, then to the stem with fewer extra bands.

    Raises:
        BandMatchError: no stem provides at least ``min_overlap`` of the data's bands.
    """
    wanted = [_key(b) for b in data_bands]
    best: tuple[tuple[int, int, int], str] | None = None
    for name, bands in checkpoint_bands.items():
        have = [_key(b) for b in bands]
        shared = sum(1 for b in wanted if b in have)
        score = (shared, int(name == target), -(len(have) - shared))
        if best is None or score > best[0]:
            best = (score, name)
    if best is None or best[0][0] == 0 or best[0][0] < min_overlap * len(wanted):
        raise BandMatchError(source, data_bands, {k: list(v) for k, v in checkpoint_bands.items()}, min_overlap)
    name = best[1]
    have = [_key(b) for b in checkpoint_bands[name]]
    index = tuple(have.index(b) if b in have else None for b in wanted)
    return StemMatch(name, target, tuple(checkpoint_bands[name]), tuple(data_bands), index)


def _input_key(state: Mapping[str, torch.Tensor], prefix: str, in_bands: int) -> str:
    """The stem's input projection: its first weight with ``in_bands`` input channels (registration order)."""
    for key, value in state.items():
        if key.startswith(prefix) and value.ndim >= 2 and value.shape[1] == in_bands:
            return key
    raise ValueError(f"Stem {prefix[:-1]!r} has no weight with {in_bands} input channels to adapt to other bands.")


def adapt_stem(state: Mapping[str, torch.Tensor], match: StemMatch) -> dict[str, torch.Tensor]:
    """``state`` with only the matched stem, renamed to the target and its input filters picked per target band.

    A band the stem never saw starts from the mean of the stem's filters, so its first activations have the scale
    of the others.
    """
    source_prefix, target_prefix = f"stems.{match.source}.", f"stems.{match.target}."
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("stems.") and not key.startswith(source_prefix):
            continue  # another sensor's stem: not part of the fine-tuned model
        out[target_prefix + key[len(source_prefix):] if key.startswith(source_prefix) else key] = value
    if match.exact:
        return out
    key = target_prefix + _input_key(state, source_prefix, len(match.source_bands))[len(source_prefix):]
    weight = out[key]
    mean_filter = weight.mean(dim=1)  # (O, in, k, k) -> (O, k, k)
    columns = [weight[:, i] if i is not None else mean_filter for i in match.source_index]
    out[key] = torch.stack(columns, dim=1).contiguous()  # T x (O, k, k) -> (O, T, k, k)
    return out


def _encoder_state(path: str | os.PathLike[str], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    state = torch.load(Path(path), map_location="cpu", weights_only=True)["state_dict"]
    if meta.get("task"):  # a task model: its encoder's keys; the head belongs to the old task
        return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return dict(state)


def load_pretrained_encoder(
    path: str | os.PathLike[str],
    *,
    stem: str,
    bands: Sequence[str],
    img_size: int,
    min_overlap: float = 0.5,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, TransferReport]:
    """A backbone of the checkpoint's architecture for data with ``bands`` and ``img_size`` chips, pretrained.

    Args:
        path: any checkpoint written by :func:`rsvheat.save_checkpoint` (or ``export_encoder``).
        stem: the new model's stem name (the data's sensor).
        bands: the data's band names in input order.
        img_size: the data's chip size (FVE/SCE are resized to it).
        min_overlap: fraction of ``bands`` the chosen stem must know.
        model_kwargs: further ``create_model`` overrides (e.g. ``drop_path_rate``).

    Raises:
        BandMatchError: no stem of the checkpoint fits the bands.
        ValueError: the checkpoint is not an rsvheat checkpoint, records no band names, or its trunk does not fit.
    """
    meta = load_checkpoint_meta(path)
    recorded = meta.get("bands")
    if not isinstance(recorded, Mapping) or not recorded:
        raise ValueError(
            f"{os.fspath(path)} records no band names per stem, so its stems cannot be matched to the data's bands; "
            "save it with rsvheat.save_checkpoint(..., bands={stem: [band, ...]})."
        )
    match = match_stem(recorded, bands, stem, min_overlap=min_overlap, source=os.fspath(path))
    kwargs = {**dict(meta.get("model_kwargs") or {}), **dict(model_kwargs or {})}
    kwargs["in_chans"] = {stem: len(bands)}
    kwargs["img_size"] = img_size
    encoder = create_model(meta["model"], **kwargs)
    weights = load_encoder_weights(encoder, adapt_stem(_encoder_state(path, meta), match))
    return encoder, TransferReport(match, weights, dict(meta))

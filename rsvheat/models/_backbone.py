"""Argument handling shared by the image backbones (vHeat, Heracles): sizes, stage grids, modalities, stage indices.

Both families expose the same interface (``in_chans`` as a dict modality -> band count, ``modalities``,
``default_modality``, ``forward_intermediates(x, indices, modality)``); these helpers keep its rules in one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from rsvheat.errors import BandCountMismatchError, UnknownModalityError

__all__ = [
    "DEFAULT_MODALITY",
    "SizeLike",
    "check_modality_input",
    "checkpointing_policy",
    "format_in_chans",
    "format_size",
    "pick_default_modality",
    "resolve_stage_indices",
    "stage_sizes",
]

SizeLike = int | Sequence[int]
DEFAULT_MODALITY = "optical"


def format_size(size: SizeLike, name: str = "size") -> tuple[int, int]:
    """Normalise an ``int`` or ``(H, W)`` size to a tuple of two positive ints; ``name`` labels the error."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width) of positive ints, got {size!r}.")
    return int(pair[0]), int(pair[1])


def stage_sizes(height: int, width: int, num_stages: int = 4) -> list[tuple[int, int]]:
    """Map size of each stage for an ``H × W`` input: stride 4, then ``⌈n/2⌉`` per downsample (docs/hco.md §Network).

    A stride-2 convolution with padding 1 (kernel 3) maps ``n`` to ``⌈n/2⌉``, so any size is legal.
    """
    h, w = math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width / 2) / 2)
    sizes = [(h, w)]
    for _ in range(num_stages - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


def format_in_chans(in_chans: int | Mapping[str, int]) -> dict[str, int]:
    """``13`` -> ``{"optical": 13}``; a dict is validated (non-empty, str names, positive int band counts)."""
    if isinstance(in_chans, int) and not isinstance(in_chans, bool):
        in_chans = {DEFAULT_MODALITY: in_chans}
    if not isinstance(in_chans, Mapping) or not in_chans:
        raise ValueError(
            f"in_chans must be a band count or a non-empty dict modality -> band count, got {in_chans!r}; "
            "e.g. 13 or {'optical': 13, 'sar': 2}."
        )
    for name, bands in in_chans.items():
        if not isinstance(name, str) or not isinstance(bands, int) or isinstance(bands, bool) or bands < 1:
            raise ValueError(f"Modality {name!r} has band count {bands!r}; expected a str name and a positive int.")
    return dict(in_chans)


def pick_default_modality(in_chans: Mapping[str, int]) -> str:
    """``"optical"`` if the model has that stem, else the first modality."""
    return DEFAULT_MODALITY if DEFAULT_MODALITY in in_chans else next(iter(in_chans))


def check_modality_input(x: torch.Tensor, in_chans: Mapping[str, int], modality: str) -> None:
    """Raise unless ``x`` is a ``(B, bands, H, W)`` input with the band count of ``modality``'s stem."""
    if modality not in in_chans:
        raise UnknownModalityError(modality, in_chans)
    if x.ndim != 4:
        raise ValueError(f"Expected a (B, C, H, W) input for modality {modality!r}, got shape {tuple(x.shape)}.")
    if x.shape[1] != in_chans[modality]:
        raise BandCountMismatchError(modality, in_chans[modality], int(x.shape[1]))


def checkpointing_policy(enable: object, model: str, policies: tuple[str, ...] = ()) -> str:
    """``set_grad_checkpointing``'s argument as ``"off"``, ``"blocks"`` or one of the backbone's extra ``policies``.

    Raises:
        ValueError: anything else, naming the backbone and what it takes.
    """
    if enable is True or enable is False:
        return "blocks" if enable else "off"
    if isinstance(enable, str) and (enable == "blocks" or enable in policies):
        return enable
    choices = ["True", "False", "'blocks'", *(repr(p) for p in policies)]
    expected = ", ".join(choices[:-1]) + " or " + choices[-1]
    hint = "" if policies else f"; {model} checkpoints whole blocks only (the 'mlp' policy is vHeat's and RS-vHeat's)"
    raise ValueError(f"{model}.set_grad_checkpointing: expected {expected}, got {enable!r}{hint}.")


def resolve_stage_indices(indices: int | Sequence[int] | None, count: int) -> list[int]:
    """Sorted stage indices: ``None`` for all ``count``, an int ``n`` for the last ``n``, or indices (negative ok)."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices={indices} asks for the last {indices} stages; the model has {count}.")
        return list(range(count - indices, count))
    picked = sorted({i % count if -count <= i < count else i for i in indices})
    if not picked or picked[0] < 0 or picked[-1] >= count:
        raise ValueError(f"Stage indices {list(indices)} out of range; valid are 0..{count - 1} (or negative).")
    return picked

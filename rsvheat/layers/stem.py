"""The vHeat stem (two stride-2 3×3 convolutions, output stride 4) and one stem per input modality."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from rsvheat.layers.norm import LayerNorm2d

__all__ = ["StemLayer", "build_stems"]


class StemLayer(nn.Module):
    """Conv3×3 s2 (in → C/2) → LN → GELU → Conv3×3 s2 (C/2 → C) → LN, eps 1e-6 (hco.md §6).

    A stride-2 conv with padding 1 maps ``n`` to ``⌈n/2⌉``, so any ``H×W`` gives ``(⌈⌈H/2⌉/2⌉, ⌈⌈W/2⌉/2⌉)``.

    Args:
        in_chans: input bands.
        out_chans: output width ``C``.
    """

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, out_chans // 2, kernel_size=3, stride=2, padding=1)
        self.norm1 = LayerNorm2d(out_chans // 2, eps=1e-6)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chans // 2, out_chans, kernel_size=3, stride=2, padding=1)
        self.norm2 = LayerNorm2d(out_chans, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, C, ⌈H/4⌉, ⌈W/4⌉)``."""
        x = self.act(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(x))


def build_stems(in_chans: Mapping[str, int], out_chans: int) -> nn.ModuleDict:
    """One :class:`StemLayer` per modality, e.g. ``{"optical": 13, "sar": 2}``; all feed the same trunk.

    Args:
        in_chans: band count per modality name.
        out_chans: trunk width ``C``.
    """
    if not in_chans:
        raise ValueError("in_chans names no modality; pass an int or a dict such as {'optical': 13, 'sar': 2}.")
    for name, bands in in_chans.items():
        if not isinstance(bands, int) or isinstance(bands, bool) or bands < 1:
            raise ValueError(f"Modality {name!r} has band count {bands!r}; expected a positive int.")
    return nn.ModuleDict({name: StemLayer(bands, out_chans) for name, bands in in_chans.items()})

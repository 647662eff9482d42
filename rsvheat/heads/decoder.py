"""Pyramid decoders shared by the dense heads: a feature pyramid (FPN) and a UPerNet-style fused decoder.

Both take the backbone's four stage maps (strides 4/8/16/32) and size every upsampling to the next map's actual shape,
so inputs whose sides are not multiples of 32 (stage sizes ceil(n/2)) work. GroupNorm keeps them usable at batch
sizes of 1-2 and independent of the data-parallel layout.

Reference: Xiao et al., "Unified Perceptual Parsing for Scene Understanding" (UPerNet), arXiv:1807.10221; Lin et al.,
"Feature Pyramid Networks for Object Detection", arXiv:1612.03144.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvNormAct", "FeaturePyramid", "UPerNetDecoder", "feature_channels"]


def feature_channels(feature_info: Sequence[dict[str, object]]) -> tuple[int, ...]:
    """Channel counts of the backbone's stage maps, validated.

    Args:
        feature_info: the backbone's ``feature_info`` (one dict per stage with ``num_chs`` and ``reduction``).

    Raises:
        ValueError: ``feature_info`` is empty or an entry lacks a positive integer ``num_chs``.
    """
    channels = []
    for i, info in enumerate(feature_info):
        num_chs = info.get("num_chs")
        if not isinstance(num_chs, int) or num_chs <= 0:
            raise ValueError(f"feature_info[{i}] = {info!r} has no positive integer 'num_chs'; is it a backbone's?")
        channels.append(num_chs)
    if not channels:
        raise ValueError("feature_info is empty; pass `backbone.feature_info` of a backbone with dense outputs.")
    return tuple(channels)


def _groups(channels: int) -> int:
    """GroupNorm groups: the most (<= 32) that divide ``channels`` and keep >= 8 channels per group.

    NOTE: several channels per group keep the norm defined on the 1x1 maps of pyramid pooling at batch size 1.
    """
    return next((g for g in range(min(32, channels // 8), 0, -1) if channels % g == 0), 1)


class ConvNormAct(nn.Sequential):
    """Conv (no bias) -> GroupNorm -> ReLU."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False),
            nn.GroupNorm(_groups(out_chs), out_chs),
            nn.ReLU(inplace=True),
        )


class _PyramidPooling(nn.Module):
    """PSPNet pyramid pooling on the coarsest map, fused back to ``channels``."""

    def __init__(self, in_chs: int, channels: int, scales: Sequence[int]) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.branches = nn.ModuleList(ConvNormAct(in_chs, channels, 1) for _ in self.scales)
        self.bottleneck = ConvNormAct(in_chs + len(self.scales) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, h, w) -> (B, channels, h, w)."""
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(F.adaptive_avg_pool2d(x, s)), size=size, mode="bilinear", align_corners=False)
            for s, branch in zip(self.scales, self.branches, strict=True)
        ]
        out: Tensor = self.bottleneck(torch.cat([x, *pooled], dim=1))
        return out


class FeaturePyramid(nn.Module):
    """Top-down feature pyramid over all stage maps, optionally with pyramid pooling on the coarsest one.

    Args:
        in_channels: channels of each stage map, finest first (from :func:`feature_channels`).
        channels: width of every pyramid level.
        pool_scales: PSP pooling grid sizes for the coarsest map (UPerNet); empty for a plain FPN lateral.
    """

    def __init__(
        self, in_channels: Sequence[int], channels: int = 128, pool_scales: Sequence[int] = (1, 2, 3, 6)
    ) -> None:
        super().__init__()
        self.in_channels = tuple(in_channels)
        self.channels = channels
        top: nn.Module
        if pool_scales:
            top = _PyramidPooling(self.in_channels[-1], channels, pool_scales)
        else:
            top = ConvNormAct(self.in_channels[-1], channels, 1)
        self.lateral = nn.ModuleList([*(ConvNormAct(c, channels, 1) for c in self.in_channels[:-1]), top])
        self.smooth = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in self.in_channels[:-1])

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Stage maps (finest first) -> pyramid levels of ``channels`` each, with the stage maps' sizes."""
        if len(features) != len(self.in_channels):
            raise ValueError(
                f"FeaturePyramid was built for {len(self.in_channels)} stage maps but got {len(features)}; "
                "pass the full list from `backbone.forward_features`."
            )
        laterals = [lateral(f) for lateral, f in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + F.interpolate(
                laterals[i + 1], size=laterals[i].shape[-2:], mode="bilinear", align_corners=False
            )
        return [*(smooth(x) for smooth, x in zip(self.smooth, laterals[:-1], strict=True)), laterals[-1]]


class UPerNetDecoder(nn.Module):
    """UPerNet: pyramid pooling + FPN, every level upsampled to the finest one, concatenated and fused.

    Args:
        in_channels: channels of each stage map, finest first.
        channels: width of the pyramid and of the output.
        pool_scales: PSP pooling grid sizes for the coarsest map.
    """

    def __init__(
        self, in_channels: Sequence[int], channels: int = 128, pool_scales: Sequence[int] = (1, 2, 3, 6)
    ) -> None:
        super().__init__()
        self.channels = channels
        self.pyramid = FeaturePyramid(in_channels, channels, pool_scales)
        self.fuse = ConvNormAct(len(tuple(in_channels)) * channels, channels, 3)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Stage maps (finest first) -> (B, channels, h0, w0) at the finest map's size (stride 4)."""
        levels = self.pyramid(features)
        size = levels[0].shape[-2:]
        upsampled = [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in levels[1:]]
        out: Tensor = self.fuse(torch.cat([levels[0], *upsampled], dim=1))  # (B, L * channels, h0, w0) -> (B, C, ...)
        return out

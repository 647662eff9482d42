"""Pretraining heads that are not exported: the frequency fusion, the reconstruction decoder, the projection heads.

docs/pretraining.md §3: ``fuse_frequency`` concatenates the ``K`` views' maps of a stage along channels and maps them
back with Conv1×1 → LayerNorm2d; the decoder fuses stages 3 and 4 and upsamples ×2 four times to the input size; the
projection head feeds L_con. Upsampling targets are the actual map sizes (``⌈n/2⌉`` per stride-2 step), so any input
size, square or not, comes back at exactly ``(H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rsvheat.layers.norm import LayerNorm2d
from rsvheat.ssl._options import options_from_dict, options_to_dict

__all__ = [
    "DecoderConfig",
    "FrequencyFusion",
    "Predictor",
    "ProjectionConfig",
    "ProjectionHead",
    "ReconstructionDecoder",
    "halving_sizes",
]


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder widths (docs/pretraining.md §3).

    Args:
        fuse_dim: output width of the Conv3×3 on ``[up(F4), F3]``.
        widths: output width of each ×2 upsampling step; one entry per step (4 for stride 16 → 1).
    """

    fuse_dim: int = 256
    widths: tuple[int, ...] = (256, 128, 64, 32)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.fuse_dim < 1 or not self.widths or min(self.widths) < 1:
            raise ValueError(f"decoder fuse_dim={self.fuse_dim}, widths={self.widths}; expected positive widths.")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> DecoderConfig:
        """From a user mapping; unknown keys raise :class:`UnknownOptionError`."""
        return options_from_dict(cls, "decoder", options)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return options_to_dict(self)


@dataclass(frozen=True)
class ProjectionConfig:
    """Projection head ``Linear(C₄, hidden) → GELU → Linear(hidden, dim)`` and the cosine-mode predictor.

    Args:
        hidden: hidden width of the projection head.
        dim: embedding width.
        predictor_hidden: bottleneck width of the predictor (``con_mode="cosine"`` only).
    """

    hidden: int = 2048
    dim: int = 256
    predictor_hidden: int = 64

    def __post_init__(self) -> None:
        if min(self.hidden, self.dim, self.predictor_hidden) < 1:
            raise ValueError(f"projection widths must be positive, got {self.to_dict()}.")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> ProjectionConfig:
        """From a user mapping; unknown keys raise :class:`UnknownOptionError`."""
        return options_from_dict(cls, "projection", options)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return options_to_dict(self)


def halving_sizes(height: int, width: int, steps: int) -> list[tuple[int, int]]:
    """``[(H, W), (⌈H/2⌉, ⌈W/2⌉), …]``: the map size at strides ``1, 2, …, 2^steps`` (stride-2 convs, pad 1)."""
    sizes = [(height, width)]
    for _ in range(steps):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


class FrequencyFusion(nn.Module):
    """``fuse_frequency``: concat the ``K`` views' ``(B, C, h, w)`` maps → Conv1×1 (K·C → C) → LayerNorm2d.

    Args:
        channels: stage width ``C``.
        num_views: ``K``.
    """

    def __init__(self, channels: int, num_views: int) -> None:
        super().__init__()
        self.num_views = num_views
        self.proj = nn.Conv2d(num_views * channels, channels, kernel_size=1)
        self.norm = LayerNorm2d(channels)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """``K × (B, C, h, w) -> (B, C, h, w)``."""
        if len(maps) != self.num_views:
            raise ValueError(f"FrequencyFusion was built for {self.num_views} views, got {len(maps)}.")
        return self.norm(self.proj(torch.cat(list(maps), dim=1)))  # K × (B, C, h, w) -> (B, K·C, h, w)


class _UpStep(nn.Sequential):
    """Conv3×3 → LayerNorm2d → GELU (the bilinear ×2 upsampling to an exact size happens in the decoder)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__(nn.Conv2d(in_chs, out_chs, 3, padding=1), LayerNorm2d(out_chs), nn.GELU())


class ReconstructionDecoder(nn.Module):
    """Reconstructs one modality's ``(B, bands, H, W)`` input from the fused encoder maps.

    ``[up×2(F_last), F_prev]`` → Conv3×3 → ``fuse_dim``; then one step per factor 2 of the previous stage's stride
    (4 for strides 16/32) of bilinear upsampling to the next exact size → Conv3×3 → LN → GELU; then Conv1×1 → bands.
    Fused maps of earlier stages (``skip_stages``) are added, through a Conv1×1, after the step that reaches their
    stride.

    Args:
        feature_info: the encoder's ``feature_info`` (``num_chs``, ``reduction`` per stage).
        out_chans: bands of the modality.
        config: widths.
        skip_stages: 0-based indices of earlier fused stages to add as skips.
    """

    def __init__(
        self,
        feature_info: Sequence[Mapping[str, Any]],
        out_chans: int,
        config: DecoderConfig | None = None,
        skip_stages: Sequence[int] = (),
    ) -> None:
        super().__init__()
        config = config or DecoderConfig()
        channels = [int(info["num_chs"]) for info in feature_info]
        reductions = [int(info["reduction"]) for info in feature_info]
        if len(channels) < 2 or reductions[-1] != 2 * reductions[-2] or reductions[-2] & (reductions[-2] - 1):
            raise ValueError(
                f"The reconstruction decoder needs >= 2 stages whose last two strides are 2^n and 2^(n+1); "
                f"feature_info has strides {reductions}."
            )
        self.steps = int(math.log2(reductions[-2]))
        if len(config.widths) != self.steps:
            raise ValueError(
                f"decoder widths {list(config.widths)} need one entry per ×2 step: {self.steps} from stride "
                f"{reductions[-2]} to 1."
            )
        self.top = len(channels) - 1
        self.fuse = nn.Conv2d(channels[-1] + channels[-2], config.fuse_dim, kernel_size=3, padding=1)
        widths = [config.fuse_dim, *config.widths]
        self.up = nn.ModuleList(_UpStep(widths[i], widths[i + 1]) for i in range(self.steps))
        self.skip_stages = tuple(sorted(int(s) for s in skip_stages))
        self.skips = nn.ModuleDict()
        for stage in self.skip_stages:
            step = self.steps - int(math.log2(reductions[stage]))  # after this many steps the stride matches
            if not 0 < step <= self.steps or reductions[stage] & (reductions[stage] - 1):
                raise ValueError(f"Stage {stage} (stride {reductions[stage]}) cannot be a decoder skip.")
            self.skips[str(stage)] = nn.Conv2d(channels[stage], widths[step], kernel_size=1)
        self._skip_step = {stage: self.steps - int(math.log2(reductions[stage])) for stage in self.skip_stages}
        self.out = nn.Conv2d(widths[-1], out_chans, kernel_size=1)

    def forward(self, fused: Mapping[int, torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        """Fused maps keyed by 0-based stage (the last two and the skips) -> ``(B, out_chans, *out_size)``."""
        last, prev = fused[self.top], fused[self.top - 1]
        x = F.interpolate(last, size=prev.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, prev], dim=1))  # (B, C_last + C_prev, h, w) -> (B, fuse_dim, h, w)
        targets = halving_sizes(*out_size, self.steps)[::-1][1:]  # sizes at strides 2^(steps−1), …, 2, 1
        for step, (block, size) in enumerate(zip(self.up, targets, strict=True), start=1):
            x = block(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
            for stage in self.skip_stages:
                if self._skip_step[stage] == step:
                    skip = fused[stage]
                    if skip.shape[-2:] != x.shape[-2:]:
                        skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
                    x = x + self.skips[str(stage)](skip)
        return self.out(x)  # type: ignore[no-any-return]


class ProjectionHead(nn.Module):
    """``Linear(C, hidden) → GELU → Linear(hidden, dim)`` on the global average of a ``(B, C, h, w)`` map."""

    def __init__(self, in_features: int, config: ProjectionConfig | None = None) -> None:
        super().__init__()
        config = config or ProjectionConfig()
        self.net = nn.Sequential(nn.Linear(in_features, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w) -> (B, dim)`` (not normalised; the losses normalise)."""
        return self.net(x.mean(dim=(2, 3)))  # type: ignore[no-any-return]


class Predictor(nn.Module):
    """SimSiam-style bottleneck predictor for ``con_mode="cosine"``: Linear → LayerNorm → GELU → Linear."""

    def __init__(self, config: ProjectionConfig | None = None) -> None:
        super().__init__()
        config = config or ProjectionConfig()
        self.net = nn.Sequential(
            nn.Linear(config.dim, config.predictor_hidden),
            nn.LayerNorm(config.predictor_hidden),
            nn.GELU(),
            nn.Linear(config.predictor_hidden, config.dim),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, dim) -> (B, dim)``."""
        return self.net(z)  # type: ignore[no-any-return]

"""LayerNorm over the channel axis of NCHW tensors."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LayerNorm2d"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over ``C`` for a ``(B, C, H, W)`` tensor (timm's ``LayerNorm2d``).

    Args:
        num_channels: number of channels ``C``.
        eps: added to the variance.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each pixel's channel vector."""
        x = x.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)

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

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise each pixel's channel vector; ``(B, C, H, W)``, a free view for channels-last memory.

        Args:
            x: ``(B, C, H, W)`` map.
            scale: optional ``(C,)`` factor (e.g. a layer scale ``γ``) folded into the affine weight and bias,
                which equals ``LayerNorm2d(x) * γ`` without a separate pass over the map.
        """
        weight, bias = self.weight, self.bias
        if scale is not None:
            weight, bias = weight * scale, bias * scale
        x = x.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)

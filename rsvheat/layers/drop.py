"""Stochastic depth (DropPath): drop a residual branch per sample."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["DropPath", "drop_path", "drop_path_rates"]


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero whole samples of a residual branch with probability ``drop_prob``; rescale the rest by ``1/(1-p)``.

    Args:
        x: branch output, batch first.
        drop_prob: probability of dropping a sample's branch, in ``[0, 1)``.
        training: identity when False.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one Bernoulli draw per sample
    mask = x.new_empty(mask_shape).bernoulli_(keep)
    return x * mask / keep


def drop_path_rates(max_rate: float, count: int) -> list[float]:
    """Per-block stochastic-depth rates rising linearly from 0 to ``max_rate`` over ``count`` blocks.

    Plain Python floats (no tensor), so models build on the ``meta`` device too.
    """
    return [max_rate * i / (count - 1) if count > 1 else 0.0 for i in range(count)]


class DropPath(nn.Module):
    """Module form of :func:`drop_path`.

    Args:
        drop_prob: probability of dropping a sample's branch, in ``[0, 1)``.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}; lower drop_path_rate.")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply stochastic depth in training mode; identity in eval mode."""
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        """Show the drop probability in ``repr``."""
        return f"drop_prob={self.drop_prob:.3f}"

"""Orthonormal discrete Hartley transform (DHT) over any set of axes, via one FFT.

``H(x)[k] = Σ_n x[n] · cas(2π k·n / N)`` with ``cas θ = cos θ + sin θ``, scaled by ``1/√N`` (``N`` = product of the
transformed lengths). For real ``x`` this is ``Re(F(x)) − Im(F(x))`` where ``F`` is the FFT with ``norm="ortho"``
(see ``docs/heracles.md`` §Spectral mixer). The orthonormal DHT is real, symmetric and an involution: ``H(H(x)) = x``,
so the same function is its own inverse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["dht", "dht1d", "dht2d"]


def dht(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Orthonormal DHT of a real tensor over ``dims``; its own inverse.

    Args:
        x: real input (float32 or float64; half precision is upcast to float32 because the FFT needs it).
        dims: axes to transform jointly (the multi-dimensional ``cas`` kernel, not a separable product of 1-D DHTs).

    Raises:
        TypeError: ``x`` is complex.
    """
    if x.is_complex():
        raise TypeError(f"dht expects a real tensor, got dtype {x.dtype}; take .real or .abs() first.")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    spectrum = torch.fft.fftn(x, dim=tuple(dims), norm="ortho")
    return spectrum.real - spectrum.imag


def dht1d(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Orthonormal 1-D DHT along ``dim`` (an involution)."""
    return dht(x, (dim,))


def dht2d(x: torch.Tensor, dims: tuple[int, int] = (-2, -1)) -> torch.Tensor:
    """Orthonormal 2-D DHT over ``dims`` (default: the last two axes, i.e. ``(B, C, H, W)``); an involution."""
    return dht(x, dims)

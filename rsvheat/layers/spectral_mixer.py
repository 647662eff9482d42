"""Heracles local ∥ global token mixer: a depthwise conv on one channel half, a learned spectral filter on the other.

The global half is ``ŷ = T⁻¹( T(x) ⊙ W_g )`` with ``T`` the orthonormal DCT-II (``"dct"``, as the released code) or the
orthonormal DHT (``"dht"``, as the paper text; an involution, so ``T⁻¹ = T``). ``W_g`` holds one real weight per
(channel, frequency) and is sized at construction; other grid sizes either raise (``"strict"``) or resize ``W_g`` over
the frequency grid (``"interpolate"``). The two halves are interleaved channel-wise: output channel ``2i`` is local
channel ``i`` and ``2i + 1`` is global channel ``i``
(``docs/heracles.md`` §Spectral mixer). Works on 1-D sequences ``(B, C, T)``
and 2-D maps ``(B, C, H, W)`` alike.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsvheat.layers.dct import dct1d, dct2d, idct1d, idct2d
from rsvheat.layers.dht import dht
from rsvheat.layers.precision import autocast_off

__all__ = [
    "LocalGlobalMixer",
    "SpectralFilter",
    "SpectralSizeError",
    "SpectralSizePolicy",
    "SpectralTransform",
    "check_size_policy",
    "check_transform",
    "resize_spectral_weight",
    "spectral_transform",
]

SpectralTransform = Literal["dct", "dht"]
SpectralSizePolicy = Literal["strict", "interpolate"]


class SpectralSizeError(ValueError):
    """The input grid differs from the size the spectral weights were built for, under ``"strict"``."""


def _fmt(size: tuple[int, ...]) -> str:
    return "×".join(str(n) for n in size)


def check_transform(transform: str) -> SpectralTransform:
    """Validate a spectral transform name; the error lists the valid ones."""
    match transform:
        case "dct" | "dht":
            return transform
        case _:
            raise ValueError(f"Unknown spectral transform {transform!r}; expected one of 'dct', 'dht'.")


def check_size_policy(policy: str) -> SpectralSizePolicy:
    """Validate a spectral size policy; the error lists the valid ones."""
    match policy:
        case "strict" | "interpolate":
            return policy
        case _:
            raise ValueError(f"Unknown spectral_size_policy {policy!r}; expected one of 'strict', 'interpolate'.")


def spectral_transform(x: torch.Tensor, transform: SpectralTransform, ndim: int, inverse: bool) -> torch.Tensor:
    """Orthonormal forward or inverse transform over the last ``ndim`` (1 or 2) axes of a channels-first tensor."""
    match transform, ndim:
        case "dct", 1:
            return idct1d(x, dim=-1) if inverse else dct1d(x, dim=-1)
        case "dct", 2:
            return idct2d(x, layout="bchw") if inverse else dct2d(x, layout="bchw")
        case "dht", 1 | 2:
            return dht(x, dims=tuple(range(-ndim, 0)))  # involution: forward == inverse
        case _:
            raise ValueError(f"Spectral transform {transform!r} supports 1 or 2 grid axes, got {ndim}.")


def resize_spectral_weight(
    weight: torch.Tensor, size: tuple[int, ...], transform: SpectralTransform
) -> torch.Tensor:
    """Resize a ``(C, *grid)`` spectral weight to ``(C, *size)`` over the frequency grid (align_corners False).

    DCT index ``n`` is monotone in frequency (``n/N``), so it is resized directly. DHT weights are in FFT order (``k``
    and ``N − k`` are ± the same frequency), so they are ``fftshift``-ed to a monotone axis, resized and shifted back.
    Same-size calls return ``weight`` itself.
    """
    ndim = weight.ndim - 1
    if len(size) != ndim:
        raise ValueError(f"Target size {size} has {len(size)} axes but the weight has {ndim} grid axes.")
    if tuple(weight.shape[1:]) == tuple(size):
        return weight
    dims = tuple(range(1, ndim + 1))
    w = torch.fft.fftshift(weight, dim=dims) if transform == "dht" else weight
    mode = "linear" if ndim == 1 else "bilinear"
    # (C, *grid) -> (1, C, *grid) -> (1, C, *size) -> (C, *size)
    w = F.interpolate(w.float().unsqueeze(0), size=tuple(size), mode=mode, align_corners=False).squeeze(0)
    return torch.fft.ifftshift(w, dim=dims) if transform == "dht" else w


class SpectralFilter(nn.Module):
    """``ŷ = T⁻¹(T(x) ⊙ W)`` per channel, computed in float32; ``W ∈ ℝ^{C×grid}``, initialised ``randn · 0.02``.

    Args:
        channels: number of filtered channels ``C``.
        size: the grid the weight is built for, ``(T,)`` or ``(H, W)``.
        transform: ``"dct"`` (orthonormal DCT-II) or ``"dht"`` (orthonormal DHT).
        size_policy: ``"strict"`` raises :class:`SpectralSizeError` on another grid; ``"interpolate"`` resizes ``W``
            with :func:`resize_spectral_weight` (recomputed each call in training, cached per grid in eval).
    """

    def __init__(
        self,
        channels: int,
        size: tuple[int, ...],
        transform: SpectralTransform = "dct",
        size_policy: SpectralSizePolicy = "strict",
    ) -> None:
        super().__init__()
        if len(size) not in (1, 2) or min(size) < 1:
            raise ValueError(f"SpectralFilter size must be (T,) or (H, W) with positive entries, got {size}.")
        self.transform = check_transform(transform)
        self.size_policy = check_size_policy(size_policy)
        self.size = tuple(int(n) for n in size)
        self.weight = nn.Parameter(torch.randn(channels, *self.size) * 0.02)
        self._cache: dict[tuple[tuple[int, ...], torch.device, bool], torch.Tensor] = {}
        self._cache_version = -1

    def extra_repr(self) -> str:
        """Show the filter's configuration in ``repr``."""
        channels = self.weight.shape[0]
        return f"channels={channels}, size={self.size}, transform={self.transform!r}, size_policy={self.size_policy!r}"

    def train(self, mode: bool = True) -> SpectralFilter:
        """Switch mode and drop the eval-time cache of resized weights."""
        self._cache.clear()
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> SpectralFilter:
        # `.to()`/`.half()` swap the weight's data without a version bump: drop the cache.
        self._cache.clear()
        return super()._apply(fn, recurse)

    def weight_for(self, grid: tuple[int, ...]) -> torch.Tensor:
        """The weight for an input grid: the parameter itself at the built size, else per ``size_policy``."""
        grid = tuple(int(n) for n in grid)
        if grid == self.size:
            return self.weight
        if self.size_policy == "strict":
            raise SpectralSizeError(
                f"Spectral weights were built for a {_fmt(self.size)} grid but the input grid is {_fmt(grid)}; "
                "build the model with img_size (or seq_len) matching the input, or pass "
                "spectral_size_policy='interpolate' to resize the weights."
            )
        if self.training or (torch.is_grad_enabled() and self.weight.requires_grad):
            return resize_spectral_weight(self.weight, grid, self.transform)
        # NOTE: the cache key includes the parameter's version so in-place updates and load_state_dict invalidate it.
        version = self.weight._version
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version
        key = (grid, self.weight.device, torch.is_inference_mode_enabled())
        if key not in self._cache:
            self._cache[key] = resize_spectral_weight(self.weight.detach(), grid, self.transform)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter a channels-first ``(B, C, *grid)`` tensor; returns float32."""
        ndim = len(self.size)
        if x.ndim != ndim + 2 or x.shape[1] != self.weight.shape[0]:
            raise ValueError(
                f"SpectralFilter expects (B, {self.weight.shape[0]}, {', '.join('·' * ndim)}) input with {ndim} grid "
                f"axes, got shape {tuple(x.shape)}."
            )
        weight = self.weight_for(tuple(x.shape[2:])).float()
        coeffs = spectral_transform(x.float(), self.transform, ndim, inverse=False)
        return spectral_transform(coeffs * weight, self.transform, ndim, inverse=True)


class LocalGlobalMixer(nn.Module):
    """Split channels in halves: depthwise conv (k = 3) ∥ :class:`SpectralFilter`, then interleave.

    The global half runs in float32 with autocast disabled and is cast back to the local half's dtype.

    Args:
        dim: channel count ``C`` (even).
        size: grid the spectral weight is built for, ``(T,)`` or ``(H, W)``; also sets 1-D vs 2-D convolution.
        transform: ``"dct"`` or ``"dht"``.
        size_policy: ``"strict"`` or ``"interpolate"`` (see :class:`SpectralFilter`).
    """

    def __init__(
        self,
        dim: int,
        size: tuple[int, ...],
        transform: SpectralTransform = "dct",
        size_policy: SpectralSizePolicy = "strict",
    ) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"LocalGlobalMixer splits channels in halves; dim must be even, got {dim}.")
        half = dim // 2
        conv = nn.Conv1d if len(size) == 1 else nn.Conv2d
        self.local = conv(half, half, kernel_size=3, padding=1, groups=half, bias=True)
        self.global_filter = SpectralFilter(half, size, transform, size_policy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix a channels-first ``(B, C, *grid)`` tensor; output has the same shape."""
        half = x.shape[1] // 2
        x_loc, x_glb = x[:, :half], x[:, half:]
        y_loc = self.local(x_loc)
        with autocast_off(x.device):  # the global half runs in fp32 (docs/heracles.md §Precision)
            y_glb = self.global_filter(x_glb.float())
        y_glb = y_glb.to(y_loc.dtype)
        # (B, C/2, *grid) x2 -> (B, C/2, 2, *grid) -> (B, C, *grid): channel 2i local, 2i+1 global
        return torch.stack((y_loc, y_glb), dim=2).flatten(1, 2)


"""Orthonormal DCT-II / DCT-III transforms: cached GEMM matrices and an exact FFT path.

The 2-D transform of a channels-last map ``(B, H, W, C)`` is ``X = D_H U D_Wᵀ`` per channel, applied as two GEMMs with
no permutes (see ``docs/hco.md`` §2). The FFT path (§13) is exact to float rounding and O(N log N) per axis; ``"auto"``
switches to it for large maps.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch

__all__ = [
    "DCTImpl",
    "dct1d",
    "dct2d",
    "dct_matrix",
    "idct1d",
    "idct2d",
    "resolve_dct_impl",
]

DCTImpl = Literal["matmul", "fft", "auto"]
DEFAULT_FFT_THRESHOLD = 512


@lru_cache(maxsize=128)
def _dct_matrix_cached(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    index = torch.arange(n, dtype=torch.float64)
    # D[k, x] = α_k cos(π k (x + ½) / N)
    matrix = torch.cos(math.pi * index[:, None] * (index[None, :] + 0.5) / n)
    matrix[0] *= math.sqrt(1.0 / n)
    matrix[1:] *= math.sqrt(2.0 / n)
    return matrix.to(device=device, dtype=dtype)


def dct_matrix(n: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` of shape ``(n, n)``; ``D @ Dᵀ = I`` and the inverse (DCT-III) is ``Dᵀ``.

    Built in float64 and cast once; cached per ``(n, device, dtype)`` outside any module, so it never enters a
    ``state_dict``.
    """
    if n < 1:
        raise ValueError(f"DCT length must be a positive integer, got n={n}.")
    return _dct_matrix_cached(int(n), torch.device(device if device is not None else "cpu"), dtype)


def resolve_dct_impl(impl: DCTImpl, size: int, fft_threshold: int = DEFAULT_FFT_THRESHOLD) -> Literal["matmul", "fft"]:
    """Pick the concrete implementation for a transform whose largest axis has ``size`` samples."""
    match impl:
        case "matmul" | "fft":
            return impl
        case "auto":
            return "fft" if size > fft_threshold else "matmul"
        case _:
            raise ValueError(f"Unknown DCT implementation {impl!r}; expected one of 'matmul', 'fft', 'auto'.")


def _alpha(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    alpha = torch.full((n,), math.sqrt(2.0 / n), device=device, dtype=dtype)
    alpha[0] = math.sqrt(1.0 / n)
    return alpha


def _shape_for(dim: int, ndim: int, n: int) -> list[int]:
    shape = [1] * ndim
    shape[dim] = n
    return shape


def _dct_fft(x: torch.Tensor, dim: int) -> torch.Tensor:
    """DCT-II along ``dim`` via a zero-padded FFT of length 2N: ``X_k = α_k Re(e^{−iπk/2N} FFT_2N(x)[k])``."""
    n = x.shape[dim]
    dim = dim % x.ndim
    spectrum = torch.fft.fft(x, n=2 * n, dim=dim).narrow(dim, 0, n)
    k = torch.arange(n, device=x.device, dtype=x.dtype)
    twiddle = torch.polar(torch.ones_like(k), -math.pi * k / (2 * n)).reshape(_shape_for(dim, x.ndim, n))
    scale = _alpha(n, x.device, x.dtype).reshape(_shape_for(dim, x.ndim, n))
    return (spectrum * twiddle).real * scale


def _idct_fft(coeffs: torch.Tensor, dim: int) -> torch.Tensor:
    """DCT-III (inverse of the orthonormal DCT-II) along ``dim``: ``x_n = 2N Re(IFFT_2N(b)[n])``."""
    n = coeffs.shape[dim]
    dim = dim % coeffs.ndim
    k = torch.arange(n, device=coeffs.device, dtype=coeffs.dtype)
    twiddle = torch.polar(torch.ones_like(k), math.pi * k / (2 * n)).reshape(_shape_for(dim, coeffs.ndim, n))
    scale = _alpha(n, coeffs.device, coeffs.dtype).reshape(_shape_for(dim, coeffs.ndim, n))
    b = (coeffs * scale) * twiddle  # complex, length N; zero-padded to 2N by ifft's `n`
    return torch.fft.ifft(b, n=2 * n, dim=dim).narrow(dim, 0, n).real * (2 * n)


def _dct_matmul(x: torch.Tensor, dim: int, inverse: bool) -> torch.Tensor:
    n = x.shape[dim]
    matrix = dct_matrix(n, device=x.device, dtype=x.dtype)
    matrix = matrix.T if inverse else matrix
    moved = x.movedim(dim, -1)  # (..., N)
    return (moved @ matrix.T).movedim(-1, dim)


def dct1d(x: torch.Tensor, dim: int = -1, impl: DCTImpl = "matmul") -> torch.Tensor:
    """Orthonormal DCT-II of ``x`` along ``dim``."""
    if resolve_dct_impl(impl, x.shape[dim]) == "fft":
        return _dct_fft(x, dim)
    return _dct_matmul(x, dim, inverse=False)


def idct1d(x: torch.Tensor, dim: int = -1, impl: DCTImpl = "matmul") -> torch.Tensor:
    """Orthonormal DCT-III (the inverse of :func:`dct1d`) of ``x`` along ``dim``."""
    if resolve_dct_impl(impl, x.shape[dim]) == "fft":
        return _idct_fft(x, dim)
    return _dct_matmul(x, dim, inverse=True)


def _transform_2d(
    x: torch.Tensor, layout: Literal["bhwc", "bchw"], inverse: bool, impl: DCTImpl, fft_threshold: int
) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"Expected a 4-D tensor in layout {layout!r}, got shape {tuple(x.shape)}.")
    match layout:
        case "bhwc":
            dim_h, dim_w = 1, 2
        case "bchw":
            dim_h, dim_w = 2, 3
        case _:
            raise ValueError(f"Unknown layout {layout!r}; expected 'bhwc' or 'bchw'.")
    height, width = x.shape[dim_h], x.shape[dim_w]
    if resolve_dct_impl(impl, max(height, width), fft_threshold) == "fft":
        step = _idct_fft if inverse else _dct_fft
        return step(step(x, dim_h), dim_w)

    d_h = dct_matrix(height, device=x.device, dtype=x.dtype)
    d_w = dct_matrix(width, device=x.device, dtype=x.dtype)
    if inverse:
        d_h, d_w = d_h.T, d_w.T
    if layout == "bchw":
        return d_h @ x @ d_w.T  # (H, H) @ (B, C, H, W) @ (W, W)
    batch, _, _, channels = x.shape
    # NOTE: two GEMMs on contiguous views, no permutes (hco.md §2).
    x = (d_h @ x.reshape(batch, height, width * channels)).reshape(batch * height, width, channels)  # along H
    x = d_w @ x  # (W, W) @ (B·H, W, C): along W
    return x.reshape(batch, height, width, channels)


def dct2d(
    x: torch.Tensor,
    layout: Literal["bhwc", "bchw"] = "bhwc",
    impl: DCTImpl = "matmul",
    fft_threshold: int = DEFAULT_FFT_THRESHOLD,
) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the spatial axes of a ``(B, H, W, C)`` or ``(B, C, H, W)`` tensor.

    Args:
        x: input map.
        layout: ``"bhwc"`` (channels-last, two GEMMs without permutes) or ``"bchw"``.
        impl: ``"matmul"`` (cached DCT matrices), ``"fft"`` (exact O(N log N) path) or ``"auto"``.
        fft_threshold: with ``impl="auto"``, the FFT path is used when ``max(H, W) > fft_threshold``.
    """
    return _transform_2d(x.contiguous(), layout, inverse=False, impl=impl, fft_threshold=fft_threshold)


def idct2d(
    x: torch.Tensor,
    layout: Literal["bhwc", "bchw"] = "bhwc",
    impl: DCTImpl = "matmul",
    fft_threshold: int = DEFAULT_FFT_THRESHOLD,
) -> torch.Tensor:
    """Inverse of :func:`dct2d` (orthonormal 2-D DCT-III)."""
    return _transform_2d(x.contiguous(), layout, inverse=True, impl=impl, fft_threshold=fft_threshold)

"""Orthonormal DCT-II / DCT-III transforms: cached GEMM matrices and an exact FFT path.

The 2-D transform of a channels-last map ``(B, H, W, C)`` is ``X = D_H U D_Wᵀ`` per channel, applied as two GEMMs with
no permutes (see ``docs/hco.md`` §DCT). The FFT path (§FFT path) is exact to float rounding and O(N log N) per axis;
``"auto"`` switches to it for large maps: above ``DEFAULT_FFT_THRESHOLD`` = 1024 samples per side (the GEMM path
measured faster at every size up to 1024 on CPU; the FFT path's advantage only starts beyond, near 2048 at best).
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
# NOTE: what benchmarks/hco_operator.py supports (2-core AVX-512/AMX CPU, benchmarks/RESULTS.md): the GEMM path wins at
# every measured size up to 1024 (this FFT path runs at 0.37x its speed there; an rFFT variant would cross near 2048,
# unmeasured), so ``"auto"`` keeps GEMMs up to 1024 per side (4096-px inputs at stride 4). Re-tune on other hardware.
DEFAULT_FFT_THRESHOLD = 1024


@lru_cache(maxsize=128)
def _dct_matrix_cached(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # NOTE: built outside inference mode, so a matrix first requested under `torch.inference_mode()` can still be
    # saved for backward by a later training step.
    with torch.inference_mode(False), torch.no_grad():
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


@lru_cache(maxsize=128)
def _fft_factors(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Complex per-frequency factors of length N for the forward and inverse FFT paths.

    Forward: ``α_k e^{−iπk/2N}``. Inverse: ``2N · α_k e^{+iπk/2N} · (1 for k = 0, else ½)``, which turns the
    zero-padded ``b`` of docs/hco.md §FFT path into the Hermitian half-spectrum that ``irfft`` expects (``b_0`` is
    real).
    """
    with torch.inference_mode(False), torch.no_grad():
        k = torch.arange(n, dtype=torch.float64)
        alpha = torch.full((n,), math.sqrt(2.0 / n), dtype=torch.float64)
        alpha[0] = math.sqrt(1.0 / n)
        half = torch.full((n,), 0.5, dtype=torch.float64)
        half[0] = 1.0
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        forward = torch.polar(alpha, -math.pi * k / (2 * n))
        inverse = torch.polar(alpha * half * (2 * n), math.pi * k / (2 * n))
        return forward.to(device=device, dtype=complex_dtype), inverse.to(device=device, dtype=complex_dtype)


def _dct_fft(x: torch.Tensor, dim: int) -> torch.Tensor:
    """DCT-II along ``dim`` via a zero-padded real FFT of length 2N: ``X_k = α_k Re(e^{−iπk/2N} FFT_2N(x)[k])``."""
    n = x.shape[dim]
    forward, _ = _fft_factors(n, x.device, x.dtype)
    moved = x.movedim(dim, -1).contiguous()  # (..., N): the FFT runs over a contiguous last axis
    spectrum = torch.fft.rfft(moved, n=2 * n, dim=-1)[..., :n]  # bins 0..N−1 of N+1
    return (spectrum * forward).real.movedim(-1, dim)


def _idct_fft(coeffs: torch.Tensor, dim: int) -> torch.Tensor:
    """DCT-III (inverse of the orthonormal DCT-II) along ``dim``: ``x_n = 2N Re(IFFT_2N(b)[n])``.

    ``b_k = α_k X_k e^{+iπk/2N}`` for ``k < N`` and 0 above; ``Re(IFFT(b))`` equals the inverse real FFT of the
    Hermitian half-spectrum ``(b_0, b_1/2, …, b_{N−1}/2, 0)``.
    """
    n = coeffs.shape[dim]
    _, inverse = _fft_factors(n, coeffs.device, coeffs.dtype)
    moved = coeffs.movedim(dim, -1).contiguous()  # (..., N)
    signal = torch.fft.irfft(moved * inverse, n=2 * n, dim=-1)[..., :n]  # irfft zero-pads to N+1 bins
    return signal.movedim(-1, dim)


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
        # NOTE: the FFT path runs in fp32 at least (half-precision FFTs need power-of-two sizes, docs/hco.md §FFT path).
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        step = _idct_fft if inverse else _dct_fft
        return step(step(work, dim_h), dim_w)

    d_h = dct_matrix(height, device=x.device, dtype=x.dtype)
    d_w = dct_matrix(width, device=x.device, dtype=x.dtype)
    if inverse:
        d_h, d_w = d_h.T, d_w.T
    if layout == "bchw":
        return d_h @ x @ d_w.T  # (H, H) @ (B, C, H, W) @ (W, W)
    batch, _, _, channels = x.shape
    # NOTE: two GEMMs on contiguous views, no permutes (docs/hco.md §DCT).
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

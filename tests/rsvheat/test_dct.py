"""Orthonormal DCT transforms: matrices, 1-D/2-D transforms, GEMM vs FFT paths, against scipy as the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from rsvheat.layers.dct import DEFAULT_FFT_THRESHOLD, dct1d, dct2d, dct_matrix, idct1d, idct2d, resolve_dct_impl


@pytest.mark.parametrize("n", [1, 7, 48, 56, 64, 255])
def test_dct_matrix_is_orthonormal_and_matches_scipy(n: int) -> None:
    d = dct_matrix(n)
    assert d.dtype == torch.float32 and d.shape == (n, n)
    # The fp32 matrix itself is orthonormal to 1e-6 (product taken exactly, in fp64) ...
    assert (d.double() @ d.double().T - torch.eye(n, dtype=torch.float64)).abs().max().item() <= 1e-6
    # ... while an fp32 GEMM adds its own accumulation rounding (about 2.5e-6 at N = 255).
    assert (d @ d.T - torch.eye(n)).abs().max().item() <= 1e-5
    oracle = scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)  # column x = DCT of the unit vector e_x
    assert np.abs(d.double().numpy() - oracle).max() <= 1e-5


def test_dct_matrix_rejects_empty_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        dct_matrix(0)


@pytest.mark.parametrize("impl", ["matmul", "fft"])
def test_1d_transforms_match_scipy(impl: str) -> None:
    x = torch.randn(3, 17, 5, dtype=torch.float64)
    forward = dct1d(x, dim=1, impl=impl)
    oracle = scipy.fft.dct(x.numpy(), type=2, norm="ortho", axis=1)
    assert np.abs(forward.numpy() - oracle).max() <= 1e-12
    assert torch.allclose(idct1d(forward, dim=1, impl=impl), x, atol=1e-12)


@pytest.mark.parametrize("impl", ["matmul", "fft"])
@pytest.mark.parametrize("layout", ["bhwc", "bchw"])
def test_2d_transform_matches_scipy(impl: str, layout: str) -> None:
    x = torch.randn(2, 12, 9, 4)  # (B, H, W, C)
    src = x if layout == "bhwc" else x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
    axes = (1, 2) if layout == "bhwc" else (2, 3)
    out = dct2d(src, layout=layout, impl=impl)
    oracle = scipy.fft.dctn(src.double().numpy(), type=2, norm="ortho", axes=axes)
    assert np.abs(out.double().numpy() - oracle).max() <= 1e-5


@pytest.mark.parametrize("size", [(56, 56), (24, 40), (7, 7)])
@pytest.mark.parametrize("impl", ["matmul", "fft"])
def test_round_trip(size: tuple[int, int], impl: str) -> None:
    x = torch.randn(2, *size, 96)
    back = idct2d(dct2d(x, impl=impl), impl=impl)
    assert (back - x).abs().max().item() <= 1e-5


@pytest.mark.parametrize("size", [(7, 7), (56, 56), (64, 64), (100, 60)])
def test_fft_path_equals_matmul_path_values_and_gradients(size: tuple[int, int]) -> None:
    weights = torch.randn(2, *size, 8)
    results = {}
    for impl in ("matmul", "fft"):
        x = torch.randn(2, *size, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
        spectrum = dct2d(x, impl=impl)
        back = idct2d(spectrum * torch.linspace(0.1, 1.0, size[1])[None, None, :, None], impl=impl)
        ((spectrum * weights).sum() + (back * weights).sum()).backward()
        results[impl] = (spectrum.detach(), back.detach(), x.grad)
    for matmul, fft in zip(results["matmul"], results["fft"], strict=True):
        assert (matmul - fft).abs().max().item() <= 1e-5


def test_fft_path_equals_matmul_path_in_fp64() -> None:
    x = torch.randn(2, 100, 60, 3, dtype=torch.float64)
    assert (dct2d(x, impl="matmul") - dct2d(x, impl="fft")).abs().max().item() <= 1e-12
    assert (idct2d(x, impl="matmul") - idct2d(x, impl="fft")).abs().max().item() <= 1e-12


def test_auto_switches_on_threshold_and_bad_options_list_valid_ones() -> None:
    assert resolve_dct_impl("auto", 1024) == "matmul"  # GEMMs measured faster up to 1024 (benchmarks/RESULTS.md)
    assert resolve_dct_impl("auto", DEFAULT_FFT_THRESHOLD) == "matmul"
    assert resolve_dct_impl("auto", DEFAULT_FFT_THRESHOLD + 1) == "fft"
    assert resolve_dct_impl("auto", 40, fft_threshold=32) == "fft"
    x = torch.randn(1, 40, 36, 2)
    assert torch.allclose(dct2d(x, impl="auto", fft_threshold=32), dct2d(x), atol=1e-5)
    with pytest.raises(ValueError, match="'matmul', 'fft', 'auto'"):
        resolve_dct_impl("cufft", 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bhwc"):
        dct2d(x, layout="nhwc")  # type: ignore[arg-type]


def test_matrix_first_built_in_inference_mode_supports_autograd_later() -> None:
    size = 37  # a size no other test uses, so the cache entry is created here
    with torch.inference_mode():
        dct2d(torch.randn(1, size, size, 2))
    x = torch.randn(1, size, size, 2, requires_grad=True)
    dct2d(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()

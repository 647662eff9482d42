"""The heat-conduction step and the HCO module
(docs/hco.md §Operator, §DCT, §Decay and conductivity, §HCO layer, §Mixed precision, §FFT path, §Test tolerances)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch

from rsvheat.errors import DecayNotAvailableError
from rsvheat.layers.heat2d import HeatConduction2d, apply_decay, decay_from_conductivity, decay_grid, heat_conduction


def _fve(height: int, width: int, dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.init.trunc_normal_(torch.empty(height, width, dim), std=0.02, generator=generator)


def test_decay_grid_uses_pi_n_over_h() -> None:
    grid = decay_grid(6, 4)
    assert grid.shape == (6, 4) and grid.dtype == torch.float32
    assert grid[0, 0].item() == 0.0
    assert grid[1, 0].item() == pytest.approx((math.pi / 6) ** 2, rel=1e-6)  # not (1.5π/6)² nor (2π/6)²
    assert grid[0, 3].item() == pytest.approx((3 * math.pi / 4) ** 2, rel=1e-6)
    assert grid[5, 3].item() == pytest.approx((5 * math.pi / 6) ** 2 + (3 * math.pi / 4) ** 2, rel=1e-6)


def test_heat_conduction_matches_scipy_oracle() -> None:
    x = torch.randn(2, 10, 7, 3, dtype=torch.float64)
    k = torch.rand(10, 7, 3, dtype=torch.float64)
    n = np.pi * np.arange(10) / 10
    m = np.pi * np.arange(7) / 7
    lam = n[:, None] ** 2 + m[None, :] ** 2
    spectrum = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(1, 2))
    oracle = scipy.fft.idctn(spectrum * np.exp(-k.numpy() * lam[..., None]), type=2, norm="ortho", axes=(1, 2))
    for impl in ("matmul", "fft"):
        out = heat_conduction(x.float(), k.float(), dct_impl=impl)
        assert out.dtype == torch.float32
        assert np.abs(out.double().numpy() - oracle).max() <= 1e-5


def test_dc_term_is_conserved() -> None:
    x = torch.randn(3, 24, 40, 16)
    k = torch.rand(24, 40, 16) * 5.0
    out = heat_conduction(x, k)
    assert (out.mean(dim=(1, 2)) - x.mean(dim=(1, 2))).abs().max().item() <= 1e-6


def test_energy_is_non_increasing_in_k_and_conserved_at_zero() -> None:
    u = torch.randn(2, 32, 20, 4, dtype=torch.float64)
    energies = [heat_conduction(u, k).square().sum().item() for k in (0.0, 0.01, 0.1, 0.5, 1.0, 4.0, 20.0)]
    assert energies[0] == pytest.approx(u.square().sum().item(), rel=1e-10)  # Parseval
    assert all(later <= earlier for earlier, later in zip(energies, energies[1:], strict=False))
    assert energies[-1] < 0.5 * energies[0]


def test_impulse_response_has_variance_two_k() -> None:
    size, k = 64, 2.0
    impulse = torch.zeros(1, size, size, 1, dtype=torch.float64)
    impulse[0, size // 2, size // 2, 0] = 1.0
    out = heat_conduction(impulse, k)[0, :, :, 0]
    coords = torch.arange(size, dtype=torch.float64)
    total = out.sum()
    mean_r = (out.sum(dim=1) * coords).sum() / total
    mean_c = (out.sum(dim=0) * coords).sum() / total
    var_r = (out.sum(dim=1) * (coords - mean_r) ** 2).sum() / total
    var_c = (out.sum(dim=0) * (coords - mean_c) ** 2).sum() / total
    assert total.item() == pytest.approx(1.0, abs=1e-6)
    assert var_r.item() == pytest.approx(2 * k, abs=1e-3)
    assert var_c.item() == pytest.approx(2 * k, abs=1e-3)
    assert out.min().item() >= -1e-6


def test_negative_conductivity_is_rejected() -> None:
    with pytest.raises(ValueError, match="k must be >= 0"):
        heat_conduction(torch.randn(1, 4, 4, 2), torch.full((4, 4, 2), -0.1))


def test_hco_shapes_and_parameter_count() -> None:
    dim = 24
    hco = HeatConduction2d(dim)
    assert sum(p.numel() for p in hco.parameters()) == 4 * dim**2 + 16 * dim
    out = hco(torch.randn(2, dim, 9, 13), _fve(9, 13, dim))
    assert out.shape == (2, dim, 9, 13)
    with_sce = HeatConduction2d(dim, spatial_correction=True)
    assert sum(p.numel() for p in with_sce.parameters()) == 4 * dim**2 + 18 * dim
    sce = torch.randn(1, dim, 9, 13) * 0.02
    assert with_sce(torch.randn(2, dim, 9, 13), _fve(9, 13, dim), sce).shape == (2, dim, 9, 13)
    with pytest.raises(ValueError, match="SCE"):
        with_sce(torch.randn(2, dim, 9, 13), _fve(9, 13, dim))


def test_fixed_k_ablation_has_no_to_k_and_uses_a_constant_decay() -> None:
    hco = HeatConduction2d(8, fixed_k=0.5)
    assert hco.to_k is None and not hco.needs_fve
    decay = hco.decay(6, 5, None)
    assert decay.shape == (6, 5, 1)
    assert torch.allclose(decay, decay_from_conductivity(0.5, 6, 5))
    assert hco(torch.randn(1, 8, 6, 5)).shape == (1, 8, 6, 5)
    with pytest.raises(ValueError, match="fixed_k must be >= 0"):
        HeatConduction2d(8, fixed_k=-1.0)


@pytest.mark.parametrize("dim", [96, 256, 1024])
def test_init_is_near_identity(dim: int) -> None:
    torch.manual_seed(0)
    hco = HeatConduction2d(dim)
    fve = _fve(14, 14, dim)
    k = hco.conductivity(fve)
    assert (k >= 0).all()
    assert k.mean().item() == pytest.approx(1.6e-4 * math.sqrt(dim), rel=0.3)
    assert (k == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    noise = torch.randn(2, 14, 14, dim)
    filtered = apply_decay(noise, hco.decay(14, 14, fve))
    assert ((filtered - noise).norm() / noise.norm()).item() <= 0.06


@pytest.mark.parametrize("size", [(7, 7), (56, 56), (64, 64), (100, 60)])
def test_hco_fft_path_equals_matmul_path(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    matmul = HeatConduction2d(8, dct_impl="matmul")
    fft = HeatConduction2d(8, dct_impl="fft")
    fft.load_state_dict(matmul.state_dict())
    x = torch.randn(2, 8, *size)
    fve = _fve(*size, 8)
    outputs, grads = [], []
    for hco in (matmul, fft):
        xi = x.clone().requires_grad_()
        fvei = fve.clone().requires_grad_()
        out = hco(xi, fvei)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append([xi.grad, fvei.grad, *(p.grad for p in hco.parameters())])
    assert (outputs[0] - outputs[1]).abs().max().item() <= 1e-5
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, a.abs().max().item())


@pytest.mark.parametrize("core", ["fp32", "autocast"])
def test_bf16_autocast_keeps_decay_fp32_and_stays_close(core: str) -> None:
    torch.manual_seed(0)
    hco = HeatConduction2d(64, hco_core_dtype=core)  # type: ignore[arg-type]
    x = torch.randn(2, 64, 28, 20)
    fve = _fve(28, 20, 64)
    reference = hco(x, fve)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decay = hco.decay(28, 20, fve)
        out = hco(x, fve)
    assert decay.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert ((out.float() - reference).norm() / reference.norm()).item() <= 1e-2


def test_frozen_decay_matches_and_survives_inference_mode() -> None:
    torch.manual_seed(0)
    hco = HeatConduction2d(16).eval()
    x = torch.randn(2, 16, 12, 10)
    fve = _fve(12, 10, 16)
    expected = hco(x, fve)
    with torch.inference_mode():
        hco.freeze([(12, 10)], [fve])
    assert hco.frozen and hco.has_decay(12, 10) and not hco.has_decay(5, 5)
    assert (hco(x) - expected).abs().max().item() <= 1e-6  # no FVE needed for a frozen size
    hco(x.requires_grad_()).sum().backward()  # a decay frozen under inference_mode is a normal tensor
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert "decay" not in str(list(hco.state_dict()))
    hco.drop_conductivity()
    with pytest.raises(DecayNotAvailableError, match="5×5"):
        hco(torch.randn(1, 16, 5, 5))


def test_fused_operator_in_training_mode_recomputes_the_decay_so_fve_and_to_k_learn() -> None:
    torch.manual_seed(0)
    hco = HeatConduction2d(8).eval()
    fve = _fve(6, 5, 8).requires_grad_()
    hco.freeze([(6, 5)], [fve])
    hco.train()
    assert not hco.has_decay(6, 5)  # training needs the FVE again
    hco(torch.randn(2, 8, 6, 5), fve).square().sum().backward()
    assert fve.grad is not None and fve.grad.abs().sum() > 0
    assert hco.to_k is not None and hco.to_k.weight.grad is not None
    with pytest.raises(DecayNotAvailableError, match="pass `fve`"):
        hco(torch.randn(1, 8, 6, 5))
    hco.eval()
    assert hco.has_decay(6, 5)  # eval serves the frozen decay again
    hco.drop_conductivity()
    hco.train()
    assert hco.has_decay(6, 5)  # without to_k the frozen decay is all there is


def test_eval_without_autograd_reuses_the_decay_until_fve_or_to_k_change() -> None:
    torch.manual_seed(0)
    hco = HeatConduction2d(8).eval()
    fve = _fve(6, 5, 8)
    with torch.no_grad():
        first = hco.resolve_decay(6, 5, fve)
        assert hco.resolve_decay(6, 5, fve) is first  # cached: no to_k GEMM, no exp
        assert hco.resolve_decay(6, 7, _fve(6, 7, 8)) is not first  # another size or FVE tensor recomputes
        again = hco.resolve_decay(6, 5, fve)
        assert again is not first and torch.equal(again, first)
        hco.to_k.weight.mul_(3.0)  # an in-place (EMA-style) update is seen
        assert torch.allclose(hco.resolve_decay(6, 5, fve), hco.decay(6, 5, fve))
        assert not torch.allclose(hco.resolve_decay(6, 5, fve), first)
        fve.mul_(0.0)  # so is one of the FVE
        assert torch.equal(hco.resolve_decay(6, 5, fve), torch.ones(6, 5, 8) * hco.resolve_decay(6, 5, fve)[0, 0])
    assert hco.resolve_decay(6, 5, fve).requires_grad  # with autograd the decay is part of the graph
    hco.train()
    assert hco._eval_cache is None
    with torch.no_grad():
        assert hco.resolve_decay(6, 5, fve) is not hco.resolve_decay(6, 5, fve)  # training never caches


def test_frozen_autocast_core_casts_the_decay_once_and_stays_close() -> None:
    torch.manual_seed(0)
    hco = HeatConduction2d(32, hco_core_dtype="autocast").eval()
    x = torch.randn(1, 32, 24, 16)
    fve = _fve(24, 16, 32)
    with torch.no_grad():
        reference = hco(x, fve)
        hco.freeze([(24, 16)], [fve])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first, second = hco(x), hco(x)
    assert [key[2] for key in hco._cast_cache] == [torch.bfloat16]  # one bf16 copy, reused by the second call
    assert hco._cast_cache[(24, 16, torch.bfloat16)][0] is hco._frozen[(24, 16)]  # type: ignore[index]
    assert torch.equal(first, second)
    assert ((first.float() - reference).norm() / reference.norm()).item() <= 1e-2
    hco.train()
    assert not hco._cast_cache  # training never serves the low-precision copy


def test_hco_output_is_channels_last_and_input_layout_does_not_matter() -> None:
    torch.manual_seed(0)
    hco = HeatConduction2d(16).eval()
    x = torch.randn(2, 16, 12, 10)
    fve = _fve(12, 10, 16)
    with torch.no_grad():
        out = hco(x, fve)
        out_cl = hco(x.contiguous(memory_format=torch.channels_last), fve)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - out_cl).abs().max().item() <= 1e-6

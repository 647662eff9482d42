"""The HCO spectral core as one autograd function: gradients, saved memory, bf16 (docs/hco-training.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsvheat.layers.dct import dct2d, idct2d
from rsvheat.layers.heat2d import HeatConduction2d, decay_grid
from rsvheat.layers.heat_core import _SpectralCore, conductivity_core, fve_core, multiplier_core


def _reference_core(x: torch.Tensor, pre_k: torch.Tensor, impl: str = "matmul") -> torch.Tensor:
    """Plain autograd: every op records its own saved tensors."""
    grid = decay_grid(x.shape[1], x.shape[2]).to(x.dtype)[..., None]
    decay = torch.exp(-F.relu(pre_k) * grid)
    return idct2d(dct2d(x, "bhwc", impl) * decay, "bhwc", impl)


def _grads(fn, *inputs: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = fn(*inputs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    return out.detach(), list(grads)


@pytest.mark.parametrize("impl", ["matmul", "fft"])
@pytest.mark.parametrize("size", [(7, 7), (24, 40), (33, 16)])
def test_conductivity_core_gradients_equal_plain_autograd(impl: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    height, width = size
    x = torch.randn(3, height, width, 8, requires_grad=True)
    pre_k = (torch.randn(height, width, 8) * 0.5).requires_grad_(True)  # about half the entries below 0
    grid = decay_grid(height, width)[..., None]
    out, grads = _grads(lambda a, b: conductivity_core(a, b, grid, dct_impl=impl), x, pre_k)
    ref_out, ref_grads = _grads(lambda a, b: _reference_core(a, b, impl), x, pre_k)
    assert (out - ref_out).abs().max().item() <= 1e-5
    for got, want in zip(grads, ref_grads, strict=True):  # 1e-5 of the gradient's scale (pre_k sums over B·H·W)
        assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
    assert (grads[1][pre_k.detach() <= 0] == 0).all()  # the ReLU gate
    assert grads[1].abs().sum() > 0


@pytest.mark.parametrize("impl", ["matmul", "fft"])
def test_fve_core_gradients_equal_plain_autograd(impl: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 12, 9, 8, requires_grad=True)
    fve = torch.randn(12, 9, 8, requires_grad=True)
    weight = (torch.randn(8, 8) * 0.5).requires_grad_(True)
    bias = (torch.randn(8) * 0.5).requires_grad_(True)
    grid = decay_grid(12, 9)[..., None]
    inputs = (x, fve, weight, bias)
    out, grads = _grads(lambda a, f, w, b: fve_core(a, f, w, b, grid, dct_impl=impl), *inputs)
    ref_out, ref_grads = _grads(lambda a, f, w, b: _reference_core(a, F.linear(f, w, b), impl), *inputs)
    assert (out - ref_out).abs().max().item() <= 1e-5
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.shape == want.shape and want.abs().sum() > 0
        assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
    with pytest.raises(ValueError, match="resized to the map"):
        fve_core(x, fve[:6], weight, bias, grid)


@pytest.mark.parametrize("channels", [1, 6])
def test_multiplier_core_gradients_equal_plain_autograd(channels: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 10, 12, 6, requires_grad=True)
    multiplier = torch.randn(10, 12, channels, requires_grad=True)  # any real weights, broadcast over C for 1
    out, grads = _grads(multiplier_core, x, multiplier)
    ref_out, ref_grads = _grads(lambda a, m: idct2d(dct2d(a) * m), x, multiplier)
    assert (out - ref_out).abs().max().item() <= 1e-5
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-5


def test_core_passes_gradcheck_in_fp64() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    pre_k = (torch.rand(5, 4, 3, dtype=torch.float64) + 0.1).requires_grad_(True)  # away from the ReLU kink
    grid = decay_grid(5, 4).double()[..., None]
    assert torch.autograd.gradcheck(lambda a, b: conductivity_core(a, b, grid), (x, pre_k))
    multiplier = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(multiplier_core, (x, multiplier))
    fve = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    bias = (torch.rand(3, dtype=torch.float64) + 2.0).requires_grad_(True)  # pre_k away from the ReLU kink
    assert torch.autograd.gradcheck(lambda a, f, w, b: fve_core(a, f, w, b, grid), (x, fve, weight, bias))


def _saved_bytes(fn, *inputs: torch.Tensor) -> tuple[int, list[tuple[int, ...]]]:
    """Storage bytes (and shapes) autograd keeps for backward while ``fn`` runs, the inputs' storages excluded.

    Counted per storage, so an expanded view of a DCT matrix counts as the matrix it views.
    """
    exclude = {t.untyped_storage().data_ptr() for t in inputs}
    shapes: list[tuple[int, ...]] = []
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
            shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs).sum().backward()
    return total, shapes


def test_core_keeps_one_map_and_the_pre_conductivity_for_backward() -> None:
    x = torch.randn(2, 32, 24, 16, requires_grad=True)
    pre_k = torch.randn(32, 24, 16, requires_grad=True)
    grid = decay_grid(32, 24)[..., None]
    saved, shapes = _saved_bytes(lambda a, b: conductivity_core(a, b, grid), x, pre_k)
    reference, _ = _saved_bytes(_reference_core, x, pre_k)
    assert shapes.count((2, 32, 24, 16)) == 1  # the spectrum; the pre-activation is an input (excluded)
    assert saved == x.numel() * 4 + grid.numel() * 4
    # Plain autograd also keeps ReLU's output k and the decay, two (H, W, C) tensors per block.
    assert reference >= saved + 2 * pre_k.numel() * 4
    # A bf16 input is kept in bf16 (half the bytes) and transformed again in backward.
    x16 = x.detach().bfloat16().requires_grad_(True)
    saved16, _ = _saved_bytes(lambda a, b: conductivity_core(a, b, grid), x16, pre_k)
    assert saved16 == grid.numel() * 4  # the (H, W, 1) grid; the bf16 input and pre_k are inputs
    # With to_k inside, pre_k = to_k(FVE) is not kept either: only the FVE, to_k's parameters and the grid.
    fve, weight, bias = torch.randn(32, 24, 16), torch.randn(16, 16), torch.randn(16)
    for t in (fve, weight, bias):
        t.requires_grad_(True)
    saved_fve, shapes = _saved_bytes(lambda a, f, w, b: fve_core(a, f, w, b, grid), x, fve, weight, bias)
    assert saved_fve == x.numel() * 4 + grid.numel() * 4 and (32, 24, 16) not in shapes


def _plain_hco(
    hco: HeatConduction2d, x: torch.Tensor, fve: torch.Tensor, sce: torch.Tensor | None = None
) -> torch.Tensor:
    """The HCO forward of docs/hco.md §HCO layer (and §RS-vHeat) written with plain autograd ops."""
    if hco.sce_norm is not None:
        x = hco.sce_norm(F.relu(x + sce))
    h = hco.dwconv(x).permute(0, 2, 3, 1)
    u, z = hco.linear(h).chunk(2, dim=-1)
    u = _reference_core(u, hco.to_k(fve))
    return hco.out_linear(hco.out_norm(u) * F.silu(z)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("spatial_correction", [False, True])
def test_hco_module_gradients_equal_plain_autograd(spatial_correction: bool) -> None:
    torch.manual_seed(0)
    hco = HeatConduction2d(12, spatial_correction=spatial_correction)
    with torch.no_grad():  # a trained-looking conductivity: k of order 1, half of it gated off
        hco.to_k.weight.normal_(0, 0.5)
        hco.to_k.bias.normal_(0, 0.5)
        for norm in (hco.out_norm, hco.sce_norm):
            if norm is not None:
                norm.weight.normal_(1, 0.3)
                norm.bias.normal_(0, 0.3)
    x = torch.randn(2, 12, 14, 10).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    fve = torch.randn(14, 10, 12, requires_grad=True)
    sce = torch.randn(14, 10, 12).permute(2, 0, 1).unsqueeze(0).requires_grad_(True) if spatial_correction else None
    params = [x, fve, *hco.parameters(), *([sce] if sce is not None else [])]
    results = []
    for fn in (lambda: hco(x, fve, sce), lambda: _plain_hco(hco, x, fve, sce)):
        out = fn()
        grads = torch.autograd.grad(out.square().sum(), params)
        results.append((out.detach(), grads))
    (out, grads), (ref, ref_grads) = results
    assert (out - ref).abs().max().item() <= 1e-5
    for got, want in zip(grads, ref_grads, strict=True):
        assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
        assert want.abs().sum() > 0


def test_hco_bf16_training_step_keeps_decay_and_core_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    hco = HeatConduction2d(16)
    x = torch.randn(2, 16, 12, 12)
    fve = (torch.randn(12, 12, 16) * 0.02).requires_grad_(True)
    out32 = hco(x, fve)
    grad32 = torch.autograd.grad(out32.square().sum(), [fve, hco.to_k.weight])
    seen: list[tuple[torch.dtype, torch.dtype, str]] = []
    original = _SpectralCore.forward

    def spy(ctx, x_in, operand, weight, bias, grid, kind, impl, thr):  # type: ignore[no-untyped-def]
        result = original(ctx, x_in, operand, weight, bias, grid, kind, impl, thr)
        seen.append((operand.dtype, result.dtype, kind))
        return result

    monkeypatch.setattr(_SpectralCore, "forward", staticmethod(spy))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = hco(x, fve)
    grad16 = torch.autograd.grad(out16.float().square().sum(), [fve, hco.to_k.weight])
    # One call, building the decay from the fp32 FVE (to_k inside) and returning fp32 under autocast.
    assert seen == [(torch.float32, torch.float32, "embedding")]
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()
    for got, want in zip(grad16, grad32, strict=True):
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        assert (got - want).norm() / want.norm() <= 5e-2

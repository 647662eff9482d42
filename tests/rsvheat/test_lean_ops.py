"""Recomputing fused ops of the vHeat block: same values and gradients as plain autograd, less kept for backward
(docs/hco-training.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsvheat.layers.dct import dct2d, idct2d
from rsvheat.layers.heat2d import decay_grid
from rsvheat.layers.lean_ops import gate_linear, gelu_linear, recompute_linear
from rsvheat.models.vheat import VHeatBlock


def _storage_bytes_saved(fn) -> int:  # type: ignore[no-untyped-def]
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _compare(fn, ref, inputs: list[torch.Tensor], tol: float) -> None:  # type: ignore[no-untyped-def]
    weight = torch.randn(fn().shape, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad((fn().float() * weight).sum(), inputs)
    want = torch.autograd.grad((ref().float() * weight).sum(), inputs)
    assert (fn() - ref()).abs().max().item() <= tol
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and (g - w).abs().max().item() <= tol * max(1.0, w.abs().max().item())


def test_gelu_linear_matches_plain_autograd_and_keeps_only_its_input() -> None:
    torch.manual_seed(0)
    h = torch.randn(2, 5, 7, 32, requires_grad=True)
    weight = torch.randn(8, 32, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    _compare(lambda: gelu_linear(h, weight, bias), lambda: F.linear(F.gelu(h), weight, bias), [h, weight, bias], 1e-5)
    lean = _storage_bytes_saved(lambda: gelu_linear(h, weight, bias))
    plain = _storage_bytes_saved(lambda: F.linear(F.gelu(h), weight, bias))
    assert lean == (h.numel() + weight.numel()) * 4 and plain >= lean + h.numel() * 4


def test_gate_linear_matches_plain_autograd_and_keeps_only_u_and_z() -> None:
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(16)
    linear = torch.nn.Linear(16, 12)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    u = torch.randn(2, 6, 5, 16, requires_grad=True)
    z = torch.randn(2, 6, 5, 16, requires_grad=True)
    inputs = [u, z, norm.weight, norm.bias, linear.weight, linear.bias]
    _compare(lambda: gate_linear(u, z, norm, linear), lambda: linear(norm(u) * F.silu(z)), inputs, 1e-5)
    lean = _storage_bytes_saved(lambda: gate_linear(u, z, norm, linear))
    plain = _storage_bytes_saved(lambda: linear(norm(u) * F.silu(z)))
    params = sum(t.numel() * 4 for t in (norm.weight, norm.bias, linear.weight))
    # Plain autograd also keeps the normalised u, SiLU(z) and the gate output (the Linear's input).
    assert lean == 2 * u.numel() * 4 + params and plain >= lean + 3 * u.numel() * 4


def test_recompute_linear_splits_outputs_and_skips_autograd_without_grad() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    conv = torch.randn(3, 1, 3, 3, requires_grad=True)
    weight = torch.randn(8, 3, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)

    def prefix(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(a, w, padding=1, groups=3).permute(0, 2, 3, 1)

    def lean() -> torch.Tensor:
        return torch.cat(recompute_linear(prefix, (x, conv), weight, bias, parts=2), -1)

    _compare(lean, lambda: F.linear(prefix(x, conv), weight, bias), [x, conv, weight, bias], 1e-5)
    with torch.no_grad():
        parts = recompute_linear(prefix, (x, conv), weight, bias, parts=2)
    assert all(p.grad_fn is None and p.is_contiguous() and p.shape == (2, 9, 9, 4) for p in parts)
    with pytest.raises(ValueError, match="3 equal parts"):
        recompute_linear(prefix, (x, conv), weight, bias, parts=3)


def test_lean_ops_under_bf16_autocast_match_plain_autocast() -> None:
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(16)
    linear = torch.nn.Linear(16, 16)
    h = torch.randn(3, 4, 64, requires_grad=True)
    u = torch.randn(3, 4, 16, requires_grad=True)
    z = torch.randn(3, 4, 16, requires_grad=True)
    weight = torch.randn(16, 64, requires_grad=True)

    def run(gate, tail):  # type: ignore[no-untyped-def]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # bf16 inputs as the model's GEMM outputs are under autocast
            out = gate(u.bfloat16(), z.bfloat16()) + tail(h.bfloat16()).float().mean()
        params = [h, u, z, weight, norm.weight, linear.weight, linear.bias]
        return out, torch.autograd.grad(out.float().sum(), params)

    lean, grads_lean = run(lambda a, b: gate_linear(a, b, norm, linear), lambda a: gelu_linear(a, weight))
    plain, grads_plain = run(lambda a, b: linear(norm(a) * F.silu(b)), lambda a: F.linear(F.gelu(a), weight))
    assert lean.dtype == plain.dtype and torch.equal(lean, plain)
    for g, w in zip(grads_lean, grads_plain, strict=True):
        assert g.dtype == w.dtype and torch.allclose(g, w, rtol=2e-2, atol=2e-2)


# (post_norm, sce): most map-sized (B, H, W, C) tensors of fp32 bytes a block may keep, fp32 and bf16 autocast.
_SAVED_MAPS_BOUND = {(False, False): (13, 8.5), (True, False): (12, 7), (True, True): (13, 8)}


@pytest.mark.parametrize(("post_norm", "sce"), list(_SAVED_MAPS_BOUND))
def test_vheat_block_keeps_at_most_twelve_maps_for_backward(post_norm: bool, sce: bool) -> None:
    """Plain autograd keeps 22.9 map-sized tensors per post-norm block (24.9 with the SCE); the lean ops keep 11.8.

    Kept (maps of (B, H, W, C), fp32, batch 1): the block input x (the depthwise conv and the SCE correction are
    recomputed), the core's spectrum, u and z of the gate (norm1's input is rebuilt), the MLP input, its 4C-wide
    hidden map, norm2's input, and the stage's FVE (an input here, shared by the stage's blocks: 1 map); with the SCE
    the stage's SCE too (shared, 1 map). No (H, W, C) conductivity per block. Pre-norm blocks also keep the
    LayerNorm2d outputs that the HCO and the MLP read (12.9).
    """
    bound, bound16 = _SAVED_MAPS_BOUND[(post_norm, sce)]
    block = VHeatBlock(
        32,
        post_norm=post_norm,
        layer_scale_init=1e-5 if post_norm else None,
        hco_kwargs={"spatial_correction": sce},
    )
    x = torch.randn(1, 32, 24, 24).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    fve = torch.randn(24, 24, 32, requires_grad=True)
    embedding = torch.randn(24, 24, 32, requires_grad=True).permute(2, 0, 1).unsqueeze(0) if sce else None
    saved = _storage_bytes_saved(lambda: block(x, fve, embedding))
    assert saved <= bound * x.numel() * 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        saved16 = _storage_bytes_saved(lambda: block(x, fve, embedding))
    # bf16 autocast: every kept map in bf16, the block input too (6.7 maps; the fp32 FVE and SCE count 1 map each).
    assert saved16 <= bound16 * x.numel() * 4


def _plain_block(block: VHeatBlock, x: torch.Tensor, fve: torch.Tensor, sce: torch.Tensor | None) -> torch.Tensor:
    """docs/hco.md §HCO layer and §Block (post-norm, layer scale) in plain autograd ops, no lean op."""
    hco, mlp = block.hco, block.mlp
    h = x if hco.sce_norm is None else hco.sce_norm(F.relu(x + sce))
    h = hco.dwconv(h).permute(0, 2, 3, 1)
    u, z = hco.linear(h).chunk(2, dim=-1)
    grid = decay_grid(u.shape[1], u.shape[2])[..., None]
    with torch.autocast("cpu", enabled=False):  # the core and the decay in fp32, as docs/hco.md §Mixed precision
        decay = torch.exp(-F.relu(hco.to_k(fve.float())) * grid)
        u = idct2d(dct2d(u.float(), "bhwc") * decay, "bhwc")
    u = hco.out_linear(hco.out_norm(u.to(z.dtype)) * F.silu(z)).permute(0, 3, 1, 2)
    x = x + block.norm1(u) * block.gamma1.view(1, -1, 1, 1)
    m = mlp.fc2(F.gelu(mlp.fc1(x)))
    return x + block.norm2(m) * block.gamma2.view(1, -1, 1, 1)


@pytest.mark.parametrize("sce", [False, True])
def test_post_norm_block_equals_plain_autograd_in_fp32_and_bf16(sce: bool) -> None:
    torch.manual_seed(0)
    block = VHeatBlock(16, post_norm=True, layer_scale_init=0.5, hco_kwargs={"spatial_correction": sce})
    with torch.no_grad():  # a trained-looking block: k of order 1, LayerNorm affines away from 1 and 0
        block.hco.to_k.weight.normal_(0, 0.5)
        block.hco.to_k.bias.normal_(0, 0.5)
        for module in block.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1, 0.3)
                module.bias.normal_(0, 0.3)
    x = torch.randn(2, 16, 12, 10).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    fve = torch.randn(12, 10, 16, requires_grad=True)
    embedding = torch.randn(12, 10, 16).permute(2, 0, 1).unsqueeze(0).requires_grad_(True) if sce else None
    params = [x, fve, *block.parameters(), *([embedding] if sce else [])]
    weight = torch.randn(2, 16, 12, 10, generator=torch.Generator().manual_seed(3))

    def run(fn, bf16: bool):  # type: ignore[no-untyped-def]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fn()
        return out.float().detach(), torch.autograd.grad((out.float() * weight).sum(), params)

    out, grads = run(lambda: block(x, fve, embedding), False)
    ref, ref_grads = run(lambda: _plain_block(block, x, fve, embedding), False)
    assert (out - ref).abs().max().item() <= 1e-5
    for got, want in zip(grads, ref_grads, strict=True):
        assert want.abs().sum() > 0
        assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
    out16, grads16 = run(lambda: block(x, fve, embedding), True)
    ref16, ref_grads16 = run(lambda: _plain_block(block, x, fve, embedding), True)
    assert (out16 - ref16).norm() / ref16.norm() <= 1e-2 and (out16 - out).norm() / out.norm() <= 2e-2
    for got, want, full in zip(grads16, ref_grads16, grads, strict=True):
        assert got.dtype == full.dtype and (got - want).norm() / want.norm() <= 2e-2
        assert (got - full).norm() / full.norm() <= 5e-2


@pytest.mark.parametrize("post_norm", [True, False])
def test_mlp_recompute_keeps_the_mlp_input_only_and_changes_no_bit(post_norm: bool) -> None:
    """``set_grad_checkpointing("mlp")``: the block keeps its MLP input instead of the 4C-wide hidden map and norm2's
    input (5 maps fewer in fp32; 2.9 under bf16 autocast, where a post-norm block keeps that input in bf16), and
    gives the same outputs and gradients as the block without it."""
    torch.manual_seed(0)
    block = VHeatBlock(32, post_norm=post_norm, layer_scale_init=0.5 if post_norm else None)
    x = torch.randn(1, 32, 24, 24).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    fve = torch.randn(24, 24, 32, requires_grad=True)
    params = [x, fve, *block.parameters()]
    weight = torch.randn(1, 32, 24, 24, generator=torch.Generator().manual_seed(3))
    results = {}
    for recompute in (False, True):
        block.recompute_mlp = recompute
        for bf16 in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                saved = _storage_bytes_saved(lambda: block(x, fve))
                out = block(x, fve)
            grads = torch.autograd.grad((out.float() * weight).sum(), params)
            results[recompute, bf16] = saved / (x.numel() * 4), out.detach(), grads
    for bf16, fewer in ((False, 5), (True, 2.85 if post_norm else 2.5)):
        plain_maps, plain_out, plain_grads = results[False, bf16]
        lean_maps, lean_out, lean_grads = results[True, bf16]
        assert lean_maps <= plain_maps - fewer + 0.05
        assert torch.equal(lean_out, plain_out)
        for got, want in zip(lean_grads, plain_grads, strict=True):
            assert got.dtype == want.dtype and torch.allclose(got, want, rtol=1e-6, atol=1e-7)

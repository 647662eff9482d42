"""Recomputing fused ops of the vHeat block: same values and gradients as plain autograd, less kept for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsvheat.layers.lean_ops import gelu_linear, norm_gate
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
    assert lean == h.numel() * 4 + weight.numel() * 4 and plain >= lean + h.numel() * 4


def test_norm_gate_matches_plain_autograd_and_keeps_only_u_and_z() -> None:
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    u = torch.randn(2, 6, 5, 16, requires_grad=True)
    z = torch.randn(2, 6, 5, 16, requires_grad=True)
    inputs = [u, z, norm.weight, norm.bias]
    _compare(lambda: norm_gate(u, z, norm), lambda: norm(u) * F.silu(z), inputs, 1e-5)
    lean = _storage_bytes_saved(lambda: norm_gate(u, z, norm))
    plain = _storage_bytes_saved(lambda: norm(u) * F.silu(z))
    assert lean == 2 * u.numel() * 4 + 2 * 16 * 4 and plain >= lean + 2 * u.numel() * 4


def test_lean_ops_under_bf16_autocast_match_plain_autocast() -> None:
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(16)
    h = torch.randn(3, 4, 64, requires_grad=True)
    u = torch.randn(3, 4, 16, requires_grad=True)
    z = torch.randn(3, 4, 16, requires_grad=True)
    weight = torch.randn(16, 64, requires_grad=True)

    def run(gate, tail):  # type: ignore[no-untyped-def]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # bf16 inputs as the model's GEMM outputs are under autocast
            out = gate(u.bfloat16(), z.bfloat16()) + tail(h.bfloat16()).float().mean()
        return out, torch.autograd.grad(out.float().sum(), [h, u, z, weight, norm.weight])

    lean, grads_lean = run(lambda a, b: norm_gate(a, b, norm), lambda a: gelu_linear(a, weight))
    plain, grads_plain = run(lambda a, b: norm(a) * F.silu(b), lambda a: F.linear(F.gelu(a), weight))
    assert lean.dtype == plain.dtype and torch.equal(lean, plain)
    for g, w in zip(grads_lean, grads_plain, strict=True):
        assert g.dtype == w.dtype and torch.allclose(g, w, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("post_norm", [False, True])
def test_vheat_block_keeps_at_most_sixteen_maps_for_backward(post_norm: bool) -> None:
    """22 map-sized tensors per block with plain autograd; the lean core and ops keep 15 (+ small tensors)."""
    block = VHeatBlock(32, post_norm=post_norm, layer_scale_init=1e-5 if post_norm else None)
    x = torch.randn(1, 32, 24, 24).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    fve = torch.randn(24, 24, 32, requires_grad=True)
    saved = _storage_bytes_saved(lambda: block(x, fve))
    assert saved <= 16 * x.numel() * 4

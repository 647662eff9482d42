"""Training-memory-lean fused ops of the vHeat block: elementwise results are recomputed in backward, not stored.

- :func:`gelu_linear` = ``Linear(GELU(h))`` keeps ``h`` only (plain autograd keeps ``h`` and ``GELU(h)``: the 4C-wide
  MLP hidden map twice);
- :func:`norm_gate` = ``LayerNorm(u) ⊙ SiLU(z)`` keeps ``u`` and ``z`` only (plain autograd keeps ``u``, ``z``, the
  normalised ``u`` and ``SiLU(z)``).

Both give the plain-autograd results and gradients (docs/hco-training.md); the recomputation is elementwise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["gelu_linear", "norm_gate"]


def _autocast_state(device: torch.device) -> tuple[bool, torch.dtype | None]:
    if not torch.amp.is_autocast_available(device.type):
        return False, None
    return torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)


class _GeluLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(h), weight, bias)  # autocast (if on) casts the GEMM as for plain ops

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        h, weight = ctx.saved_tensors
        dtype = h.dtype  # the GEMM's dtype in forward: bf16 under autocast, else the parameters' dtype
        grad = grad.to(dtype)
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            activation = F.gelu(h)
            # (N, out)ᵀ @ (N, hidden) -> (out, hidden), summed over every leading axis
            grad_w = (grad.reshape(-1, grad.shape[-1]).T @ activation.reshape(-1, h.shape[-1])).to(weight.dtype)
            del activation
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            grad_h = torch.ops.aten.gelu_backward(grad @ weight.to(dtype), h)
        return grad_h, grad_w, grad_b


def gelu_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(F.gelu(h), weight, bias)`` that keeps only ``h`` for backward.

    Args:
        h: ``(..., hidden)`` pre-activation.
        weight: ``(out, hidden)``.
        bias: ``(out,)`` or ``None``.
    """
    if not torch.is_grad_enabled() or not (h.requires_grad or weight.requires_grad):
        return F.linear(F.gelu(h), weight, bias)
    return _GeluLinear.apply(h, weight, bias)


class _NormGate(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, u: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> torch.Tensor:
        ctx.save_for_backward(u, z, weight, bias)
        ctx.eps = eps
        ctx.autocast = _autocast_state(u.device)
        return F.layer_norm(u, (u.shape[-1],), weight, bias, eps) * F.silu(z)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        u, z, weight, bias = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        inputs = [t.detach().requires_grad_(need) for t, need in zip((u, z, weight, bias), ctx.needs_input_grad)]
        # Recompute under the forward's autocast state, so the op dtypes (and the result) are the forward's.
        with torch.enable_grad(), torch.autocast(u.device.type, dtype=dtype, enabled=enabled):
            out = F.layer_norm(inputs[0], (u.shape[-1],), inputs[2], inputs[3], ctx.eps) * F.silu(inputs[1])
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad))
        return (*(next(grads) if t.requires_grad else None for t in inputs), None)


def norm_gate(u: torch.Tensor, z: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """``norm(u) * F.silu(z)`` over the last axis that keeps only ``u`` and ``z`` for backward."""
    if norm.weight is None or norm.bias is None:
        raise ValueError("norm_gate needs a LayerNorm with elementwise_affine=True (weight and bias).")
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in (u, z, norm.weight)):
        return norm(u) * F.silu(z)
    return _NormGate.apply(u, z, norm.weight, norm.bias, norm.eps)

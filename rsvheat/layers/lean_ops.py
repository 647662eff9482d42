"""Training-memory-lean ops of the vHeat block: ``Linear(prefix(inputs))`` that keeps only ``inputs`` for backward.

A Linear needs its input for the weight gradient, and plain autograd also keeps what the cheap ops before it needed.
:func:`recompute_linear` keeps the prefix's inputs only and recomputes the prefix (elementwise ops, a LayerNorm, a
depthwise convolution) in backward; the Linear itself is not recomputed (unless a suffix follows it), its
gradients are two GEMMs as in plain autograd. Uses in the block (docs/hco-training.md):

- :func:`gelu_linear` = ``Linear(GELU(h))`` keeps ``h`` only, not ``GELU(h)`` too (the 4C-wide MLP hidden map);
- :func:`gate_linear` = ``Linear(LayerNorm(u) ⊙ SiLU(z))`` keeps ``u`` and ``z`` only, not the normalised ``u``,
  ``SiLU(z)`` and the gate's output; with the block's post-norm LayerNorm after it, not that LayerNorm's input
  either (backward reruns the ``(C, C)`` Linear: the one recomputed GEMM);
- the HCO's input projection ``Linear(dwconv(x))`` keeps ``x`` only (``rsvheat.layers.heat2d``).

All give the plain-autograd values and gradients; under autocast the prefix is recomputed in the forward's autocast
state and the GEMMs run in the autocast dtype, as autocast runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F

__all__ = ["gate_linear", "gelu_linear", "recompute_linear"]

Prefix = Callable[..., torch.Tensor]
Suffix = Callable[..., torch.Tensor]


def _autocast_state(device: torch.device) -> tuple[bool, torch.dtype | None]:
    if not torch.amp.is_autocast_available(device.type):
        return False, None
    return torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)


def _split(weight: torch.Tensor, bias: torch.Tensor | None, parts: int) -> list[tuple[torch.Tensor, Any]]:
    biases = bias.chunk(parts) if bias is not None else (None,) * parts
    return list(zip(weight.chunk(parts), biases, strict=True))


def _plain(
    prefix: Prefix, inputs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, parts: int
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    activation = prefix(*inputs)
    if parts == 1:
        return F.linear(activation, weight, bias)
    # NOTE: one GEMM per weight block: contiguous outputs, no copy of a chunk view.
    return tuple(F.linear(activation, w, b) for w, b in _split(weight, bias, parts))


class _RecomputeLinear(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        prefix: Prefix,
        parts: int,
        suffix: Suffix | None,
        n_suffix: int,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *inputs: torch.Tensor,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        ctx.prefix, ctx.parts, ctx.suffix, ctx.n_prefix = prefix, parts, suffix, len(inputs) - n_suffix
        ctx.autocast = _autocast_state(weight.device)
        ctx.bias_dtype = None if bias is None else bias.dtype
        # The bias is needed in backward only to rebuild the Linear's output for a suffix.
        ctx.save_for_backward(weight, bias if suffix is not None else None, *inputs)
        out = _plain(prefix, inputs[: ctx.n_prefix], weight, bias, parts)
        return out if suffix is None else suffix(out, *inputs[ctx.n_prefix :])

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        weight, bias, *inputs = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        need_weight, need_bias, need_inputs = ctx.needs_input_grad[4], ctx.needs_input_grad[5], ctx.needs_input_grad[6:]
        detached = [t.detach().requires_grad_(need) for t, need in zip(inputs, need_inputs, strict=True)]
        grad_inputs: list[torch.Tensor | None] = [None] * len(detached)
        autocast = torch.autocast(weight.device.type, dtype=dtype, enabled=enabled)
        # Recompute the prefix under the forward's autocast state, so its op dtypes (and result) are the forward's.
        with torch.enable_grad(), autocast:
            activation = ctx.prefix(*detached[: ctx.n_prefix])
        if ctx.suffix is not None:
            # Rebuild the Linear's output (one GEMM) and backpropagate through the suffix first.
            with torch.no_grad(), autocast:
                linear_out = F.linear(activation.detach(), weight, bias)
            linear_out.requires_grad_(True)
            tail = [i for i in range(ctx.n_prefix, len(detached)) if detached[i].requires_grad]
            with torch.enable_grad(), autocast:
                out = ctx.suffix(linear_out, *detached[ctx.n_prefix :])
            got = torch.autograd.grad(out, [linear_out, *(detached[i] for i in tail)], grads[0], allow_unused=True)
            del out, linear_out
            grads = (got[0],)
            for i, g in zip(tail, got[1:], strict=True):
                grad_inputs[i] = g
        gemm = dtype if enabled else activation.dtype  # the dtype the forward's GEMM ran in
        flat = activation.detach().to(gemm).reshape(-1, activation.shape[-1])  # (..., in) -> (N, in)
        grad_weights, grad_biases, grad_flat = [], [], None
        for grad, w in zip(grads, weight.chunk(ctx.parts), strict=True):
            grad = grad.to(gemm).reshape(-1, grad.shape[-1])  # (..., out) -> (N, out)
            if need_weight:
                grad_weights.append(grad.T @ flat)  # (out, N) @ (N, in), summed over every leading axis
            if need_bias:
                grad_biases.append(grad.sum(0))
            if any(need_inputs[: ctx.n_prefix]):
                part = grad @ w.to(gemm)
                grad_flat = part if grad_flat is None else grad_flat.add_(part)
        del flat
        grad_weight = torch.cat(grad_weights).to(weight.dtype) if need_weight else None
        grad_bias = torch.cat(grad_biases).to(ctx.bias_dtype) if need_bias else None
        wanted = [i for i in range(ctx.n_prefix) if detached[i].requires_grad]
        if wanted and grad_flat is not None:
            grad_activation = grad_flat.reshape(activation.shape).to(activation.dtype)
            got = torch.autograd.grad(activation, [detached[i] for i in wanted], grad_activation, allow_unused=True)
            for i, g in zip(wanted, got, strict=True):
                grad_inputs[i] = g
        return None, None, None, None, grad_weight, grad_bias, *grad_inputs


def recompute_linear(
    prefix: Prefix,
    inputs: Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    parts: int = 1,
    suffix: Suffix | None = None,
    suffix_inputs: Sequence[torch.Tensor] = (),
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``F.linear(prefix(*inputs), weight, bias)`` that keeps only ``inputs`` (and the weights) for backward.

    Args:
        prefix: a cheap, deterministic function of ``inputs`` returning ``(..., in)``; it is run again in backward.
        inputs: its tensors (every tensor it reads that needs a gradient, its parameters included).
        weight: ``(out, in)``.
        bias: ``(out,)`` or ``None``.
        parts: split the output into this many equal blocks along ``out`` (one GEMM each; a tuple is returned).
        suffix: optional ``suffix(linear_out, *suffix_inputs)`` applied after the Linear (e.g. a LayerNorm); its
            input is not kept either: backward rebuilds the Linear's output, one GEMM more.
        suffix_inputs: the suffix's tensors (e.g. the LayerNorm's weight and bias).

    Returns:
        ``(..., out)``, or a tuple of ``parts`` tensors ``(..., out / parts)``.
    """
    if parts < 1 or weight.shape[0] % parts:
        raise ValueError(f"Cannot split a Linear of {weight.shape[0]} outputs into {parts} equal parts.")
    if suffix is not None and parts != 1:
        raise ValueError("A suffix needs a single Linear output (parts=1).")
    tensors = (weight, bias, *inputs, *suffix_inputs)
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors):
        out = _plain(prefix, inputs, weight, bias, parts)
        return out if suffix is None else suffix(out, *suffix_inputs)
    return _RecomputeLinear.apply(prefix, parts, suffix, len(suffix_inputs), weight, bias, *inputs, *suffix_inputs)


def gelu_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(F.gelu(h), weight, bias)`` that keeps only ``h`` for backward.

    Args:
        h: ``(..., hidden)`` pre-activation.
        weight: ``(out, hidden)``.
        bias: ``(out,)`` or ``None``.
    """
    return cast(torch.Tensor, recompute_linear(F.gelu, (h,), weight, bias))


def _norm_gate(u: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(u, (u.shape[-1],), weight, bias, eps) * F.silu(z)


def gate_linear(
    u: torch.Tensor,
    z: torch.Tensor,
    norm: torch.nn.LayerNorm,
    linear: torch.nn.Linear,
    post_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
) -> torch.Tensor:
    """``linear(norm(u) * F.silu(z))`` over the last axis that keeps only ``u`` and ``z`` for backward.

    Args:
        u: ``(..., C)`` normalised branch.
        z: ``(..., C)`` gate branch.
        norm: ``LayerNorm(C)`` with an affine weight and bias.
        linear: ``Linear(C, C_out)``.
        post_norm: optional ``(weight, bias, eps)`` of a LayerNorm over ``C_out`` applied to the result (a block's
            post-norm, layer scale folded in); its input is then not kept either (backward reruns ``linear``).
    """
    if norm.weight is None or norm.bias is None:
        raise ValueError("gate_linear needs a LayerNorm with elementwise_affine=True (weight and bias).")

    def prefix(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return _norm_gate(a, b, weight, bias, norm.eps)

    inputs = (u, z, norm.weight, norm.bias)
    if post_norm is None:
        return cast(torch.Tensor, recompute_linear(prefix, inputs, linear.weight, linear.bias))
    post_weight, post_bias, post_eps = post_norm

    def suffix(o: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(o, (o.shape[-1],), weight, bias, post_eps)

    out = recompute_linear(
        prefix, inputs, linear.weight, linear.bias, suffix=suffix, suffix_inputs=(post_weight, post_bias)
    )
    return cast(torch.Tensor, out)

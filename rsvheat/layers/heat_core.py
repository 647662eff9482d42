"""The HCO spectral core ``IDCT2(DCT2(x) ⊙ decay)`` as one autograd function that saves only what backward needs.

The orthonormal 2-D DCT ``T`` satisfies ``T⁻¹ = Tᵀ``, so the core ``y = Tᵀ diag(d) T x`` is self-adjoint: the gradient
of the input is the same operator applied to the incoming gradient, and the gradient of the multiplier is
``Σ_b (T g) ⊙ (T x)`` (docs/hco-training.md). Plain autograd keeps, per block, the fp32 spectrum, ReLU's output ``k``
and the decay ``exp(−k Λ)``; this function keeps one ``(B, H, W, C)`` tensor (the fp32 spectrum, or the input itself
when it is narrower than fp32, e.g. bf16 under autocast). :func:`fve_core` also computes ``pre_k = to_k(FVE)`` inside
and keeps only the FVE, which the blocks of a stage share; backward rebuilds ``pre_k`` and the decay.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from rsvheat.layers.dct import DEFAULT_FFT_THRESHOLD, DCTImpl, dct2d, idct2d
from rsvheat.layers.precision import autocast_off

__all__ = ["conductivity_core", "fve_core", "multiplier_core"]


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 stays fp64 (gradient checks); everything else runs the core in fp32 (docs/hco.md §Mixed precision)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _decay_from_pre_k(pre_k: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``exp(−ReLU(pre_k) ⊙ Λ)``; ``pre_k`` ``(H, W, C)``, ``grid`` ``(H, W, 1)``."""
    return torch.exp(torch.relu(pre_k) * grid.neg())


Kind = Literal["embedding", "conductivity", "multiplier"]


def _multiplier(
    kind: Kind,
    operand: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    grid: torch.Tensor | None,
    work: torch.dtype,
) -> torch.Tensor:
    """The spectral multiplier in the work dtype: from the FVE, from ``pre_k``, or ``operand`` itself."""
    operand_w = operand.to(work)
    if kind == "multiplier":
        return operand_w
    if kind == "embedding":
        operand_w = F.linear(operand_w, weight.to(work), None if bias is None else bias.to(work))  # to_k(FVE)
    return _decay_from_pre_k(operand_w, grid.to(work))


class _SpectralCore(torch.autograd.Function):
    """``IDCT2(DCT2(x) ⊙ m)`` with ``m = exp(−ReLU(pre_k) ⊙ Λ)``, ``pre_k = to_k(FVE)`` computed inside
    (``kind="embedding"``) or given (``"conductivity"``), or ``m`` given (``"multiplier"``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        operand: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        grid: torch.Tensor | None,
        kind: Kind,
        impl: DCTImpl,
        fft_threshold: int,
    ) -> torch.Tensor:
        work = _work_dtype(x)
        learned = any(ctx.needs_input_grad[1:4])  # the multiplier needs a gradient
        with autocast_off(x.device):
            multiplier = _multiplier(kind, operand, weight, bias, grid, work)
            spectrum = dct2d(x.to(work), "bhwc", impl, fft_threshold)
            keep_spectrum = x.dtype == work and learned
            # NOTE: the product is written in place unless the spectrum is what backward keeps.
            filtered = spectrum * multiplier if keep_spectrum else spectrum.mul_(multiplier)
            del multiplier
            out = idct2d(filtered, "bhwc", impl, fft_threshold)
        ctx.kind, ctx.impl, ctx.fft_threshold, ctx.x_dtype = kind, impl, fft_threshold, x.dtype
        ctx.keep_spectrum = keep_spectrum
        # A narrower input (bf16 under autocast) is kept as is and transformed again in backward: half the bytes.
        saved_input = (spectrum if keep_spectrum else x) if learned else None
        # NOTE: neither the decay nor pre_k = to_k(FVE) is kept: backward rebuilds them from the FVE, which the
        # blocks of a stage share (docs/hco-training.md).
        ctx.save_for_backward(saved_input, operand, weight, bias, grid)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        saved_input, operand, weight, bias, grid = ctx.saved_tensors
        work = torch.float64 if grad.dtype == torch.float64 or operand.dtype == torch.float64 else torch.float32
        grad_x = grad_operand = grad_weight = grad_bias = None
        with autocast_off(grad.device):
            operand_w = operand.to(work)
            pre_k = None
            if ctx.kind == "embedding":
                weight_w = weight.to(work)
                pre_k = F.linear(operand_w, weight_w, None if bias is None else bias.to(work))  # (H, W, C)
            elif ctx.kind == "conductivity":
                pre_k = operand_w
            multiplier = operand_w if pre_k is None else _decay_from_pre_k(pre_k, grid.to(work))
            grad_spectrum = dct2d(grad.to(work), "bhwc", ctx.impl, ctx.fft_threshold)  # T g
            if saved_input is not None:
                if ctx.keep_spectrum:
                    spectrum = saved_input
                else:
                    spectrum = dct2d(saved_input.to(work), "bhwc", ctx.impl, ctx.fft_threshold)
                grad_multiplier = (grad_spectrum * spectrum).sum(0)  # Σ_b (T g) ⊙ (T x): (H, W, C)
                del spectrum
                if multiplier.shape != grad_multiplier.shape:  # a broadcast multiplier, e.g. (H, W, 1)
                    grad_multiplier = grad_multiplier.sum_to_size(multiplier.shape)
                if pre_k is None:
                    grad_operand = grad_multiplier.to(operand.dtype)
                else:
                    # d/dpre_k exp(−ReLU(pre_k) Λ) = −Λ · decay · [pre_k > 0]
                    grad_pre_k = grad_multiplier.mul_(multiplier).mul_(grid.to(work).neg()).mul_(pre_k > 0)
                    if ctx.kind == "conductivity":
                        grad_operand = grad_pre_k.to(operand.dtype)
                    else:
                        flat = grad_pre_k.reshape(-1, grad_pre_k.shape[-1])  # (H, W, C) -> (H·W, C)
                        if ctx.needs_input_grad[1]:
                            grad_operand = (grad_pre_k @ weight_w).to(operand.dtype)
                        if ctx.needs_input_grad[2]:
                            grad_weight = (flat.T @ operand_w.reshape(flat.shape[0], -1)).to(weight.dtype)
                        if bias is not None and ctx.needs_input_grad[3]:
                            grad_bias = flat.sum(0).to(bias.dtype)
            if ctx.needs_input_grad[0]:
                grad_x = idct2d(grad_spectrum.mul_(multiplier), "bhwc", ctx.impl, ctx.fft_threshold)
                grad_x = grad_x.to(ctx.x_dtype)
        return grad_x, grad_operand, grad_weight, grad_bias, None, None, None, None


def _check(x: torch.Tensor, operand: torch.Tensor, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"The spectral core expects a (B, H, W, C) map, got shape {tuple(x.shape)}.")
    if operand.ndim != 3 or tuple(operand.shape[:2]) != tuple(x.shape[1:3]) or operand.shape[2] not in (1, x.shape[3]):
        raise ValueError(
            f"{name} must be (H, W, C) or (H, W, 1) for a map of shape {tuple(x.shape)}, got {tuple(operand.shape)}."
        )


def fve_core(
    x: torch.Tensor,
    fve: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    grid: torch.Tensor,
    *,
    dct_impl: DCTImpl = "matmul",
    fft_threshold: int = DEFAULT_FFT_THRESHOLD,
) -> torch.Tensor:
    """The core of :func:`conductivity_core` with ``pre_k = F.linear(fve, weight, bias)`` (``to_k``) computed
    inside, so that backward rebuilds ``pre_k`` from the stage's shared FVE instead of keeping one per block.

    Args:
        x: ``(B, H, W, C)`` channels-last map, any float dtype.
        fve: ``(H, W, C_in)`` Frequency Value Embedding at the map size.
        weight: ``(C, C_in)`` ``to_k`` weight.
        bias: ``(C,)`` ``to_k`` bias or ``None``.
        grid: ``(H, W, 1)`` eigenvalues ``Λ`` (:func:`rsvheat.layers.heat2d.decay_grid`).
        dct_impl: ``"matmul"``, ``"fft"`` or ``"auto"``.
        fft_threshold: switch size for ``"auto"``.

    Returns:
        ``(B, H, W, C)`` in the work dtype (fp32, or fp64 for fp64 input).
    """
    if x.ndim != 4 or fve.ndim != 3 or weight.ndim != 2:
        raise ValueError(
            f"fve_core expects x (B, H, W, C), fve (H, W, C_in) and weight (C, C_in); got x {tuple(x.shape)}, "
            f"fve {tuple(fve.shape)}, weight {tuple(weight.shape)}."
        )
    if tuple(fve.shape[:2]) != tuple(x.shape[1:3]) or weight.shape != (x.shape[3], fve.shape[2]):
        raise ValueError(
            f"fve {tuple(fve.shape)} and weight {tuple(weight.shape)} do not fit a map of shape {tuple(x.shape)}: "
            "the FVE must be resized to the map's (H, W) and to_k must map its width to the map's C."
        )
    return _SpectralCore.apply(x, fve, weight, bias, grid, "embedding", dct_impl, fft_threshold)


def conductivity_core(
    x: torch.Tensor,
    pre_k: torch.Tensor,
    grid: torch.Tensor,
    *,
    dct_impl: DCTImpl = "matmul",
    fft_threshold: int = DEFAULT_FFT_THRESHOLD,
) -> torch.Tensor:
    """``IDCT2(DCT2(x) ⊙ exp(−ReLU(pre_k) ⊙ Λ))`` in fp32 (fp64 for fp64 input), decay built inside the step.

    Args:
        x: ``(B, H, W, C)`` channels-last map, any float dtype.
        pre_k: ``(H, W, C)`` conductivity before the ReLU, i.e. ``to_k(FVE)``.
        grid: ``(H, W, 1)`` eigenvalues ``Λ`` (:func:`rsvheat.layers.heat2d.decay_grid`).
        dct_impl: ``"matmul"``, ``"fft"`` or ``"auto"``.
        fft_threshold: switch size for ``"auto"``.

    Returns:
        ``(B, H, W, C)`` in the work dtype (fp32, or fp64 for fp64 input).
    """
    _check(x, pre_k, "pre_k")
    return _SpectralCore.apply(x, pre_k, None, None, grid, "conductivity", dct_impl, fft_threshold)


def multiplier_core(
    x: torch.Tensor,
    multiplier: torch.Tensor,
    *,
    dct_impl: DCTImpl = "matmul",
    fft_threshold: int = DEFAULT_FFT_THRESHOLD,
) -> torch.Tensor:
    """``IDCT2(DCT2(x) ⊙ multiplier)`` in fp32 (fp64 for fp64 input); ``multiplier`` may require grad.

    Args:
        x: ``(B, H, W, C)`` channels-last map, any float dtype.
        multiplier: ``(H, W, C)`` or ``(H, W, 1)`` spectral weights, e.g. a frozen decay.
        dct_impl: ``"matmul"``, ``"fft"`` or ``"auto"``.
        fft_threshold: switch size for ``"auto"``.
    """
    _check(x, multiplier, "multiplier")
    return _SpectralCore.apply(x, multiplier, None, None, None, "multiplier", dct_impl, fft_threshold)

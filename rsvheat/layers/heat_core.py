"""The HCO spectral core ``IDCT2(DCT2(x) ⊙ decay)`` as one autograd function that saves only what backward needs.

The orthonormal 2-D DCT ``T`` satisfies ``T⁻¹ = Tᵀ``, so the core ``y = Tᵀ diag(d) T x`` is self-adjoint: the gradient
of the input is the same operator applied to the incoming gradient, and the gradient of the multiplier is
``Σ_b (T g) ⊙ (T x)`` (docs/hco-training.md). Plain autograd keeps, per block, the fp32 spectrum, ReLU's output ``k``
and the decay ``exp(−k Λ)``; this function keeps one ``(B, H, W, C)`` tensor (the fp32 spectrum, or the input itself
when it is narrower than fp32, e.g. bf16 under autocast) and the ``(H, W, C)`` pre-activation conductivity, and
rebuilds the decay in backward.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from rsvheat.layers.dct import DEFAULT_FFT_THRESHOLD, DCTImpl, dct2d, idct2d
from rsvheat.layers.precision import autocast_off

__all__ = ["conductivity_core", "multiplier_core"]


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 stays fp64 (gradient checks); everything else runs the core in fp32 (docs/hco.md §Mixed precision)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _decay_from_pre_k(pre_k: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``exp(−ReLU(pre_k) ⊙ Λ)``; ``pre_k`` ``(H, W, C)``, ``grid`` ``(H, W, 1)``."""
    return torch.exp(torch.relu(pre_k) * grid.neg())


class _SpectralCore(torch.autograd.Function):
    """``IDCT2(DCT2(x) ⊙ m)`` with ``m = exp(−ReLU(pre_k) ⊙ Λ)`` (``kind="conductivity"``) or ``m`` given."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        operand: torch.Tensor,
        grid: torch.Tensor | None,
        kind: Literal["conductivity", "multiplier"],
        impl: DCTImpl,
        fft_threshold: int,
    ) -> torch.Tensor:
        work = _work_dtype(x)
        with autocast_off(x.device):
            operand_w = operand.to(work)
            multiplier = _decay_from_pre_k(operand_w, grid.to(work)) if kind == "conductivity" else operand_w
            spectrum = dct2d(x.to(work), "bhwc", impl, fft_threshold)
            keep_spectrum = x.dtype == work and ctx.needs_input_grad[1]
            # NOTE: the product is written in place unless the spectrum is what backward keeps.
            filtered = spectrum * multiplier if keep_spectrum else spectrum.mul_(multiplier)
            out = idct2d(filtered, "bhwc", impl, fft_threshold)
        ctx.kind, ctx.impl, ctx.fft_threshold, ctx.x_dtype = kind, impl, fft_threshold, x.dtype
        ctx.keep_spectrum = keep_spectrum
        saved_input = None
        if ctx.needs_input_grad[1]:
            # A narrower input (bf16 under autocast) is kept as is and transformed again in backward: half the bytes.
            saved_input = spectrum if keep_spectrum else x
        ctx.save_for_backward(saved_input, operand, grid)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        saved_input, operand, grid = ctx.saved_tensors
        work = torch.float64 if grad.dtype == torch.float64 or operand.dtype == torch.float64 else torch.float32
        grad_x = grad_operand = None
        with autocast_off(grad.device):
            operand_w = operand.to(work)
            if ctx.kind == "conductivity":
                multiplier = _decay_from_pre_k(operand_w, grid.to(work))
            else:
                multiplier = operand_w
            grad_spectrum = dct2d(grad.to(work), "bhwc", ctx.impl, ctx.fft_threshold)  # T g
            if ctx.needs_input_grad[1]:
                if ctx.keep_spectrum:
                    spectrum = saved_input
                else:
                    spectrum = dct2d(saved_input.to(work), "bhwc", ctx.impl, ctx.fft_threshold)
                grad_multiplier = (grad_spectrum * spectrum).sum(0)  # Σ_b (T g) ⊙ (T x): (H, W, C)
                del spectrum
                if multiplier.shape != grad_multiplier.shape:  # a broadcast multiplier, e.g. (H, W, 1)
                    grad_multiplier = grad_multiplier.sum_to_size(multiplier.shape)
                if ctx.kind == "conductivity":
                    # d/dpre_k exp(−ReLU(pre_k) Λ) = −Λ · decay · [pre_k > 0]
                    grad_multiplier = grad_multiplier * multiplier * grid.to(work).neg() * (operand_w > 0)
                grad_operand = grad_multiplier.to(operand.dtype)
            if ctx.needs_input_grad[0]:
                grad_x = idct2d(grad_spectrum.mul_(multiplier), "bhwc", ctx.impl, ctx.fft_threshold)
                grad_x = grad_x.to(ctx.x_dtype)
        return grad_x, grad_operand, None, None, None, None


def _check(x: torch.Tensor, operand: torch.Tensor, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"The spectral core expects a (B, H, W, C) map, got shape {tuple(x.shape)}.")
    if operand.ndim != 3 or tuple(operand.shape[:2]) != tuple(x.shape[1:3]) or operand.shape[2] not in (1, x.shape[3]):
        raise ValueError(
            f"{name} must be (H, W, C) or (H, W, 1) for a map of shape {tuple(x.shape)}, got {tuple(operand.shape)}."
        )


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
    return _SpectralCore.apply(x, pre_k, grid, "conductivity", dct_impl, fft_threshold)


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
    return _SpectralCore.apply(x, multiplier, None, "multiplier", dct_impl, fft_threshold)

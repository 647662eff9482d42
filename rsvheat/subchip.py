"""Crop + receptive-field halo: recompute only the outputs a changed box reaches, exactly
(docs/change-aware.md §Crop + receptive-field halo).

For a changed box B (input pixels) of a model with halo R and output stride S:

1. affected outputs A = snap_out(B ⊕ (R + S), S), clipped to the image;
2. crop K = snap_out(A ⊕ R, S), clipped to the image (its origin is a multiple of S, so the output grids align);
3. run the model on x[K] and paste its outputs for A (output coordinates A/S - K/S) into the cached map.

Zero padding at an interior crop edge corrupts only outputs within R of it, and A lies at least R inside K; at the
image border the crop edge is the image edge, as in the full run. Results match a full recompute up to floating-point
reassociation (≤ 1e-5), not bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = ["MAX_CROP_FRAC", "CropPlan", "plan_crop", "subchip_forward"]

Box = tuple[int, int, int, int]  # (row0, col0, row1, col1), half-open, input pixels
MAX_CROP_FRAC = 0.6  # crops covering more than this fraction of the tile: recompute the whole tile instead


@dataclass(frozen=True)
class CropPlan:
    """Where to crop (``crop``) and which outputs to paste (``affected``), both in input pixels, half-open."""

    affected: Box
    crop: Box

    @property
    def crop_area(self) -> int:
        """Crop area in input pixels."""
        return (self.crop[2] - self.crop[0]) * (self.crop[3] - self.crop[1])


def _snap_out(box: Box, pad: int, stride: int, shape: tuple[int, int]) -> Box:
    r0, c0, r1, c1 = box
    h, w = shape
    r0 = max(0, (r0 - pad) // stride * stride)
    c0 = max(0, (c0 - pad) // stride * stride)
    r1 = min(h, math.ceil((r1 + pad) / stride) * stride)
    c1 = min(w, math.ceil((c1 + pad) / stride) * stride)
    return r0, c0, r1, c1


def plan_crop(box: Box, halo: int, stride: int, shape: tuple[int, int]) -> CropPlan:
    """The crop and paste region for one changed box on an ``(H, W)`` input."""
    affected = _snap_out(box, halo + stride, stride, shape)
    return CropPlan(affected=affected, crop=_snap_out(affected, halo, stride, shape))


def subchip_forward(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    cached: Tensor,
    boxes: Sequence[Box],
    halo: int,
    stride: int,
    *,
    max_crop_frac: float = MAX_CROP_FRAC,
) -> tuple[Tensor, int]:
    """Update ``cached`` outputs for the changed ``boxes`` of input ``x``.

    Args:
        forward: the dense model, ``(1, C, h, w) -> (1, K, h', w')`` (h' = ⌈h/S⌉ for centred padding).
        x: ``(C, H, W)`` the new input.
        cached: ``(K, H', W')`` outputs computed on the previous input (not modified).
        boxes: changed boxes in input pixels (after merging).
        halo, stride: R and S of the model (:func:`rsvheat.receptive.receptive_field`).
        max_crop_frac: above this total crop area (fraction of H·W) the whole input is recomputed.

    Returns:
        ``(outputs (K, H', W'), input pixels the model ran on)``.
    """
    h, w = x.shape[-2:]
    plans = [plan_crop(b, halo, stride, (h, w)) for b in boxes]
    work = sum(p.crop_area for p in plans)
    if work > max_crop_frac * h * w:
        return forward(x[None])[0], h * w
    out = cached.clone()
    oh, ow = out.shape[-2:]
    for plan in plans:
        r0, c0, r1, c1 = plan.crop
        part = forward(x[None, :, r0:r1, c0:c1])[0]  # (K, h_k, w_k) on the output grid of the crop
        a0, b0 = plan.affected[0] // stride, plan.affected[1] // stride
        a1 = min(math.ceil(plan.affected[2] / stride), oh)
        b1 = min(math.ceil(plan.affected[3] / stride), ow)
        k0, j0 = r0 // stride, c0 // stride
        a1 = min(a1, k0 + part.shape[-2])
        b1 = min(b1, j0 + part.shape[-1])
        out[:, a0:a1, b0:b1] = part[:, a0 - k0 : a1 - k0, b0 - j0 : b1 - j0]
    return out, work

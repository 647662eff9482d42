"""Losses of the frequency pretraining (docs/pretraining.md §4): L_spa, L_fre and L_con (InfoNCE or cosine).

- :func:`spatial_loss`: pixel L1 over valid pixels and bands.
- :func:`frequency_loss`: L1 between orthonormal 2-D DCTs (scale s = 1: for white errors it equals L_spa in
  expectation); invalid pixels are zeroed in both images first and chips with more than 20 % invalid are skipped.
- :func:`info_nce`: symmetric InfoNCE, τ = 0.1; with ``torch.distributed`` initialised the other ranks' embeddings
  are all-gathered *with* gradient and serve as extra negatives.
- :func:`cosine_loss`: the symmetrised SimSiam form ``1 − cos(pred(z_a), sg(z_b))`` (needs a predictor).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rsvheat.layers.dct import dct2d
from rsvheat.ssl.errors import NonFiniteLossError
from rsvheat.ssl.masking import apply_valid, valid_mask

__all__ = [
    "MAX_INVALID_FOR_FRE",
    "cosine_loss",
    "frequency_loss",
    "gather_with_grad",
    "info_nce",
    "spatial_loss",
]

MAX_INVALID_FOR_FRE = 0.2  # chips with a larger invalid fraction get no L_fre (docs/pretraining.md §6)


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    """A 0 that keeps ``x`` in the autograd graph (so every rank's backward visits the same parameters)."""
    return x.sum() * 0.0


def spatial_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_valid |x̂ − x|`` over valid pixels and bands of ``(B, C, H, W)`` images; 0 when nothing is valid.

    ``valid`` is ``(B, H, W)`` or ``(B, C, H, W)`` bool (``None``: all valid). Invalid pixels contribute nothing,
    whatever their values (NaN included).
    """
    if pred.shape != target.shape:
        raise ValueError(f"L_spa needs equal shapes; prediction {tuple(pred.shape)} vs target {tuple(target.shape)}.")
    error = (pred.float() - target.float()).abs()
    if valid is None:
        return error.mean()
    mask = valid_mask(pred, valid).expand_as(error)
    # NOTE: clamp instead of a branch: no device sync, and 0 (still in the graph) when nothing is valid.
    return torch.where(mask, error, torch.zeros((), device=error.device)).sum() / mask.sum().clamp(min=1)


def frequency_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    max_invalid: float = MAX_INVALID_FOR_FRE,
    check_finite: bool = True,
) -> torch.Tensor:
    """``mean |DCT2(x̂) − DCT2(x)|`` with the orthonormal DCT, over the chips with at most ``max_invalid`` invalid.

    Invalid pixels are set to 0 in both images before the DCT. The DCT runs in fp32 even under autocast.

    Raises:
        NonFiniteLossError: the result is NaN or infinite (``check_finite``; costs one device sync).
    """
    if pred.shape != target.shape:
        raise ValueError(f"L_fre needs equal shapes; prediction {tuple(pred.shape)} vs target {tuple(target.shape)}.")
    keep = None
    if valid is not None:
        mask = valid_mask(pred, valid)
        invalid_fraction = 1.0 - mask.float().mean(dim=(1, 2, 3))  # (B,)
        keep = invalid_fraction <= max_invalid
        if not bool(keep.any()):
            return _zero_like_graph(pred)
        pred, target, valid = pred[keep], target[keep], mask[keep]
    with torch.autocast(device_type=pred.device.type, enabled=False):
        spectra = dct2d(apply_valid(pred.float(), valid) - apply_valid(target.float(), valid), layout="bchw")
        loss = spectra.abs().mean()  # the DCT is linear: DCT(x̂) − DCT(x) = DCT(x̂ − x)
    if check_finite and not bool(torch.isfinite(loss)):
        raise NonFiniteLossError("fre", f"mean |ΔDCT| = {loss.item()} over {pred.shape[0]} chip(s)")
    return loss


class _GatherRows(torch.autograd.Function):
    """All-gather of equal-shaped ``(B, D)`` rows whose backward returns this rank's slice of the summed gradient.

    NOTE: the backward all-reduces the full gradient and slices it (gloo has no reduce-scatter); for embeddings of
    a few hundred floats per row the extra volume is negligible.
    """

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, rows.shape[0]
        out = torch.empty((world * rows.shape[0], *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        dist.all_gather_into_tensor(out, rows.contiguous())
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's use of every row, summed
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows of ``z`` concatenated in rank order, with gradient flowing back to each rank's own rows.

    Ranks may hold different batch sizes (rows are padded for the collective and trimmed after). Without an
    initialised process group (or with one rank) ``z`` is returned as is. Every rank must call this collectively.

    Returns:
        ``(z_all, offset)``: ``(ΣB_r, D)`` and the index of this rank's first row in ``z_all``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([z.shape[0]], device=z.device, dtype=torch.long)
    sizes = torch.empty(world, device=z.device, dtype=torch.long)
    dist.all_gather_into_tensor(sizes, size)
    counts = [int(s) for s in sizes.tolist()]
    longest = max(counts)
    padded = F.pad(z, (0, 0, 0, longest - z.shape[0]))  # (B_r, D) -> (B_max, D)
    gathered = _GatherRows.apply(padded).reshape(world, longest, *z.shape[1:])  # (world·B_max, D) -> (world, B_max, D)
    z_all = torch.cat([part[:count] for part, count in zip(gathered, counts, strict=True)])
    return z_all, sum(counts[:rank])


def info_nce(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.1, *, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE ``½[CE(S, I) + CE(Sᵀ, I)]`` with ``S_ij = cos(z_i^a, z_j^b) / τ``.

    Row ``i`` of ``z_a`` and row ``i`` of ``z_b`` are positives; every other row (on every rank when ``gather`` and
    ``torch.distributed`` is initialised) is a negative.

    Args:
        z_a: ``(B, D)`` embeddings of one view (normalised here).
        z_b: ``(B, D)`` embeddings of the other view.
        temperature: ``τ``.
        gather: gather negatives across ranks (with gradient).
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(
            f"InfoNCE needs two (B, D) embeddings of one shape; got {tuple(z_a.shape)}, {tuple(z_b.shape)}."
        )
    if temperature <= 0:
        raise ValueError(f"InfoNCE temperature must be > 0, got {temperature}.")
    z_a, z_b = F.normalize(z_a.float(), dim=1), F.normalize(z_b.float(), dim=1)
    all_a, offset = gather_with_grad(z_a) if gather else (z_a, 0)
    all_b, _ = gather_with_grad(z_b) if gather else (z_b, 0)
    labels = torch.arange(z_a.shape[0], device=z_a.device) + offset
    loss_ab = F.cross_entropy(z_a @ all_b.T / temperature, labels)  # (B, ΣB): local rows vs every rank's columns
    loss_ba = F.cross_entropy(z_b @ all_a.T / temperature, labels)
    return 0.5 * (loss_ab + loss_ba)


def cosine_loss(p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """``½[(1 − cos(p_a, sg(z_b))) + (1 − cos(p_b, sg(z_a)))]``, averaged over the batch (SimSiam's form).

    ``p_*`` are predictor outputs, ``z_*`` projections; the stop-gradient on ``z`` (with the predictor) is what
    keeps this from collapsing to a constant embedding.
    """
    if not p_a.shape == p_b.shape == z_a.shape == z_b.shape:
        raise ValueError(
            f"cosine loss needs four (B, D) tensors of one shape; got {tuple(p_a.shape)}, {tuple(p_b.shape)}, "
            f"{tuple(z_a.shape)}, {tuple(z_b.shape)}."
        )
    sim_a = F.cosine_similarity(p_a.float(), z_b.detach().float(), dim=1)
    sim_b = F.cosine_similarity(p_b.float(), z_a.detach().float(), dim=1)
    return 1.0 - 0.5 * (sim_a.mean() + sim_b.mean())

"""Segmentation loss for pretraining on noisy labels: cross-entropy + soft Dice, label smoothing, small-loss selection.

Liu et al. (arXiv 2402.16164) pretrain a whole segmentation network on noisy masks with plain CE + Dice, then keep
only the encoder. Two common noise-robust options are available and off by default (docs/noisy-pretraining.md):

- **label smoothing** ``ε``: the CE target puts ``1 - ε`` on the label and spreads ``ε`` over all classes;
- **small-loss selection** (Han et al., Co-teaching, arXiv 1804.06872): per batch, only the ``1 - drop`` fraction of
  samples with the smallest CE trains; samples with large loss are more likely mislabelled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["noisy_segmentation_loss", "soft_dice_loss"]


def soft_dice_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, eps: float = 1.0) -> Tensor:
    """Multi-class soft Dice, ``1 - mean_k (2 Σ p_k t_k + eps) / (Σ p_k + Σ t_k + eps)`` over valid pixels.

    Args:
        logits: (B, K, H, W).
        target: (B, H, W) class indices, ``ignore_index`` where unlabelled.
        eps: smoothing; a class absent from both prediction and target scores 1 (no loss).
    """
    num_classes = logits.shape[1]
    valid = target != ignore_index  # (B, H, W)
    prob = logits.float().softmax(1) * valid.unsqueeze(1)  # (B, K, H, W), 0 on ignored pixels
    onehot = F.one_hot(torch.where(valid, target, 0).long(), num_classes)  # (B, H, W) -> (B, H, W, K)
    onehot = onehot.permute(0, 3, 1, 2).to(prob.dtype) * valid.unsqueeze(1)  # (B, H, W, K) -> (B, K, H, W)
    inter = (prob * onehot).sum((0, 2, 3))  # (K,)
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def noisy_segmentation_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    label_smoothing: float = 0.0,
    dice_weight: float = 1.0,
    drop_fraction: float = 0.0,
) -> dict[str, Tensor]:
    """CE + ``dice_weight`` · Dice over the kept samples of a batch.

    Args:
        logits: (B, K, H, W).
        target: (B, H, W) class indices, ``ignore_index`` where unlabelled.
        label_smoothing: CE label smoothing ``ε`` in [0, 1).
        dice_weight: weight of the Dice term (0: CE only).
        drop_fraction: fraction of the labelled samples with the largest CE left out of the loss, in [0, 1).

    Returns:
        ``loss`` (with gradient) and the detached ``ce``, ``dice`` and ``kept`` (share of labelled samples kept).

    Raises:
        ValueError: an option is out of range or the target does not match the logits.
    """
    if not 0 <= label_smoothing < 1 or not 0 <= drop_fraction < 1 or dice_weight < 0:
        raise ValueError(
            f"label_smoothing={label_smoothing} and drop_fraction={drop_fraction} must be in [0, 1), "
            f"dice_weight={dice_weight} >= 0."
        )
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"Target {tuple(target.shape)} does not match logits {tuple(logits.shape)}; pass (B, H, W).")
    target = target.long()
    valid = target != ignore_index
    pixel_ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, label_smoothing=label_smoothing,
                               reduction="none")  # (B, H, W), 0 on ignored pixels
    counts = valid.sum((1, 2))  # (B,)
    labelled = counts > 0
    if not labelled.any():
        zero = logits.sum() * 0.0  # NOTE: keeps the graph (DDP) and contributes nothing for an unlabelled batch
        return {"loss": zero, "ce": zero.detach(), "dice": zero.detach(), "kept": zero.detach()}
    sample_ce = pixel_ce.sum((1, 2)) / counts.clamp_min(1)  # (B,) mean CE per sample
    keep = labelled.clone()
    n_labelled = int(labelled.sum())
    n_keep = max(1, math.ceil((1 - drop_fraction) * n_labelled))
    if n_keep < n_labelled:
        ranked = torch.where(labelled, sample_ce.detach(), torch.full_like(sample_ce, math.inf))
        keep = torch.zeros_like(labelled)
        keep[ranked.argsort()[:n_keep]] = True
    ce = pixel_ce[keep].sum() / counts[keep].sum()
    dice = soft_dice_loss(logits[keep], target[keep], ignore_index) if dice_weight > 0 else ce.new_zeros(())
    loss = ce + dice_weight * dice
    kept = torch.tensor(n_keep / n_labelled, device=logits.device)
    return {"loss": loss, "ce": ce.detach(), "dice": dice.detach(), "kept": kept}

"""CE + Dice for noisy-label pretraining: exact values, label smoothing, small-loss selection, unlabelled batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsvheat.heads.noisy_loss import noisy_segmentation_loss, soft_dice_loss


def _logits(target: torch.Tensor, num_classes: int, scale: float) -> torch.Tensor:
    return scale * F.one_hot(target.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2).float()


def test_dice_and_ce_against_hand_values() -> None:
    target = torch.tensor([[[0, 1], [1, 255]]])  # (1, 2, 2), one ignored pixel
    logits = torch.zeros(1, 2, 2, 2)  # uniform: p = 1/2 everywhere
    # Dice per class k: (2 Σ p t + 1) / (Σ p + Σ t + 1) over the 3 valid pixels: class 0 (2·0.5 + 1) / (1.5 + 1 + 1),
    # class 1 (2·1 + 1) / (1.5 + 2 + 1).
    expected = 1 - ((2.0 / 3.5) + (3.0 / 4.5)) / 2
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected)
    out = noisy_segmentation_loss(logits, target)
    assert out["ce"].item() == pytest.approx(math.log(2))
    assert out["loss"].item() == pytest.approx(math.log(2) + expected)
    perfect = noisy_segmentation_loss(_logits(target, 2, 30.0), target)
    assert perfect["ce"].item() < 1e-6 and perfect["dice"].item() < 1e-6
    smoothed = noisy_segmentation_loss(_logits(target, 2, 30.0), target, label_smoothing=0.1, dice_weight=0.0)
    assert smoothed["ce"].item() == pytest.approx(0.05 * 30, rel=1e-3)  # ε/K of the mass on the wrong class: ε/2·30


def test_small_loss_selection_drops_the_mislabelled_sample() -> None:
    target = torch.zeros(4, 3, 3, dtype=torch.long)
    logits = _logits(target, 2, 5.0)
    noisy = target.clone()
    noisy[3] = 1  # sample 3 is mislabelled: its CE is the largest
    all_kept = noisy_segmentation_loss(logits, noisy, dice_weight=0.0)
    dropped = noisy_segmentation_loss(logits, noisy, dice_weight=0.0, drop_fraction=0.25)
    clean = noisy_segmentation_loss(logits[:3], target[:3], dice_weight=0.0)
    assert dropped["kept"].item() == pytest.approx(0.75) and all_kept["kept"].item() == 1.0
    assert dropped["ce"].item() == pytest.approx(clean["ce"].item())
    assert all_kept["ce"].item() > 10 * dropped["ce"].item()


def test_unlabelled_batch_and_bad_options() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = noisy_segmentation_loss(logits, torch.full((2, 4, 4), 255))
    out["loss"].backward()
    assert out["loss"].item() == 0 and logits.grad is not None and not logits.grad.any()
    with pytest.raises(ValueError, match=r"drop_fraction=1.0 must be in \[0, 1\)"):
        noisy_segmentation_loss(logits, torch.zeros(2, 4, 4, dtype=torch.long), drop_fraction=1.0)
    with pytest.raises(ValueError, match="does not match logits"):
        noisy_segmentation_loss(logits, torch.zeros(2, 5, 4, dtype=torch.long))

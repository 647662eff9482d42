"""Binary change-detection head for a siamese (weight-shared) encoder.

Each stage's before/after maps are fused as ``[a, b, |a - b|]`` by a 1x1 conv, then a UPerNet decoder maps the fused
pyramid to one change logit per pixel at the input size. The absolute difference makes "no change" easy to express;
keeping ``a`` and ``b`` lets the head tell appearing from disappearing objects.

Reference: Daudt et al., "Fully Convolutional Siamese Networks for Change Detection" (FC-Siam-diff / -conc),
arXiv:1810.08462.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsvheat.heads.decoder import ConvNormAct, UPerNetDecoder, feature_channels
from rsvheat.heads.metrics import BinaryChangeMetric

__all__ = ["ChangeHead", "dice_loss"]


def dice_loss(logits: Tensor, target: Tensor, valid: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss of the positive class over valid pixels, pooled over the batch.

    Args:
        logits: change logits, any shape.
        target: 0/1 mask, same shape.
        valid: boolean mask of pixels to count, same shape.
        eps: smoothing; keeps the loss defined (0) when neither mask has positives.
    """
    prob = torch.sigmoid(logits) * valid
    target = target * valid
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + eps) / (prob.sum() + target.sum() + eps)


class ChangeHead(nn.Module):
    """Per-level ``[a, b, |a-b|]`` fusion -> UPerNet decoder -> one change logit per pixel at the input size.

    Args:
        feature_info: the backbone's ``feature_info``.
        channels: decoder width.
        pool_scales: PSP pooling grid sizes on the coarsest fused map.
        ignore_index: target value of nodata pixels.
        bce_weight: weight of the BCE term.
        dice_weight: weight of the Dice term (helps with the rarity of changed pixels).
        threshold: probability above which the metric counts a pixel as changed.
    """

    def __init__(
        self,
        feature_info: Sequence[dict[str, object]],
        channels: int = 128,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        ignore_index: int = 255,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        in_channels = feature_channels(feature_info)
        self.ignore_index = ignore_index
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.threshold = threshold
        self.fuse = nn.ModuleList(ConvNormAct(3 * c, c, 1) for c in in_channels)
        self.decoder = UPerNetDecoder(in_channels, channels, pool_scales)
        self.classifier = nn.Conv2d(channels, 1, 1)

    def forward(self, before: Sequence[Tensor], after: Sequence[Tensor], out_size: tuple[int, int]) -> Tensor:
        """Stage maps of both dates (finest first) -> (B, 1, H, W) change logits with ``(H, W) = out_size``."""
        fused = [
            fuse(torch.cat([a, b, (a - b).abs()], dim=1))  # 3 x (B, C, h, w) -> (B, 3C, h, w) -> (B, C, h, w)
            for fuse, a, b in zip(self.fuse, before, after, strict=True)
        ]
        logits = self.classifier(self.decoder(fused))  # (B, 1, H/4, W/4)
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """BCE + Dice over the valid pixels of a (B, H, W) or (B, 1, H, W) 0/1 change mask."""
        if target.ndim == 3:
            target = target.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        if target.shape != logits.shape:
            raise ValueError(
                f"Change target {tuple(target.shape)} does not match the logits {tuple(logits.shape)}; "
                "pass a (B, H, W) 0/1 mask at the input size."
            )
        valid = target != self.ignore_index
        target = torch.where(valid, target, torch.zeros_like(target)).to(logits.dtype)
        num_valid = valid.sum()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = (bce * valid).sum() / num_valid.clamp_min(1)
        return self.bce_weight * bce + self.dice_weight * dice_loss(logits, target, valid)

    def metric(self) -> BinaryChangeMetric:
        """A fresh streaming precision / recall / F1 / IoU of the change class."""
        return BinaryChangeMetric(self.threshold, self.ignore_index)

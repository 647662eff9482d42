"""Semantic segmentation head: UPerNet decoder over the four stage maps, logits at the input size.

Nodata pixels carry ``ignore_index`` in the target and are skipped by both the loss and the metric.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from rsvheat.heads.decoder import UPerNetDecoder, feature_channels
from rsvheat.heads.metrics import SegmentationMetric

__all__ = ["SegmentationHead"]


class SegmentationHead(nn.Module):
    """UPerNet decoder -> dropout -> 1x1 classifier -> bilinear upsampling to the input size.

    Args:
        feature_info: the backbone's ``feature_info``.
        num_classes: number of classes.
        channels: decoder width.
        pool_scales: PSP pooling grid sizes on the coarsest map.
        drop_rate: dropout before the classifier.
        ignore_index: target value of nodata pixels.
        label_smoothing: cross-entropy label smoothing (noisy labels).
    """

    def __init__(
        self,
        feature_info: Sequence[dict[str, object]],
        num_classes: int,
        channels: int = 128,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        drop_rate: float = 0.1,
        ignore_index: int = 255,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.decoder = UPerNetDecoder(feature_channels(feature_info), channels, pool_scales)
        self.drop = nn.Dropout2d(drop_rate)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor], out_size: tuple[int, int]) -> Tensor:
        """Stage maps (finest first) -> (B, num_classes, H, W) logits with ``(H, W) = out_size``."""
        logits = self.classifier(self.drop(self.decoder(features)))  # (B, K, H/4, W/4)
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy over the valid pixels of a (B, H, W) class-index target."""
        if target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"Segmentation target {tuple(target.shape)} does not match the logits {tuple(logits.shape)}; "
                "pass a (B, H, W) class-index mask at the input size."
            )
        target = target.long()
        if not (target != self.ignore_index).any():
            # NOTE: a batch of pure nodata would make the mean NaN; keep the graph and contribute nothing.
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing)

    def metric(self) -> SegmentationMetric:
        """A fresh streaming mIoU / pixel accuracy."""
        return SegmentationMetric(self.num_classes, self.ignore_index)

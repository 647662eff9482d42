"""Scene classification heads: single-label (softmax + cross-entropy) and multi-label (sigmoid + BCE).

Both pool the coarsest stage map, so they work at any input size. Multi-label is the BigEarthNet setting: each chip
carries any subset of the classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from rsvheat.heads.decoder import feature_channels
from rsvheat.heads.metrics import AccuracyMetric, MultiLabelMetric

__all__ = ["ClassificationHead", "MultiLabelHead"]


class ClassificationHead(nn.Module):
    """Global average pool of the last stage -> LayerNorm -> dropout -> Linear.

    Args:
        feature_info: the backbone's ``feature_info``.
        num_classes: number of classes.
        drop_rate: dropout before the linear layer.
        label_smoothing: cross-entropy label smoothing.
        top_k: accuracies the metric reports.
    """

    def __init__(
        self,
        feature_info: Sequence[dict[str, object]],
        num_classes: int,
        drop_rate: float = 0.0,
        label_smoothing: float = 0.0,
        top_k: Sequence[int] = (1, 5),
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        in_chs = feature_channels(feature_info)[-1]
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.top_k = tuple(top_k)
        self.norm = nn.LayerNorm(in_chs)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chs, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Stage maps (finest first) -> (B, num_classes) logits."""
        pooled = features[-1].mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)
        logits: Tensor = self.fc(self.drop(self.norm(pooled)))
        return logits

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy against (B,) class indices."""
        return F.cross_entropy(logits, target.long(), label_smoothing=self.label_smoothing)

    def metric(self) -> AccuracyMetric:
        """A fresh streaming top-k accuracy."""
        return AccuracyMetric(self.num_classes, self.top_k)


class MultiLabelHead(ClassificationHead):
    """Like :class:`ClassificationHead`, with one independent sigmoid per class.

    Args:
        feature_info: the backbone's ``feature_info``.
        num_classes: number of labels.
        drop_rate: dropout before the linear layer.
        pos_weight: optional per-class weight of positives in the BCE (rare labels), length ``num_classes``.
        threshold: probability above which the metric counts a label as predicted.
    """

    def __init__(
        self,
        feature_info: Sequence[dict[str, object]],
        num_classes: int,
        drop_rate: float = 0.0,
        pos_weight: Sequence[float] | None = None,
        threshold: float = 0.5,
    ) -> None:
        super().__init__(feature_info, num_classes, drop_rate=drop_rate)
        self.threshold = threshold
        if pos_weight is not None and len(pos_weight) != num_classes:
            raise ValueError(f"pos_weight has {len(pos_weight)} entries but there are {num_classes} classes.")
        self.pos_weight: Tensor | None
        if pos_weight is None:
            self.pos_weight = None
        else:
            self.register_buffer("pos_weight", Tensor(list(pos_weight)), persistent=False)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """BCE-with-logits against (B, num_classes) 0/1 (or soft) labels."""
        if target.shape != logits.shape:
            raise ValueError(
                f"Multi-label targets must be (B, {self.num_classes}) like the logits {tuple(logits.shape)}, got "
                f"{tuple(target.shape)}; encode each chip's labels as a multi-hot vector."
            )
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=self.pos_weight)

    def metric(self) -> MultiLabelMetric:  # type: ignore[override]
        """A fresh streaming micro/macro F1 and mAP."""
        return MultiLabelMetric(self.num_classes, self.threshold)

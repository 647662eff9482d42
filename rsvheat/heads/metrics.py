"""Streaming task metrics: ``update`` per batch, ``compute`` at the end, ``reset`` between epochs.

Each metric accumulates plain counts (or, for average precision, the scores) on the CPU, so results do not depend on
how the data were split into batches. Under data parallelism, sum the state across workers before ``compute``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Generic, TypeVar

import torch
from torch import Tensor

__all__ = [
    "AccuracyMetric",
    "BinaryChangeMetric",
    "Metric",
    "MultiLabelMetric",
    "SegmentationMetric",
    "average_precision",
]


PredT = TypeVar("PredT", contravariant=True)
TargetT = TypeVar("TargetT", contravariant=True)


class Metric(abc.ABC, Generic[PredT, TargetT]):
    """A streaming metric over predictions of type ``PredT`` and targets of type ``TargetT``."""

    @abc.abstractmethod
    def update(self, preds: PredT, target: TargetT) -> None:
        """Accumulate one batch."""

    @abc.abstractmethod
    def compute(self) -> dict[str, float]:
        """Metric values over every batch seen since the last ``reset``."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every batch seen so far."""


def _check_batch(preds: Tensor, target: Tensor, what: str) -> None:
    if preds.shape[0] != target.shape[0]:
        raise ValueError(
            f"{what}: predictions have batch size {preds.shape[0]} but targets have {target.shape[0]}; "
            "pass one target per prediction."
        )


def average_precision(scores: Tensor, targets: Tensor) -> float:
    """Non-interpolated average precision of one class: the sum of ``(R_n - R_{n-1}) * P_n`` over thresholds.

    Tied scores form one threshold, as in scikit-learn's ``average_precision_score``.

    Args:
        scores: (N,) confidence per sample; higher means more likely positive.
        targets: (N,) 0/1 ground truth.

    Returns:
        The AP, or NaN when there is no positive sample.
    """
    scores = scores.detach().double().flatten()
    targets = targets.detach().double().flatten()
    num_pos = float(targets.sum())
    if num_pos == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    scores, targets = scores[order], targets[order]
    tp = torch.cumsum(targets, 0)
    fp = torch.cumsum(1.0 - targets, 0)
    # The last index of each run of equal scores closes one threshold.
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / num_pos
    prev_recall = torch.cat([recall.new_zeros(1), recall[:-1]])
    return float(((recall - prev_recall) * precision).sum())


class AccuracyMetric(Metric[Tensor, Tensor]):
    """Single-label top-k accuracy and macro F1 (the mean over classes present in targets or predictions).

    Args:
        num_classes: number of classes; ``k`` larger than this is skipped.
        top_k: the k values to report, e.g. ``(1, 5)``; the keys are ``accuracy`` (k=1) and ``top{k}_accuracy``.
    """

    def __init__(self, num_classes: int, top_k: Sequence[int] = (1, 5)) -> None:
        self.num_classes = num_classes
        self.top_k = tuple(k for k in top_k if k <= num_classes)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.correct = dict.fromkeys(self.top_k, 0)
        self.total = 0
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)  # [target, prediction]

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate one batch.

        Args:
            preds: (B, K) logits or probabilities.
            target: (B,) class indices.
        """
        _check_batch(preds, target, "AccuracyMetric")
        truth = target.detach().cpu().long().view(-1)
        top1 = preds.detach().argmax(dim=1).cpu()
        pairs = truth * self.num_classes + top1
        counts = torch.bincount(pairs, minlength=self.num_classes**2)
        self.confusion += counts.view(self.num_classes, self.num_classes)  # (K*K,) -> (K, K)
        if not self.top_k:
            self.total += int(target.shape[0])
            return
        ranked = preds.detach().topk(max(self.top_k), dim=1).indices.cpu()  # (B, max_k)
        hits = ranked == target.detach().cpu().view(-1, 1)
        for k in self.top_k:
            self.correct[k] += int(hits[:, :k].any(dim=1).sum())
        self.total += int(target.shape[0])

    def compute(self) -> dict[str, float]:
        """Top-k accuracies and ``macro_f1`` in [0, 1]; NaN before any update."""
        out = {}
        for k in self.top_k:
            key = "accuracy" if k == 1 else f"top{k}_accuracy"
            out[key] = self.correct[k] / self.total if self.total else float("nan")
        conf = self.confusion.double()
        tp = conf.diag()
        denom = conf.sum(0) + conf.sum(1)  # 2TP + FP + FN per class
        defined = denom > 0
        out["macro_f1"] = float((2 * tp[defined] / denom[defined]).mean()) if defined.any() else float("nan")
        return out


class MultiLabelMetric(Metric[Tensor, Tensor]):
    """Multi-label F1 (micro and macro, at a threshold) and mean average precision (threshold-free).

    Macro values average over the classes for which the value is defined: F1 over classes with at least one true or
    predicted positive, AP over classes with at least one true positive.

    Args:
        num_classes: number of labels.
        threshold: probability above which a label counts as predicted.
    """

    def __init__(self, num_classes: int, threshold: float = 0.5) -> None:
        self.num_classes = num_classes
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate one batch.

        Args:
            preds: (B, K) logits (sigmoid is applied here).
            target: (B, K) 0/1 labels.
        """
        _check_batch(preds, target, "MultiLabelMetric")
        if preds.shape != target.shape or preds.shape[1] != self.num_classes:
            raise ValueError(
                f"MultiLabelMetric: predictions {tuple(preds.shape)} and targets {tuple(target.shape)} must both be "
                f"(B, {self.num_classes})."
            )
        self._scores.append(torch.sigmoid(preds.detach().float()).cpu())
        self._targets.append(target.detach().cpu().float())

    def compute(self) -> dict[str, float]:
        """``micro_f1``, ``macro_f1``, ``micro_precision``, ``micro_recall`` and ``mAP``."""
        if not self._scores:
            return dict.fromkeys(("micro_f1", "macro_f1", "micro_precision", "micro_recall", "mAP"), float("nan"))
        scores = torch.cat(self._scores)  # (N, K)
        targets = torch.cat(self._targets) > 0.5
        pred = scores > self.threshold
        tp = (pred & targets).sum(0).double()  # (K,)
        fp = (pred & ~targets).sum(0).double()
        fn = (~pred & targets).sum(0).double()
        tp_all, fp_all, fn_all = float(tp.sum()), float(fp.sum()), float(fn.sum())
        micro_p = tp_all / (tp_all + fp_all) if tp_all + fp_all else 0.0
        micro_r = tp_all / (tp_all + fn_all) if tp_all + fn_all else 0.0
        micro_f1 = 2 * tp_all / (2 * tp_all + fp_all + fn_all) if tp_all + fp_all + fn_all else float("nan")
        denom = 2 * tp + fp + fn
        defined = denom > 0
        macro_f1 = float((2 * tp[defined] / denom[defined]).mean()) if defined.any() else float("nan")
        aps = torch.tensor([average_precision(scores[:, k], targets[:, k]) for k in range(self.num_classes)])
        aps = aps[~aps.isnan()]
        return {
            "micro_f1": micro_f1,
            "macro_f1": macro_f1,
            "micro_precision": micro_p,
            "micro_recall": micro_r,
            "mAP": float(aps.mean()) if aps.numel() else float("nan"),
        }


class SegmentationMetric(Metric[Tensor, Tensor]):
    """Semantic-segmentation mIoU and pixel accuracy from a streaming confusion matrix.

    mIoU averages over the classes present in the targets or the predictions (union > 0).

    Args:
        num_classes: number of classes.
        ignore_index: target value of pixels to skip (nodata).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate one batch.

        Args:
            preds: (B, K, H, W) logits, or (B, H, W) class indices.
            target: (B, H, W) class indices, ``ignore_index`` for nodata.
        """
        _check_batch(preds, target, "SegmentationMetric")
        labels = preds.detach().argmax(1) if preds.ndim == 4 else preds.detach()
        if labels.shape != target.shape:
            raise ValueError(
                f"SegmentationMetric: predicted labels {tuple(labels.shape)} and targets {tuple(target.shape)} differ; "
                "upsample the logits to the target size first."
            )
        labels, target = labels.cpu().flatten().long(), target.detach().cpu().flatten().long()
        valid = (
            target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        )
        bad = valid & ((target < 0) | (target >= self.num_classes))
        if bad.any():
            raise ValueError(
                f"SegmentationMetric: target values {sorted(set(target[bad].tolist()))[:10]} are outside "
                f"[0, {self.num_classes}) and are not ignore_index={self.ignore_index}."
            )
        index = target[valid] * self.num_classes + labels[valid]
        counts = torch.bincount(index, minlength=self.num_classes**2)  # (K*K,), row-major (true, predicted)
        self.confusion += counts.view(self.num_classes, self.num_classes)  # (K*K,) -> (K, K)

    def iou_per_class(self) -> Tensor:
        """(K,) IoU per class; NaN for classes absent from both targets and predictions."""
        conf = self.confusion.double()
        inter = conf.diag()
        union = conf.sum(0) + conf.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))

    def compute(self) -> dict[str, float]:
        """``mIoU`` and ``pixel_accuracy``."""
        iou = self.iou_per_class()
        total = int(self.confusion.sum())
        present = iou[~iou.isnan()]
        return {
            "mIoU": float(present.mean()) if present.numel() else float("nan"),
            "pixel_accuracy": float(self.confusion.diag().sum()) / total if total else float("nan"),
        }


class BinaryChangeMetric(Metric[Tensor, Tensor]):
    """Precision, recall, F1 and IoU of the *change* class of a binary change mask.

    Args:
        threshold: probability above which a pixel counts as changed.
        ignore_index: target value of pixels to skip (nodata in either date).
    """

    def __init__(self, threshold: float = 0.5, ignore_index: int | None = 255) -> None:
        self.threshold = threshold
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.tp = self.fp = self.fn = self.tn = 0

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate one batch.

        Args:
            preds: (B, 1, H, W) or (B, H, W) logits (sigmoid is applied here).
            target: (B, H, W) or (B, 1, H, W) 0/1 mask, ``ignore_index`` for nodata.
        """
        _check_batch(preds, target, "BinaryChangeMetric")
        if preds.numel() != target.numel():
            raise ValueError(
                f"BinaryChangeMetric: predictions {tuple(preds.shape)} and targets {tuple(target.shape)} differ in "
                "size; upsample the logits to the target size first."
            )
        pred = (torch.sigmoid(preds.detach().float()) > self.threshold).cpu().flatten()
        target = target.detach().cpu().flatten().long()
        valid = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(pred)
        pred, true = pred[valid], target[valid] == 1
        self.tp += int((pred & true).sum())
        self.fp += int((pred & ~true).sum())
        self.fn += int((~pred & true).sum())
        self.tn += int((~pred & ~true).sum())

    def compute(self) -> dict[str, float]:
        """``precision``, ``recall``, ``f1``, ``iou`` (change class) and ``accuracy``."""
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        total = tp + fp + fn + tn
        return {
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
            "iou": tp / (tp + fp + fn) if tp + fp + fn else float("nan"),
            "accuracy": (tp + tn) / total if total else float("nan"),
        }

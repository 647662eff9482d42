"""Streaming metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rsvheat.heads.metrics import (
    AccuracyMetric,
    BinaryChangeMetric,
    MultiLabelMetric,
    SegmentationMetric,
    average_precision,
)

# 4 samples x 3 labels; thresholded at 0.5 the predictions are [[1,0,1],[1,1,0],[0,0,1],[0,1,0]].
PROBS = torch.tensor([[0.9, 0.2, 0.6], [0.8, 0.7, 0.1], [0.3, 0.4, 0.7], [0.1, 0.6, 0.2]])
LABELS = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])


def test_multilabel_metric_matches_hand_computation() -> None:
    metric = MultiLabelMetric(num_classes=3)
    metric.update(torch.logit(PROBS), LABELS)
    out = metric.compute()
    # Per class (tp, fp, fn): (2, 0, 1) -> F1 4/5; (1, 1, 0) -> 2/3; (1, 1, 0) -> 2/3. Micro: (4, 2, 1).
    assert out["micro_f1"] == pytest.approx(8 / 11)
    assert out["micro_precision"] == pytest.approx(4 / 6)
    assert out["micro_recall"] == pytest.approx(4 / 5)
    assert out["macro_f1"] == pytest.approx((4 / 5 + 2 / 3 + 2 / 3) / 3)
    # Class 0 ranks T, T, F, T -> AP (1 + 1 + 3/4) / 3; classes 1 and 2 rank their only positive first -> 1.
    assert out["mAP"] == pytest.approx((2.75 / 3 + 1 + 1) / 3)


def test_multilabel_metric_is_independent_of_batching_and_resets() -> None:
    metric = MultiLabelMetric(num_classes=3)
    metric.update(torch.logit(PROBS[:1]), LABELS[:1])
    metric.update(torch.logit(PROBS[1:]), LABELS[1:])
    whole = MultiLabelMetric(num_classes=3)
    whole.update(torch.logit(PROBS), LABELS)
    assert metric.compute() == pytest.approx(whole.compute())
    metric.reset()
    assert math.isnan(metric.compute()["mAP"])


def test_multilabel_macro_skips_undefined_classes() -> None:
    metric = MultiLabelMetric(num_classes=2)
    # Class 1 is never true and never predicted: its F1 and AP are undefined and left out of the macro means.
    metric.update(torch.tensor([[2.0, -3.0], [-2.0, -3.0]]), torch.tensor([[1, 0], [1, 0]]))
    out = metric.compute()
    assert out["macro_f1"] == pytest.approx(2 / 3)  # class 0: tp 1, fn 1
    assert out["mAP"] == pytest.approx(1.0)


def test_multilabel_metric_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        MultiLabelMetric(num_classes=3).update(torch.zeros(2, 4), torch.zeros(2, 4))


def test_average_precision_ties_form_one_threshold() -> None:
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == pytest.approx(0.5)
    assert average_precision(torch.tensor([0.9, 0.1]), torch.tensor([0, 1])) == pytest.approx(0.5)
    assert math.isnan(average_precision(torch.tensor([0.9]), torch.tensor([0])))


def test_accuracy_top_k() -> None:
    metric = AccuracyMetric(num_classes=3, top_k=(1, 2, 5))
    metric.update(torch.tensor([[3.0, 2, 1], [1, 3, 2], [1, 2, 3]]), torch.tensor([1, 2, 0]))
    # k=5 > 3 classes: skipped. Top-1 predictions 0, 1, 2 against 1, 2, 0: no class has a true positive.
    assert metric.compute() == {"accuracy": 0.0, "top2_accuracy": pytest.approx(2 / 3), "macro_f1": 0.0}


def test_accuracy_macro_f1_by_hand() -> None:
    metric = AccuracyMetric(num_classes=4, top_k=(1,))
    # targets 0 0 1 1 2 ; predictions 0 1 1 1 0. Class 3 is absent from both, so it is left out of the mean.
    # F1_0 = 2*1 / (2*1 + 1 FP + 1 FN) = 0.5; F1_1 = 2*2 / (2*2 + 1 FP) = 0.8; F1_2 = 0 (1 FN).
    preds = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 0]), 4).float()
    metric.update(preds[:2], torch.tensor([0, 0]))  # in two batches: counts, not batch means
    metric.update(preds[2:], torch.tensor([1, 1, 2]))
    assert metric.compute() == {"accuracy": pytest.approx(3 / 5), "macro_f1": pytest.approx((0.5 + 0.8 + 0.0) / 3)}


def test_segmentation_metric_ignores_nodata() -> None:
    metric = SegmentationMetric(num_classes=3, ignore_index=255)
    metric.update(torch.tensor([[[0, 1, 1, 0]]]), torch.tensor([[[0, 0, 1, 255]]]))
    # Valid pixels (true -> pred): 0->0, 0->1, 1->1. IoU_0 = 1/2, IoU_1 = 1/2, class 2 absent (left out).
    assert metric.compute() == {"mIoU": pytest.approx(0.5), "pixel_accuracy": pytest.approx(2 / 3)}
    assert torch.isnan(metric.iou_per_class()[2])


def test_segmentation_metric_accepts_logits_and_rejects_bad_labels() -> None:
    metric = SegmentationMetric(num_classes=2)
    logits = torch.tensor([[[[2.0, -1.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2) -> labels [[0, 1]]
    metric.update(logits, torch.tensor([[[0, 1]]]))
    assert metric.compute()["mIoU"] == 1.0
    with pytest.raises(ValueError, match="outside"):
        metric.update(logits, torch.tensor([[[0, 7]]]))


def test_binary_change_metric() -> None:
    metric = BinaryChangeMetric(ignore_index=255)
    logits = torch.tensor([[[[5.0, 5.0, -5.0, -5.0, 5.0]]]])  # predicted change: 1 1 0 0 1
    target = torch.tensor([[[1, 0, 1, 0, 255]]])  # the last pixel is nodata
    metric.update(logits, target)
    out = metric.compute()
    assert (metric.tp, metric.fp, metric.fn, metric.tn) == (1, 1, 1, 1)
    assert out == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "iou": 1 / 3, "accuracy": 0.5})

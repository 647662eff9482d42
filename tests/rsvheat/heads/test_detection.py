"""Detection box ops, NMS, decoding and mAP on hand-built boxes with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from rsvheat.heads.detection import (
    DetectionHead,
    DetectionMAP,
    DetectionOutput,
    batched_nms,
    box_iou,
    generalized_box_iou,
    nms,
)

# A hand-written pyramid description (strides 4..32); the head only reads channels and reductions from it.
FEATURE_INFO = [{"num_chs": 8 * 2**i, "reduction": 4 * 2**i, "module": f"stages.{i}"} for i in range(4)]


def test_box_iou_and_giou() -> None:
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 1, 1]])
    b = torch.tensor([[5.0, 0, 15, 10], [2, 0, 3, 1]])
    assert box_iou(a, b) == pytest.approx(torch.tensor([[50 / 150, 1 / 100], [0.0, 0.0]]))
    # Disjoint unit boxes 1 px apart: IoU 0, hull 3, union 2 -> GIoU = -1/3.
    assert generalized_box_iou(a, b)[1].item() == pytest.approx(-1 / 3)
    assert generalized_box_iou(a, a) == pytest.approx(torch.ones(2))


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.3])
    # IoU(box0, box1) = 81/119 = 0.68; box3 overlaps box1 by 72/118 = 0.61.
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 2]
    assert nms(boxes[:0], scores[:0], 0.5).numel() == 0


def test_batched_nms_is_per_class() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 1, 0])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1]


def _empty_output(batch: int, num_classes: int, size: int) -> DetectionOutput:
    strides = (8, 16, 32)
    return DetectionOutput(
        cls_logits=[torch.full((batch, num_classes, size // s, size // s), -20.0) for s in strides],
        box_reg=[torch.zeros(batch, 4, size // s, size // s) for s in strides],
        centerness=[torch.full((batch, 1, size // s, size // s), 4.0) for s in strides],
        strides=strides,
        image_size=(size, size),
    )


def test_decode_boxes_scores_nms_and_clipping() -> None:
    head = DetectionHead(FEATURE_INFO, num_classes=2, channels=8, score_threshold=0.5)
    out = _empty_output(1, 2, 64)
    # Stride-8 cell (row 2, col 3) is centred at (x, y) = (28, 20); ltrb (10, 6, 14, 18) -> box (18, 14, 42, 38).
    out.cls_logits[0][0, 1, 2, 3] = 4.0
    out.box_reg[0][0, :, 2, 3] = torch.tensor([10.0, 6, 14, 18])
    # Cell (2, 4) at (36, 20) predicts the same box: once as a weaker class-1 duplicate (suppressed) ...
    out.cls_logits[0][0, 1, 2, 4] = 3.0
    out.box_reg[0][0, :, 2, 4] = torch.tensor([18.0, 6, 6, 18])
    # ... and once as class 0, which class-wise NMS keeps.
    out.cls_logits[0][0, 0, 2, 4] = 2.0
    # Stride-32 cell (1, 1) at (48, 48) reaches past the 64 px image and is clipped.
    out.cls_logits[2][0, 0, 1, 1] = 3.0
    out.box_reg[2][0, :, 1, 1] = torch.tensor([8.0, 8, 40, 40])

    (det,) = head.decode(out)
    ctr = torch.sigmoid(torch.tensor(4.0))
    expected_scores = [torch.sqrt(torch.sigmoid(torch.tensor(v)) * ctr).item() for v in (4.0, 3.0, 2.0)]
    assert det["labels"].tolist() == [1, 0, 0]
    assert det["scores"].tolist() == pytest.approx(expected_scores)
    assert det["boxes"].tolist() == [[18, 14, 42, 38], [40, 40, 64, 64], [18, 14, 42, 38]]


def test_decode_respects_score_threshold_and_max_detections() -> None:
    head = DetectionHead(FEATURE_INFO, num_classes=1, channels=8, score_threshold=0.5, max_detections=2)
    out = _empty_output(2, 1, 64)
    out.cls_logits[0][0, 0] = 4.0  # every stride-8 cell of image 0, boxes far apart (zero size) -> no suppression
    (first, second) = head.decode(out)
    assert len(first["boxes"]) == 2
    assert len(second["boxes"]) == 0


def test_assignment_puts_boxes_on_the_level_of_their_size() -> None:
    head = DetectionHead(FEATURE_INFO, num_classes=3, channels=8, center_radius=1.5)
    out = _empty_output(1, 3, 256)
    points, strides, ranges = head._points(out)
    # Near their centres, the largest side distance is ~15 px for the small box and 90-150 px for the large one.
    boxes = torch.tensor([[10.0, 10, 40, 30], [20, 20, 220, 200]])
    labels = torch.tensor([2, 0])
    cls_target, box_target = head._assign(points, strides, ranges, boxes, labels)
    small, large = cls_target == 2, cls_target == 0
    assert small.any() and large.any()
    assert set(strides[small].tolist()) == {8.0}  # reach <= 64 -> stride 8
    assert set(strides[large].tolist()) == {16.0, 32.0}  # 64 < reach <= 128 -> stride 16; beyond -> stride 32
    # Targets are the distances from each positive location to its box's sides, all positive.
    pos = cls_target < 3
    x, y = points[pos, 0], points[pos, 1]
    ltrb = box_target[pos]
    rebuilt = torch.stack([x - ltrb[:, 0], y - ltrb[:, 1], x + ltrb[:, 2], y + ltrb[:, 3]], dim=1)
    assert (box_target[pos] > 0).all()
    assert rebuilt.tolist() == boxes[torch.where(small[pos], 0, 1)].tolist()


def test_detection_map_on_known_boxes() -> None:
    metric = DetectionMAP(num_classes=3)
    targets = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([[50.0, 50, 70, 70]]), "labels": torch.tensor([0])},
    ]
    detections = [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10], [80, 80, 90, 90], [21, 21, 40, 40], [1, 0, 10, 10], [0, 0, 5, 5]]),
            "scores": torch.tensor([0.9, 0.8, 0.7, 0.65, 0.5]),
            "labels": torch.tensor([0, 0, 1, 0, 2]),  # the class-2 box has no ground truth: class 2 is skipped
        },
        {"boxes": torch.tensor([[50.0, 50, 70, 70]]), "scores": torch.tensor([0.6]), "labels": torch.tensor([0])},
    ]
    metric.update(detections[:1], targets[:1])
    metric.update(detections[1:], targets[1:])
    # Class 0 in score order: TP, FP (no overlap), FP (duplicate of a matched box), TP; 2 ground-truth boxes.
    # Precision 1, 1/2, 1/3, 1/2 at recall 1/2, 1/2, 1/2, 1 -> envelope area 0.5 * 1 + 0.5 * 0.5 = 0.75.
    aps = metric.average_precision_per_class()
    assert aps[:2].tolist() == pytest.approx([0.75, 1.0])
    assert math.isnan(aps[2].item())
    assert metric.compute() == {"mAP50": pytest.approx(0.875)}
    metric.reset()
    assert math.isnan(metric.compute()["mAP50"])


def test_detection_map_iou_threshold() -> None:
    target = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}]
    shifted = [{"boxes": torch.tensor([[3.0, 0, 13, 10]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    loose, strict = DetectionMAP(1, iou_threshold=0.5), DetectionMAP(1, iou_threshold=0.75)
    for metric in (loose, strict):
        metric.update(shifted, target)  # IoU 70 / 130 = 0.54
    assert loose.compute() == {"mAP50": 1.0}
    assert strict.compute() == {"mAP75": 0.0}


def test_detection_head_rejects_bad_levels_and_labels() -> None:
    with pytest.raises(ValueError, match="levels"):
        DetectionHead(FEATURE_INFO, num_classes=2, levels=(1, 4))
    head = DetectionHead(FEATURE_INFO, num_classes=2, channels=8)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        head.loss(_empty_output(1, 2, 64), [{"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([5])}])

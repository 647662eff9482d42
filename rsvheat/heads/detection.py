"""Anchor-free object detection (FCOS) over the backbone's pyramid, with box ops, NMS and a VOC-style mAP.

Boxes are ``(x1, y1, x2, y2)`` in input pixels. Each pyramid location predicts per-class scores, its distances to the
four box sides and a centerness; training assigns every location inside the central region of a box (and in the
level's size range) to the smallest such box.

Reference: Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", arXiv:1904.01355 (center sampling,
GIoU and normalised regression from the FCOS "improvements" list); Lin et al., "Focal Loss for Dense Object
Detection", arXiv:1708.02002; Rezatofighi et al., "Generalized Intersection over Union", arXiv:1902.09630.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsvheat.heads.decoder import ConvNormAct, FeaturePyramid, feature_channels
from rsvheat.heads.metrics import Metric

__all__ = [
    "DetectionHead",
    "DetectionMAP",
    "DetectionOutput",
    "batched_nms",
    "box_iou",
    "generalized_box_iou",
    "nms",
    "sigmoid_focal_loss",
]


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """(N, 4) x (M, 4) ``x1y1x2y2`` boxes -> (N, M) IoU."""
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp_min(0).prod(dim=2)  # (N, M)
    union = _box_area(boxes1)[:, None] + _box_area(boxes2)[None, :] - inter
    return inter / union.clamp_min(1e-9)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Element-wise GIoU of paired (N, 4) ``x1y1x2y2`` boxes -> (N,), in [-1, 1]."""
    top_left = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (bottom_right - top_left).clamp_min(0).prod(dim=1)
    union = _box_area(boxes1) + _box_area(boxes2) - inter
    iou = inter / union.clamp_min(1e-9)
    hull = (torch.maximum(boxes1[:, 2:], boxes2[:, 2:]) - torch.minimum(boxes1[:, :2], boxes2[:, :2])).prod(dim=1)
    return iou - (hull - union) / hull.clamp_min(1e-9)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: (N, 4) ``x1y1x2y2`` boxes.
        scores: (N,) scores.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box exceeds this.

    Returns:
        Indices of the kept boxes, highest score first.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order], boxes[order]).cpu()  # (N, N), rows and columns in score order
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    keep = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each class: boxes of different labels never suppress each other. Returns kept indices."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    # Shift each class into its own region of the plane so one NMS pass handles all classes.
    offset = labels.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset, scores, iou_threshold)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed focal loss of independent sigmoids (Lin et al. 2017) for same-shaped logits and 0/1 targets."""
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * ce).sum()


@dataclass
class DetectionOutput:
    """Raw per-level predictions of :class:`DetectionHead`.

    Attributes:
        cls_logits: per level, (B, K, h, w) class logits.
        box_reg: per level, (B, 4, h, w) distances (left, top, right, bottom) in input pixels, >= 0.
        centerness: per level, (B, 1, h, w) centerness logits.
        strides: stride of each level in input pixels.
        image_size: (H, W) of the input.
    """

    cls_logits: list[Tensor]
    box_reg: list[Tensor]
    centerness: list[Tensor]
    strides: tuple[int, ...]
    image_size: tuple[int, int]


def _locations(h: int, w: int, stride: int, device: torch.device) -> Tensor:
    """(h*w, 2) ``(x, y)`` input-pixel centres of a level's cells, row-major."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)


def _flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """Per level (B, C, h, w) -> (B, sum(h*w), C)."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


class DetectionHead(nn.Module):
    """FCOS: an FPN over chosen stages, shared class and box towers, per-level learnable regression scales.

    Args:
        feature_info: the backbone's ``feature_info``.
        num_classes: number of object classes (no background class).
        channels: width of the pyramid and towers.
        num_convs: 3x3 conv layers per tower.
        levels: indices into ``feature_info`` of the stages to detect on (default strides 8/16/32).
        center_radius: center-sampling radius in strides.
        focal_alpha: focal-loss alpha.
        focal_gamma: focal-loss gamma.
        score_threshold: minimum ``sqrt(class prob * centerness)`` kept when decoding.
        nms_threshold: IoU above which NMS drops the lower-scoring box of a class.
        pre_nms_top_k: candidates kept per level before NMS.
        max_detections: detections kept per image after NMS.
    """

    def __init__(
        self,
        feature_info: Sequence[dict[str, object]],
        num_classes: int,
        channels: int = 128,
        num_convs: int = 2,
        levels: Sequence[int] = (1, 2, 3),
        center_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        pre_nms_top_k: int = 1000,
        max_detections: int = 100,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        all_channels = feature_channels(feature_info)
        self.levels = tuple(levels)
        if not self.levels or any(not 0 <= i < len(all_channels) for i in self.levels):
            raise ValueError(f"levels {self.levels} must index the backbone's {len(all_channels)} stages.")
        self.strides = tuple(int(feature_info[i]["reduction"]) for i in self.levels)  # type: ignore[call-overload]
        self.num_classes = num_classes
        self.center_radius = center_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.pre_nms_top_k = pre_nms_top_k
        self.max_detections = max_detections
        # FCOS size ranges: a level regresses boxes whose largest side distance is within (8 s_prev, 8 s].
        bounds = [0.0, *(8.0 * s for s in self.strides[:-1]), math.inf]
        self.size_ranges = tuple(itertools.pairwise(bounds))

        self.pyramid = FeaturePyramid([all_channels[i] for i in self.levels], channels, pool_scales=())
        self.cls_tower = nn.Sequential(*(ConvNormAct(channels, channels) for _ in range(num_convs)))
        self.box_tower = nn.Sequential(*(ConvNormAct(channels, channels) for _ in range(num_convs)))
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.levels)))
        for conv in (self.cls_logits, self.box_pred, self.centerness):
            assert conv.bias is not None
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        prior = 0.01  # focal-loss prior: every location starts as background with probability 0.99
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior) / prior))  # type: ignore[arg-type]

    def forward(self, features: Sequence[Tensor], out_size: tuple[int, int]) -> DetectionOutput:
        """Stage maps (finest first) -> per-level raw predictions for an input of size ``out_size``."""
        cls_logits, box_reg, centerness = [], [], []
        for i, level in enumerate(self.pyramid([features[j] for j in self.levels])):
            cls_feat, box_feat = self.cls_tower(level), self.box_tower(level)
            cls_logits.append(self.cls_logits(cls_feat))
            box_reg.append(F.softplus(self.scales[i] * self.box_pred(box_feat)) * self.strides[i])
            centerness.append(self.centerness(box_feat))
        return DetectionOutput(cls_logits, box_reg, centerness, self.strides, (int(out_size[0]), int(out_size[1])))

    def _points(self, outputs: DetectionOutput) -> tuple[Tensor, Tensor, Tensor]:
        """Locations (P, 2), strides (P,) and size ranges (P, 2) of every cell of every level."""
        device = outputs.cls_logits[0].device
        points, strides, ranges = [], [], []
        for logits, stride, size_range in zip(outputs.cls_logits, outputs.strides, self.size_ranges, strict=True):
            h, w = logits.shape[-2:]
            points.append(_locations(h, w, stride, device))
            strides.append(torch.full((h * w,), float(stride), device=device))
            ranges.append(torch.tensor(size_range, device=device).expand(h * w, 2))
        return torch.cat(points), torch.cat(strides), torch.cat(ranges)

    def _assign(
        self, points: Tensor, strides: Tensor, ranges: Tensor, boxes: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Class targets (P,) (``num_classes`` = background) and ltrb targets (P, 4) for one image."""
        num_points = points.shape[0]
        if boxes.numel() == 0:
            return labels.new_full((num_points,), self.num_classes), points.new_zeros(num_points, 4)
        x, y = points[:, 0:1], points[:, 1:2]  # (P, 1)
        ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=2)  # (P, M, 4)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # (M, 2)
        radius = strides[:, None] * self.center_radius  # (P, 1)
        # Central region of each box, clipped to the box.
        cx1 = torch.maximum(centre[:, 0] - radius, boxes[:, 0])
        cy1 = torch.maximum(centre[:, 1] - radius, boxes[:, 1])
        cx2 = torch.minimum(centre[:, 0] + radius, boxes[:, 2])
        cy2 = torch.minimum(centre[:, 1] + radius, boxes[:, 3])
        in_centre = (x > cx1) & (x < cx2) & (y > cy1) & (y < cy2)  # (P, M)
        reach = ltrb.max(dim=2).values
        in_range = (reach > ranges[:, 0:1]) & (reach <= ranges[:, 1:2])
        area = _box_area(boxes)[None, :].expand(num_points, -1)
        area = torch.where(in_centre & in_range, area, torch.full_like(area, math.inf))
        min_area, match = area.min(dim=1)  # (P,)
        cls_target = torch.where(min_area < math.inf, labels[match], labels.new_full((num_points,), self.num_classes))
        return cls_target, ltrb[torch.arange(num_points, device=points.device), match]

    def loss_terms(self, outputs: DetectionOutput, targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The focal, GIoU and centerness losses (each normalised as in FCOS) and their sum ``loss``.

        Args:
            outputs: the head's output.
            targets: one dict per image with ``boxes`` (N, 4) ``x1y1x2y2`` in input pixels and ``labels`` (N,).
        """
        batch = outputs.cls_logits[0].shape[0]
        if len(targets) != batch:
            raise ValueError(f"Got {len(targets)} detection targets for a batch of {batch}; pass one per image.")
        points, strides, ranges = self._points(outputs)
        cls_targets, box_targets = [], []
        for target in targets:
            boxes = target["boxes"].to(points).reshape(-1, 4)
            labels = target["labels"].to(points.device).long().reshape(-1)
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"Detection labels {labels.tolist()} must lie in [0, {self.num_classes}).")
            cls_t, box_t = self._assign(points, strides, ranges, boxes, labels)
            cls_targets.append(cls_t)
            box_targets.append(box_t)
        cls_target = torch.stack(cls_targets)  # (B, P)
        box_target = torch.stack(box_targets)  # (B, P, 4)
        cls_logits = _flatten_levels(outputs.cls_logits)  # (B, P, K)
        box_pred = _flatten_levels(outputs.box_reg)  # (B, P, 4)
        ctr_logits = _flatten_levels(outputs.centerness).squeeze(2)  # (B, P)

        positive = cls_target < self.num_classes
        num_pos = positive.sum().clamp_min(1).to(cls_logits.dtype)
        one_hot = F.one_hot(cls_target, self.num_classes + 1)[..., : self.num_classes].to(cls_logits.dtype)
        loss_cls = sigmoid_focal_loss(cls_logits, one_hot, self.focal_alpha, self.focal_gamma) / num_pos

        pos_pred, pos_target = box_pred[positive], box_target[positive]  # (N+, 4)
        left_right, top_bottom = pos_target[:, [0, 2]], pos_target[:, [1, 3]]
        ctr_target = torch.sqrt(
            (left_right.min(1).values / left_right.max(1).values.clamp_min(1e-6))
            * (top_bottom.min(1).values / top_bottom.max(1).values.clamp_min(1e-6))
        )
        # Both boxes relative to the location: (-l, -t, r, b).
        sign = pos_pred.new_tensor([-1.0, -1.0, 1.0, 1.0])
        giou = generalized_box_iou(pos_pred * sign, pos_target * sign)
        loss_box = ((1 - giou) * ctr_target).sum() / ctr_target.sum().clamp_min(1e-6)
        loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits[positive], ctr_target, reduction="sum") / num_pos
        return {"loss": loss_cls + loss_box + loss_ctr, "cls": loss_cls, "box": loss_box, "centerness": loss_ctr}

    def loss(self, outputs: DetectionOutput, targets: Sequence[dict[str, Tensor]]) -> Tensor:
        """Total FCOS loss; see :meth:`loss_terms`."""
        return self.loss_terms(outputs, targets)["loss"]

    @torch.no_grad()
    def decode(self, outputs: DetectionOutput) -> list[dict[str, Tensor]]:
        """Raw predictions -> per image ``boxes`` (N, 4) in input pixels, ``scores`` (N,) and ``labels`` (N,).

        Scores are ``sqrt(class prob * centerness)``; candidates below ``score_threshold`` are dropped, the top
        ``pre_nms_top_k`` per level kept, boxes clipped to the image, then class-wise NMS and ``max_detections``.
        """
        height, width = outputs.image_size
        results = []
        for b in range(outputs.cls_logits[0].shape[0]):
            all_boxes, all_scores, all_labels = [], [], []
            for cls, reg, ctr, stride in zip(
                outputs.cls_logits, outputs.box_reg, outputs.centerness, outputs.strides, strict=True
            ):
                h, w = cls.shape[-2:]
                points = _locations(h, w, stride, cls.device)  # (h*w, 2)
                scores = torch.sqrt(torch.sigmoid(cls[b]) * torch.sigmoid(ctr[b]))  # (K, h, w)
                scores = scores.flatten(1).t()  # (K, h, w) -> (h*w, K)
                cell, label = torch.nonzero(scores > self.score_threshold, as_tuple=True)
                cand = scores[cell, label]
                if cand.numel() > self.pre_nms_top_k:
                    top = cand.topk(self.pre_nms_top_k).indices
                    cell, label, cand = cell[top], label[top], cand[top]
                dist = reg[b].flatten(1).t()[cell]  # (4, h, w) -> (h*w, 4) -> (N, 4)
                xy = points[cell]
                boxes = torch.cat([xy - dist[:, :2], xy + dist[:, 2:]], dim=1)
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
                all_boxes.append(boxes)
                all_scores.append(cand)
                all_labels.append(label)
            boxes, scores, labels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
            keep = batched_nms(boxes, scores, labels, self.nms_threshold)[: self.max_detections]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results

    def metric(self) -> DetectionMAP:
        """A fresh streaming mAP@0.5."""
        return DetectionMAP(self.num_classes)


class DetectionMAP(Metric[Sequence[dict[str, Tensor]], Sequence[dict[str, Tensor]]]):
    """Mean average precision at one IoU threshold (PASCAL VOC 2010+ all-point interpolation).

    A detection is a true positive when its IoU with a not-yet-matched ground-truth box of the same class and image
    reaches the threshold; detections are visited in descending score. Classes without ground truth are skipped.

    Args:
        num_classes: number of object classes.
        iou_threshold: matching threshold; the result key is ``mAP{round(100 * iou_threshold)}``.
    """

    def __init__(self, num_classes: int, iou_threshold: float = 0.5) -> None:
        self.num_classes = num_classes
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._detections: list[dict[str, Tensor]] = []
        self._targets: list[dict[str, Tensor]] = []

    def update(self, preds: Sequence[dict[str, Tensor]], target: Sequence[dict[str, Tensor]]) -> None:
        """Accumulate one batch of decoded detections (``boxes``, ``scores``, ``labels``) and targets."""
        if len(preds) != len(target):
            raise ValueError(f"DetectionMAP: {len(preds)} predictions but {len(target)} targets; pass one per image.")
        for det, tgt in zip(preds, target, strict=True):
            self._detections.append({k: det[k].detach().cpu().reshape(-1, 4 if k == "boxes" else 1) for k in det})
            self._targets.append({k: tgt[k].detach().cpu().reshape(-1, 4 if k == "boxes" else 1) for k in tgt})

    def average_precision_per_class(self) -> Tensor:
        """(K,) AP per class; NaN for classes without ground-truth boxes."""
        aps = torch.full((self.num_classes,), float("nan"), dtype=torch.float64)
        for c in range(self.num_classes):
            gt_boxes = [t["boxes"][t["labels"].flatten() == c] for t in self._targets]
            num_gt = sum(len(g) for g in gt_boxes)
            if num_gt == 0:
                continue
            scores, image_ids, boxes = [], [], []
            for i, det in enumerate(self._detections):
                mask = det["labels"].flatten() == c
                scores.append(det["scores"].flatten()[mask])
                boxes.append(det["boxes"][mask])
                image_ids.append(torch.full((int(mask.sum()),), i))
            score, image_id, box = torch.cat(scores), torch.cat(image_ids), torch.cat(boxes)
            order = torch.argsort(score, descending=True, stable=True)
            matched = [torch.zeros(len(g), dtype=torch.bool) for g in gt_boxes]
            hits = torch.zeros(len(order), dtype=torch.float64)
            for rank, j in enumerate(order.tolist()):
                gts = gt_boxes[int(image_id[j])]
                if len(gts) == 0:
                    continue
                iou = box_iou(box[j : j + 1].double(), gts.double())[0]
                iou[matched[int(image_id[j])]] = -1.0  # a matched box cannot match twice
                best = int(iou.argmax())
                if iou[best] >= self.iou_threshold:
                    hits[rank] = 1.0
                    matched[int(image_id[j])][best] = True
            tp = torch.cumsum(hits, 0)
            precision = tp / torch.arange(1, len(hits) + 1, dtype=torch.float64)
            recall = tp / num_gt
            # Precision envelope (monotone non-increasing), integrated where recall steps.
            mrec = torch.cat([torch.zeros(1, dtype=torch.float64), recall, torch.ones(1, dtype=torch.float64)])
            mpre = torch.cat([torch.zeros(1, dtype=torch.float64), precision, torch.zeros(1, dtype=torch.float64)])
            mpre = torch.flip(torch.cummax(torch.flip(mpre, [0]), 0).values, [0])
            step = mrec[1:] != mrec[:-1]
            aps[c] = ((mrec[1:] - mrec[:-1])[step] * mpre[1:][step]).sum()
        return aps

    def compute(self) -> dict[str, float]:
        """``mAP50`` (or the key for the configured threshold): mean AP over classes with ground truth."""
        aps = self.average_precision_per_class()
        aps = aps[~aps.isnan()]
        return {f"mAP{round(100 * self.iou_threshold)}": float(aps.mean()) if aps.numel() else float("nan")}

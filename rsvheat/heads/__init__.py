"""Task heads built from a backbone's ``feature_info``: each has ``forward``, ``loss`` and a streaming ``metric``."""

from rsvheat.heads.change import ChangeHead, dice_loss
from rsvheat.heads.classification import ClassificationHead, MultiLabelHead
from rsvheat.heads.decoder import ConvNormAct, FeaturePyramid, UPerNetDecoder, feature_channels
from rsvheat.heads.detection import (
    DetectionHead,
    DetectionMAP,
    DetectionOutput,
    batched_nms,
    box_iou,
    generalized_box_iou,
    nms,
    sigmoid_focal_loss,
)
from rsvheat.heads.metrics import (
    AccuracyMetric,
    BinaryChangeMetric,
    Metric,
    MultiLabelMetric,
    SegmentationMetric,
    average_precision,
)
from rsvheat.heads.segmentation import SegmentationHead

__all__ = [
    "AccuracyMetric",
    "BinaryChangeMetric",
    "ChangeHead",
    "ClassificationHead",
    "ConvNormAct",
    "DetectionHead",
    "DetectionMAP",
    "DetectionOutput",
    "FeaturePyramid",
    "Metric",
    "MultiLabelHead",
    "MultiLabelMetric",
    "SegmentationHead",
    "SegmentationMetric",
    "UPerNetDecoder",
    "average_precision",
    "batched_nms",
    "box_iou",
    "dice_loss",
    "feature_channels",
    "generalized_box_iou",
    "nms",
    "sigmoid_focal_loss",
]

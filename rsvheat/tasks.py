"""Task models: a registry backbone (``encoder``) paired with a task head (``head``).

``build_task_model(task, backbone, num_classes, backbone_kwargs, **head_kwargs)`` is the one factory; a model records
its :attr:`BaseTaskModel.task_config` so :mod:`rsvheat.checkpoint` can rebuild it with no extra flags. Parameter
names start with ``encoder.`` or ``head.``, the groups that fine-tuning and layer-divergence tools select by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from rsvheat._registry import create_model
from rsvheat.heads.change import ChangeHead
from rsvheat.heads.classification import ClassificationHead, MultiLabelHead
from rsvheat.heads.detection import DetectionHead, DetectionOutput
from rsvheat.heads.metrics import Metric
from rsvheat.heads.segmentation import SegmentationHead

__all__ = ["TASKS", "BaseTaskModel", "ChangeTaskModel", "TaskModel", "TaskName", "build_head", "build_task_model"]

TaskName = Literal["classification", "multilabel", "segmentation", "change", "detection"]
TASKS: tuple[str, ...] = get_args(TaskName)


def build_head(
    task: TaskName, feature_info: Sequence[dict[str, Any]], num_classes: int | None, **head_kwargs: Any
) -> nn.Module:
    """The head for ``task``, sized from ``feature_info``.

    Args:
        task: one of :data:`TASKS`.
        feature_info: the backbone's ``feature_info``.
        num_classes: number of classes; must be None (or 1) for ``change``, which is binary.
        **head_kwargs: head options, e.g. ``channels=64`` or ``ignore_index=0``.

    Raises:
        ValueError: an unknown task, or a class count the task cannot use.
    """
    if task == "change":
        if num_classes not in (None, 1):
            raise ValueError(f"Change detection is binary (one change logit); got num_classes={num_classes}.")
    elif num_classes is None or num_classes < 1:
        raise ValueError(f"Task {task!r} needs num_classes >= 1, got {num_classes}.")
    match task:
        case "classification":
            return ClassificationHead(feature_info, num_classes, **head_kwargs)  # type: ignore[arg-type]
        case "multilabel":
            return MultiLabelHead(feature_info, num_classes, **head_kwargs)  # type: ignore[arg-type]
        case "segmentation":
            return SegmentationHead(feature_info, num_classes, **head_kwargs)  # type: ignore[arg-type]
        case "change":
            return ChangeHead(feature_info, **head_kwargs)
        case "detection":
            return DetectionHead(feature_info, num_classes, **head_kwargs)  # type: ignore[arg-type]
        case _:
            raise ValueError(f"Unknown task {task!r}; valid tasks: {', '.join(TASKS)}.")


class BaseTaskModel(nn.Module):
    """Backbone + head, with the head's loss and metric. Use :class:`TaskModel` or :class:`ChangeTaskModel`.

    Args:
        encoder: a registry backbone (built by ``create_model``, so it records ``model_name`` / ``model_kwargs``).
        task: one of :data:`TASKS`.
        num_classes: class count the head was built with.
        head_kwargs: the head options, plain data only (they are stored in checkpoints).
    """

    supported_tasks: ClassVar[tuple[str, ...]] = TASKS

    def __init__(
        self, encoder: nn.Module, task: TaskName, num_classes: int | None, head_kwargs: Mapping[str, Any]
    ) -> None:
        super().__init__()
        if task not in self.supported_tasks:
            raise ValueError(
                f"{type(self).__name__} handles tasks {', '.join(self.supported_tasks)}, not {task!r}; "
                "use build_task_model, which picks the model class for the task."
            )
        if getattr(encoder, "num_classes", 0):
            encoder.reset_classifier(0)  # type: ignore[operator]  # the head replaces it; no unused parameters
        self.encoder = encoder
        self.task: TaskName = task
        self.num_classes = num_classes
        self.head_kwargs = dict(head_kwargs)
        self.head = build_head(task, encoder.feature_info, num_classes, **self.head_kwargs)  # type: ignore[arg-type]
        self.train()  # a loaded encoder arrives in eval mode; a new model starts in training mode as a whole

    @property
    def task_config(self) -> dict[str, Any]:
        """``task``, ``num_classes`` and ``head_kwargs``: with the encoder's registry name and kwargs, a full recipe."""
        return {"task": self.task, "num_classes": self.num_classes, "head_kwargs": dict(self.head_kwargs)}

    @property
    def modalities(self) -> tuple[str, ...]:
        """The encoder's modalities."""
        return tuple(self.encoder.modalities)  # type: ignore[arg-type]

    @property
    def in_chans(self) -> dict[str, int]:
        """The encoder's band count per modality."""
        return dict(self.encoder.in_chans)  # type: ignore[arg-type]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in the encoder."""
        self.encoder.set_grad_checkpointing(enable)  # type: ignore[operator]

    def loss(self, outputs: Any, targets: Any) -> Tensor:
        """The head's loss; targets as documented by the head (class ids, multi-hot, masks or box dicts)."""
        return self.head.loss(outputs, targets)  # type: ignore[operator,no-any-return]

    def metric(self) -> Metric[Any, Any]:
        """A fresh streaming metric; feed it ``metric.update(model.postprocess(outputs), targets)``."""
        return self.head.metric()  # type: ignore[operator,no-any-return]

    def postprocess(self, outputs: Any) -> Any:
        """Outputs in the form the metric consumes: decoded boxes for detection, the logits otherwise."""
        if isinstance(outputs, DetectionOutput):
            return self.head.decode(outputs)  # type: ignore[operator]
        return outputs


class TaskModel(BaseTaskModel):
    """Single-image task: classification, multilabel, segmentation or detection."""

    supported_tasks: ClassVar[tuple[str, ...]] = ("classification", "multilabel", "segmentation", "detection")

    def forward(self, x: Tensor, modality: str | None = None) -> Any:
        """(B, C, H, W) image of ``modality`` -> logits (B, K), logits (B, K, H, W) or a :class:`DetectionOutput`."""
        features = self.encoder.forward_features(x, modality=modality)  # type: ignore[operator]
        out_size = (x.shape[-2], x.shape[-1])
        match self.task:
            case "classification" | "multilabel":
                return self.head(features)
            case _:
                return self.head(features, out_size)


class ChangeTaskModel(BaseTaskModel):
    """Bi-temporal change detection with a siamese encoder: both dates go through one shared-weight encoder call."""

    supported_tasks: ClassVar[tuple[str, ...]] = ("change",)

    def forward(self, x_before: Tensor, x_after: Tensor, modality: str | None = None) -> Tensor:
        """Two (B, C, H, W) images of ``modality`` -> (B, 1, H, W) change logits."""
        if x_before.shape != x_after.shape:
            raise ValueError(
                f"Change inputs must have the same shape; got before {tuple(x_before.shape)} and after "
                f"{tuple(x_after.shape)}. Resample both dates to one grid first."
            )
        batch = x_before.shape[0]
        both = torch.cat([x_before, x_after])  # 2 x (B, C, H, W) -> (2B, C, H, W): one shared-weight encoder call
        features = self.encoder.forward_features(both, modality=modality)  # type: ignore[operator]
        before = [f[:batch] for f in features]  # each (2B, C, h, w) -> (B, C, h, w)
        after = [f[batch:] for f in features]
        return self.head(before, after, (x_before.shape[-2], x_before.shape[-1]))  # type: ignore[no-any-return]


def build_task_model(
    task: TaskName,
    backbone: str | nn.Module,
    num_classes: int | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
    **head_kwargs: Any,
) -> BaseTaskModel:
    """Build a registry backbone and a task head on top of it.

    Args:
        task: one of :data:`TASKS`.
        backbone: registry name, e.g. ``"rsvheat_base"``, or a backbone already built by ``create_model`` (e.g. the
            pretrained encoder returned by ``load_checkpoint``), which is used as is.
        num_classes: number of classes (None for ``change``).
        backbone_kwargs: ``create_model`` overrides, e.g. ``{"in_chans": {"optical": 13, "sar": 2}}``; only with a
            registry name.
        **head_kwargs: head options, e.g. ``channels=64``; plain data only, since checkpoints store them.

    Returns:
        A :class:`ChangeTaskModel` for ``change``, a :class:`TaskModel` otherwise.

    Raises:
        ValueError: an unknown task or backbone, or an unusable ``num_classes``.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; valid tasks: {', '.join(TASKS)}.")
    if isinstance(backbone, nn.Module):
        if backbone_kwargs:
            raise ValueError(
                f"backbone_kwargs={dict(backbone_kwargs)} cannot apply to an already built "
                f"{type(backbone).__name__}; pass its registry name instead, or build it with these kwargs first."
            )
        encoder = backbone
    else:
        encoder = create_model(backbone, **dict(backbone_kwargs or {}))
    cls = ChangeTaskModel if task == "change" else TaskModel
    return cls(encoder, task, num_classes, head_kwargs)

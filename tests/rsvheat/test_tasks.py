"""TaskModel / ChangeTaskModel / build_task_model on the registry's tiny backbones."""

from __future__ import annotations

import pytest
import torch

import rsvheat
from rsvheat.errors import BandCountMismatchError
from rsvheat.heads import DetectionOutput
from rsvheat.tasks import TASKS, ChangeTaskModel, TaskModel, build_task_model
from tests.rsvheat.heads._backbones import task_test_backbone
from tests.rsvheat.heads._backbones import single_torch_thread as single_torch_thread  # autouse

BACKBONE = task_test_backbone()
HEAD_KWARGS = {"segmentation": {"channels": 16}, "change": {"channels": 16}, "detection": {"channels": 16}}


def _build(task: str, **backbone_kwargs: object) -> rsvheat.tasks.BaseTaskModel:
    num_classes = None if task == "change" else 3
    return build_task_model(task, BACKBONE, num_classes, backbone_kwargs, **HEAD_KWARGS.get(task, {}))  # type: ignore[arg-type]


@pytest.mark.parametrize("task", TASKS)
def test_every_parameter_is_trained(task: str) -> None:
    """The backbone's own classifier is dropped and every head parameter is used (DDP needs no unused-param scan)."""
    torch.manual_seed(0)
    model = _build(task)
    assert getattr(model.encoder, "num_classes", 0) == 0
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"encoder", "head"}
    x = torch.randn(2, model.in_chans[model.encoder.default_modality], 40, 48)
    match task:
        case "change":
            out = model(x, x.flip(-2))
        case _:
            out = model(x)
    if isinstance(out, DetectionOutput):
        total = sum(t.mean() for t in (*out.cls_logits, *out.box_reg, *out.centerness))
    else:
        total = out.mean()
    total.backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_change_model_shares_one_encoder_call() -> None:
    torch.manual_seed(0)
    model = _build("change")
    assert isinstance(model, ChangeTaskModel)
    calls: list[int] = []
    original_forward_features = model.encoder.forward_features

    def counting_forward_features(x: torch.Tensor, modality: str | None = None) -> list[torch.Tensor]:
        calls.append(x.shape[0])
        return original_forward_features(x, modality=modality)

    model.encoder.forward_features = counting_forward_features  # type: ignore[method-assign]
    model.eval()
    before = torch.randn(2, model.in_chans[model.encoder.default_modality], 56, 72)
    after = torch.randn_like(before)
    with torch.no_grad():
        out = model(before, after)
        # The same shared-weight encoder applied to each date separately gives the same answer.
        expected = model.head(original_forward_features(before), original_forward_features(after), (56, 72))
    assert calls == [4]  # one call on the concatenated (2B) batch
    assert out.shape == (2, 1, 56, 72)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        model(before, after[:, :, :50])


def test_modality_is_passed_to_the_encoder() -> None:
    model = _build("segmentation", in_chans={"optical": 4, "sar": 2})
    assert isinstance(model, TaskModel)
    assert model.modalities == ("optical", "sar")
    assert model(torch.randn(1, 2, 33, 47), modality="sar").shape == (1, 3, 33, 47)
    with pytest.raises(BandCountMismatchError):
        model(torch.randn(1, 4, 32, 32), modality="sar")


def test_task_config_and_metric_flow() -> None:
    model = _build("detection")
    assert model.task_config == {"task": "detection", "num_classes": 3, "head_kwargs": {"channels": 16}}
    model.eval()
    x = torch.randn(2, model.in_chans[model.encoder.default_modality], 64, 64)
    with torch.no_grad():
        detections = model.postprocess(model(x))
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}
    metric = model.metric()
    metric.update(detections, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2)
    assert set(metric.compute()) == {"mAP50"}


def test_build_task_model_errors() -> None:
    with pytest.raises(ValueError, match="valid tasks: classification, multilabel"):
        build_task_model("panoptic", BACKBONE, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="binary"):
        build_task_model("change", BACKBONE, 3)
    with pytest.raises(ValueError, match="num_classes >= 1"):
        build_task_model("segmentation", BACKBONE, None)
    with pytest.raises(ValueError, match="registered models"):
        build_task_model("classification", "no_such_backbone", 3)
    with pytest.raises(ValueError, match="use build_task_model"):
        TaskModel(rsvheat.create_model(BACKBONE), "change", None, {})

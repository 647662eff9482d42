"""Every head on every image backbone family: output shapes at odd input sizes, and overfitting a tiny batch."""

from __future__ import annotations

import pytest
import torch

import rsvheat
from rsvheat.heads import ChangeHead, ClassificationHead, DetectionHead, MultiLabelHead, SegmentationHead
from rsvheat.tasks import build_task_model
from tests.rsvheat.heads._backbones import image_test_backbones, task_test_backbone, train_steps

BACKBONES = image_test_backbones()
OVERFIT_BACKBONE = task_test_backbone()


def test_every_image_family_is_covered() -> None:
    families = {name.split("_")[0] for name in BACKBONES}
    assert {"vheat", "heracles"} <= families, BACKBONES


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("size", [(72, 56), (64, 64)])
def test_head_shapes_any_size_and_modality(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    encoder = rsvheat.create_model(name, in_chans={"optical": 5, "sar": 2})
    info = encoder.feature_info
    heads = {
        "cls": ClassificationHead(info, 4),
        "multi": MultiLabelHead(info, 6),
        "seg": SegmentationHead(info, 3, channels=16),
        "change": ChangeHead(info, channels=16),
        "det": DetectionHead(info, 2, channels=16),
    }
    total = torch.zeros(())
    for modality, bands in (("optical", 5), ("sar", 2)):
        x = torch.randn(2, bands, *size)
        feats = encoder.forward_features(x, modality=modality)
        feats_after = encoder.forward_features(x.flip(-1), modality=modality)
        assert heads["cls"](feats).shape == (2, 4)
        assert heads["multi"](feats).shape == (2, 6)
        seg = heads["seg"](feats, size)
        change = heads["change"](feats, feats_after, size)
        assert seg.shape == (2, 3, *size)
        assert change.shape == (2, 1, *size)
        det = heads["det"](feats, size)
        for cls, reg, ctr, stride in zip(det.cls_logits, det.box_reg, det.centerness, det.strides, strict=True):
            grid = (-(-size[0] // stride), -(-size[1] // stride))  # ceil(n / stride), like the backbone
            assert cls.shape == (2, 2, *grid)
            assert reg.shape == (2, 4, *grid) and (reg >= 0).all()
            assert ctr.shape == (2, 1, *grid)
        for boxes in (d["boxes"] for d in heads["det"].decode(det)):
            assert ((boxes[:, 0::2] >= 0) & (boxes[:, 0::2] <= size[1])).all()
            assert ((boxes[:, 1::2] >= 0) & (boxes[:, 1::2] <= size[0])).all()
        total = total + seg.mean() + change.mean() + sum(r.mean() for r in det.box_reg)
    total.backward()
    grads = [p.grad for head in heads.values() for p in head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def _overfit(task: str, num_classes: int | None, inputs: tuple[torch.Tensor, ...], target: object, steps: int, **kw):
    torch.manual_seed(0)
    model = build_task_model(task, OVERFIT_BACKBONE, num_classes, **kw)  # type: ignore[arg-type]
    first = train_steps(model, lambda: model.loss(model(*inputs), target), steps)
    model.eval()
    with torch.no_grad():
        outputs = model(*inputs)
    metric = model.metric()
    metric.update(model.postprocess(outputs), target)
    return model, outputs, first, model.loss(outputs, target).item(), metric.compute()


def _chans() -> int:
    model = rsvheat.create_model(OVERFIT_BACKBONE)
    return model.in_chans[model.default_modality]


def test_classification_overfits() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, _chans(), 64, 64, generator=gen), torch.tensor([0, 1, 2, 3])
    _, _, first, last, metric = _overfit("classification", 4, (x,), y, steps=30)
    assert last < first / 20
    assert metric["accuracy"] == 1.0


def test_multilabel_overfits() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, _chans(), 64, 64, generator=gen)
    y = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [1, 1, 0, 1, 0], [0, 0, 0, 1, 1]]).float()
    _, _, first, last, metric = _overfit("multilabel", 5, (x,), y, steps=30)
    assert last < first / 10
    assert metric["macro_f1"] == 1.0 and metric["mAP"] == 1.0


def test_segmentation_overfits_and_ignores_nodata() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.zeros(2, 64, 64, dtype=torch.long)
    # Regions aligned to the decoder's stride-4 grid, so the 4x upsampling of the logits can fit them exactly.
    y[0, 8:40, 12:32], y[0, 40:60, 32:60], y[1, 20:48, 20:52], y[1, :12] = 1, 2, 2, 1
    x = torch.randn(2, _chans(), 64, 64, generator=gen) * 0.3 + y[:, None].float()
    y[:, :, :4] = 255  # a nodata strip
    _, _, first, last, metric = _overfit("segmentation", 3, (x,), y, steps=40, channels=64, drop_rate=0.0)
    assert last < first / 10
    assert metric["mIoU"] > 0.9


def test_change_overfits() -> None:
    gen = torch.Generator().manual_seed(0)
    before = torch.randn(2, _chans(), 64, 64, generator=gen)
    y = torch.zeros(2, 64, 64, dtype=torch.long)
    y[0, 8:32, 12:40], y[1, 36:60, 4:24] = 1, 1  # aligned to the decoder's stride-4 grid
    after = before + 0.1 * torch.randn(before.shape, generator=gen) + 2.0 * y[:, None]
    y[:, -3:] = 255
    _, _, first, last, metric = _overfit("change", None, (before, after), y, steps=50, channels=32)
    assert last < first / 5
    assert metric["f1"] > 0.9 and metric["iou"] > 0.8


def test_detection_overfits() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, _chans(), 64, 64, generator=gen) * 0.2
    boxes = [torch.tensor([[6.0, 8, 30, 36], [36, 30, 60, 58]]), torch.tensor([[16.0, 12, 52, 44]])]
    labels = [torch.tensor([0, 1]), torch.tensor([1])]
    for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels, strict=True)):
        for (x1, y1, x2, y2), label in zip(image_boxes.long().tolist(), image_labels.tolist(), strict=True):
            x[i, label, y1:y2, x1:x2] += 2.0  # class = which band lights up
    target = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels, strict=True)]
    torch.manual_seed(0)
    model = build_task_model("detection", OVERFIT_BACKBONE, 2, channels=64)
    start = model.head.loss_terms(model(x), target)
    train_steps(model, lambda: model.loss(model(x), target), steps=60)
    model.eval()
    with torch.no_grad():
        outputs = model(x)
    end = model.head.loss_terms(outputs, target)
    # The centerness BCE has a floor (the entropy of its soft targets); the other two terms go to ~0.
    assert end["cls"] < start["cls"] / 20
    assert end["box"] < start["box"] / 5
    metric = model.metric()
    metric.update(model.postprocess(outputs), target)
    assert metric.compute()["mAP50"] > 0.99


def test_dense_losses_with_only_nodata_are_zero_and_differentiable() -> None:
    info = rsvheat.create_model(OVERFIT_BACKBONE).feature_info
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    nodata = torch.full((1, 8, 8), 255)
    loss = SegmentationHead(info, 3, channels=16).loss(logits, nodata)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
    change_logits = torch.randn(1, 1, 8, 8, requires_grad=True)
    change_loss = ChangeHead(info, channels=16).loss(change_logits, nodata)
    assert torch.isfinite(change_loss)


def test_heads_reject_mismatched_targets() -> None:
    info = rsvheat.create_model(OVERFIT_BACKBONE).feature_info
    with pytest.raises(ValueError, match="input size"):
        SegmentationHead(info, 3, channels=16).loss(torch.randn(1, 3, 8, 8), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="multi-hot"):
        MultiLabelHead(info, 3).loss(torch.randn(2, 3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="num_chs"):
        ClassificationHead([{"reduction": 4}], 3)

"""jobs/finetune.py parts without a cluster: split, search space, layer decay, freezing, augmentation, results."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

import rsvheat
from jobs._config import ConfigError
from jobs._finetune_data import spatial_split
from jobs._finetune_loop import augment_batch, cosine_factor
from jobs._finetune_model import encoder_layer_ids, freeze_encoder, param_groups
from jobs._search_space import parse_search
from jobs.finetune import TrialRow, results_csv_text


def _cells(nx: int, ny: int, step: int = 320, size: int = 32, epsg: int = 32618) -> list[str]:
    """Grid cells of 32 px x 10 m chips, ``step`` m apart (320: edge to edge, 160: overlapping), block-aligned."""
    return [f"{epsg}_E{400000 + i * step}_N{4199680 - j * step}_{size}px_10m" for i in range(nx) for j in range(ny)]


def test_spatial_split_is_deterministic_blockwise_and_complete() -> None:
    cells = _cells(8, 8)
    is_val, excluded, summary = spatial_split(cells, val_fraction=0.25, block_chips=2, seed=3)
    assert (is_val, excluded) == spatial_split(cells, val_fraction=0.25, block_chips=2, seed=3)[:2]
    assert summary["blocks"] == 16 and summary["val_blocks"] == 4 and not any(excluded)  # chips do not overlap
    assert sum(is_val) == 16  # 4 blocks of 2 x 2 chips
    blocks = {}
    for cell, val in zip(cells, is_val, strict=True):
        x, y = int(cell.split("_")[1][1:]), int(cell.split("_")[2][1:])
        blocks.setdefault(((x - 400000) // 640, (4199680 - y) // 640), set()).add(val)
    assert all(len(v) == 1 for v in blocks.values())  # a block never spans two splits
    assert spatial_split(cells, val_fraction=0.25, block_chips=2, seed=4)[0] != is_val  # the seed matters


def test_spatial_split_guard_band_drops_val_chips_overlapping_train() -> None:
    cells = _cells(8, 8, step=160)  # stride half the chip: neighbours overlap
    is_val, excluded, summary = spatial_split(cells, val_fraction=0.25, block_chips=2, seed=0)
    assert summary["guard_dropped"] == sum(excluded) > 0
    assert all(v for v, x in zip(is_val, excluded, strict=True) if x)  # only val chips are dropped
    boxes = [(int(c.split("_")[1][1:]), int(c.split("_")[2][1:])) for c in cells]
    train = [b for b, v in zip(boxes, is_val, strict=True) if not v]
    for (x, y), v, x_ in zip(boxes, is_val, excluded, strict=True):
        if v and not x_:  # a kept val chip overlaps no train chip
            assert all(abs(x - tx) >= 320 or abs(y - ty) >= 320 for tx, ty in train)


def test_spatial_split_needs_two_blocks() -> None:
    with pytest.raises(ConfigError, match="one spatial block"):
        spatial_split(_cells(2, 2), val_fraction=0.5, block_chips=4, seed=0)


def test_parse_search_accepts_and_rejects() -> None:
    space = parse_search(["lr=loguniform(1e-4, 3e-3)", "encoder=choice(frozen, full)", "augment=grid(none)"],
                         {"encoder": ("frozen", "full", "layer-decay"), "augment": ("none", "flip")})
    assert space == {"lr": ("loguniform", [1e-4, 3e-3]), "encoder": ("choice", ["frozen", "full"]),
                     "augment": ("grid", ["none"])}
    for bad, message in [("lr=1e-3", "KEY=DIST"), ("momentum=choice(1)", "not searchable"),
                         ("lr=normal(0, 1)", "unknown distribution"), ("lr=uniform(1)", "2 values"),
                         ("lr=loguniform(0, 1)", "0 < low"), ("encoder=uniform(0, 1)", "categorical"),
                         ("encoder=choice(partial)", "not valid")]:
        with pytest.raises(ConfigError, match=message):
            parse_search([bad], {"encoder": ("frozen", "full")})


def _model() -> rsvheat.TaskModel:
    torch.manual_seed(0)
    return rsvheat.build_task_model("classification", "vheat_test", 3, {"in_chans": {"s2": 4}, "img_size": 32})


def test_layer_decay_orders_layers_from_stem_to_top() -> None:
    model = _model()
    ids, last = encoder_layer_ids(model.encoder)
    assert ids["stems.s2.conv1.weight"] == 0 and max(ids.values()) == last
    blocks = sorted({v for k, v in ids.items() if ".blocks." in k})
    assert blocks == list(range(1, last))  # one layer per block, in order
    groups = param_groups(model, mode="layer-decay", lr=1.0, weight_decay=0.1, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(model.encoder.get_parameter("stems.s2.conv1.weight"))] == pytest.approx(0.5**last)
    assert all(lr_of[id(p)] == 1.0 for p in model.head.parameters())
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert wd_of[id(model.encoder.get_parameter("stems.s2.conv1.bias"))] == 0.0  # no decay on biases


def test_frozen_encoder_stays_bit_identical_through_training_steps() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    freeze_encoder(model)
    groups = param_groups(model, mode="frozen", lr=1e-2, weight_decay=0.05, layer_decay=1.0)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.head.parameters()}
    optimizer = torch.optim.AdamW(groups)
    model.train()
    model.encoder.eval()
    head_before = [p.clone() for p in model.head.parameters()]
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(model(torch.randn(4, 4, 32, 32), modality="s2"), torch.tensor([0, 1, 2, 0])).backward()
        optimizer.step()
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True))


def test_augment_moves_image_mask_and_boxes_together() -> None:
    image = torch.zeros(1, 2, 8, 8)
    image[0, :, 1:3, 5:8] = 1.0  # a bright block at rows 1-2, cols 5-7
    batch = {"image": image, "valid": image[:, 0] > 0, "target": (image[:, 0] > 0).to(torch.uint8),
             "boxes": torch.tensor([[[5.0, 1.0, 8.0, 3.0], [-1, -1, -1, -1]]]), "box_labels": torch.tensor([[0, -1]])}
    seen = set()
    for seed in range(16):
        out = augment_batch(batch, "flip-rot90", torch.Generator().manual_seed(seed))
        rows, cols = torch.nonzero(out["image"][0, 0], as_tuple=True)
        x0, y0, x1, y1 = out["boxes"][0, 0].tolist()
        assert (x0, y0, x1, y1) == (cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1)
        assert torch.equal(out["valid"], out["image"][:, 0] > 0) and torch.equal(out["target"].bool(), out["valid"])
        assert out["boxes"][0, 1].tolist() == [-1, -1, -1, -1]  # padding stays padding
        seen.add((x0, y0, x1, y1))
    assert len(seen) > 4  # flips and quarter turns really vary
    assert augment_batch(batch, "none", torch.Generator()) is batch


def test_cosine_factor_runs_from_one_to_the_floor() -> None:
    assert cosine_factor(0, 10) == 1.0 and cosine_factor(10, 10) == pytest.approx(0.01)
    assert np.all(np.diff([cosine_factor(e, 10) for e in range(11)]) < 0)


def test_results_csv_lists_every_trial_best_first() -> None:
    rows = [TrialRow("a", "TERMINATED", True, 1, 1, 0.2, 0.2, {"lr": 1e-5}, "/x", None),
            TrialRow("b", "TERMINATED", False, 3, 2, 0.7, 0.6, {"lr": 3e-3}, "/y", None, (0.5, 0.7, 0.6)),
            TrialRow("c", "ERROR", False, 0, None, None, None, {"lr": 1e-2}, None, "RuntimeError: boom")]
    parsed = list(csv.DictReader(io.StringIO(results_csv_text(rows, "mIoU", {"encoder": "full"}))))
    assert [r["trial_id"] for r in parsed] == ["b", "a", "c"]
    assert parsed[0]["mIoU"] == "0.7" and parsed[0]["best_epoch"] == "2" and parsed[0]["encoder"] == "full"
    assert parsed[1]["stopped_early"] == "True" and parsed[1]["epochs_run"] == "1"
    assert parsed[0]["mIoU_per_epoch"] == "0.5 0.7 0.6"
    assert parsed[2]["error"] == "RuntimeError: boom" and parsed[2]["mIoU"] == ""

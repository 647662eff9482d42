"""Crop + halo equals a full recompute to 1e-5 on random local CNN stacks (spec test 2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsvheat.receptive import receptive_field
from rsvheat.subchip import plan_crop, subchip_forward


def _stack(seed: int, stride: int, dilation: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=stride, padding=dilation, dilation=dilation), nn.BatchNorm2d(8), nn.GELU(),
        nn.Conv2d(8, 8, 5, padding=2), nn.LeakyReLU(),
        nn.Conv2d(8, 6, 3, stride=stride, padding=1), nn.ReLU(),
        nn.Conv2d(6, 3, 1),
    ).eval()


BOXES = {
    "centre": [(40, 44, 52, 60)],
    "top-left corner": [(0, 0, 9, 7)],
    "bottom-right corner": [(90, 91, 96, 100)],
    "left edge": [(30, 0, 50, 6)],
    "bottom edge": [(88, 30, 96, 70)],
    "several blobs": [(5, 60, 12, 70), (50, 10, 58, 18), (70, 80, 80, 95)],
}


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("where", sorted(BOXES))
def test_crop_and_halo_equals_full_recompute(stride: int, dilation: int, where: str) -> None:
    model = _stack(7 * stride + dilation, stride, dilation)
    halo, s = receptive_field(model)
    assert s == stride * stride
    gen = torch.Generator().manual_seed(hash(where) % 1000)
    old = torch.randn(4, 96, 100, generator=gen)  # a size that is not a multiple of S
    new = old.clone()
    for r0, c0, r1, c1 in BOXES[where]:
        new[:, r0:r1, c0:c1] = torch.randn(4, r1 - r0, c1 - c0, generator=gen) * 2
    with torch.no_grad():
        cached = model(old[None])[0]
        full = model(new[None])[0]
        got, work = subchip_forward(model, new, cached, BOXES[where], halo, s, max_crop_frac=1.0)
    assert got.shape == full.shape
    assert (got - full).abs().max().item() <= 1e-5
    assert (cached - full).abs().max().item() > 1e-3  # the change mattered, so the test can fail
    assert work < 96 * 100 or where == "several blobs"


def test_crop_plan_aligns_to_the_output_stride_and_clips() -> None:
    plan = plan_crop((40, 41, 45, 47), halo=3, stride=4, shape=(96, 100))
    assert all(v % 4 == 0 for v in plan.affected + plan.crop[:2])
    assert plan.affected == (32, 32, 52, 56)  # box ⊕ (R + S) = (33, 34, 52, 54), snapped out to multiples of 4
    assert plan.crop == (28, 28, 56, 60)
    assert plan_crop((0, 0, 3, 3), 3, 4, (96, 100)).crop[:2] == (0, 0)
    assert plan_crop((90, 95, 96, 100), 3, 4, (96, 100)).crop[2:] == (96, 100)


def test_large_changes_recompute_the_whole_input() -> None:
    model = _stack(1, 1, 1)
    halo, s = receptive_field(model)
    x = torch.randn(4, 40, 40)
    with torch.no_grad():
        out, work = subchip_forward(model, x, torch.zeros(3, 40, 40), [(0, 0, 30, 30)], halo, s)
        full = model(x[None])[0]
    assert work == 40 * 40 and torch.equal(out, full)

"""Receptive field from the modules, locality whitelist, and the planner's chip-level fallback (spec tests 1, 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rsvheat
from rsvheat.receptive import locality, receptive_field, reuse_mode, supports_subchip
from rsvheat.subchip import subchip_forward


def _convs(n: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(3 if i == 0 else 4, 4, 3, stride=stride, padding=dilation, dilation=dilation), nn.ReLU()]
    return nn.Sequential(*layers)


def test_receptive_field_formula() -> None:
    assert receptive_field(_convs(4)) == (4, 1)  # four 3x3 stride-1 convs
    assert receptive_field(_convs(2, stride=2)) == (3, 4)  # stem of two 3x3 stride-2 convs: R = 1 + 2, S = 4
    assert receptive_field(_convs(2, dilation=2)) == (4, 1)
    nested = nn.Sequential(_convs(1), nn.Sequential(nn.BatchNorm2d(4).eval(), nn.MaxPool2d(2)), _convs(1)[0])
    # conv (1) + pool k2 s2 reaching 1 px right (1) + 3x3 conv at stride 2 (2)
    assert receptive_field(nested) == (4, 2)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        return self.attn(seq, seq, seq)[0].transpose(1, 2).reshape(b, c, h, w)  # (B, H*W, C) -> (B, C, H, W)


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (nn.Sequential(_convs(1), nn.GroupNorm(2, 4)), "GroupNorm"),
        (nn.Sequential(_convs(1), _Attention()), "own forward"),
        (nn.Sequential(_convs(1), nn.AdaptiveAvgPool2d(1)), "AdaptiveAvgPool2d"),
        (nn.Sequential(_convs(1), nn.BatchNorm2d(4).train()), "training mode"),
        (nn.Sequential(_convs(1), nn.InstanceNorm2d(4)), "InstanceNorm2d"),
    ],
)
def test_global_ops_are_not_local(model: nn.Module, why: str) -> None:
    assert not supports_subchip(model)
    assert any(why in r for r in locality(model).reasons)
    mode = reuse_mode(model)
    assert (mode.subchip, mode.halo) == (False, 0)  # the planner falls back to whole chips, no halo
    with pytest.raises(ValueError, match="no bounded receptive field"):
        receptive_field(model)


def test_hco_and_heracles_models_fall_back_to_chip_level() -> None:
    for name in ("vheat_test", "heracles_test"):
        model = rsvheat.create_model(name, in_chans=3).eval()
        assert not supports_subchip(model) and not reuse_mode(model).subchip
    seg = rsvheat.build_task_model("segmentation", "vheat_test", 3, {"in_chans": 3}).eval()
    assert not supports_subchip(seg)


def test_crop_and_halo_differs_from_the_full_run_for_a_global_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_convs(2), nn.GroupNorm(1, 4)).eval()  # GroupNorm: statistics over the whole map
    old = torch.randn(3, 48, 48)
    new = old.clone()
    new[:, 20:26, 20:26] += 3.0
    with torch.no_grad():
        cached = model(old[None])[0]
        full = model(new[None])[0]
        pasted, _ = subchip_forward(model, new, cached, [(20, 20, 26, 26)], halo=2, stride=1)
    # Outside the pasted region the cached values are stale: the changed box moved every pixel's statistics.
    assert (pasted - full).abs().max() > 1e-3

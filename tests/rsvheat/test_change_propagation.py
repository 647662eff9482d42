"""Method 1 (per-location change propagation): exact at theta = 0, approximate at theta = 1; mask propagation is a
superset of the outputs that change (spec tests 4, 5)."""

from __future__ import annotations

import torch
from torch import nn

from rsvheat.change_propagation import dense_forward, propagate_mask, propagated_forward


def _toy(seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)  # the published toy: conv1 -> pool1 -> conv2 -> pool2 (FC layers always recomputed)
    return [nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(2)]


def _frames() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    prev = torch.rand(1, 1, 32, 32, generator=gen) * 2 - 1
    new = prev.clone()
    new[0, 0, 10:14, 5:9] = torch.rand(4, 4, generator=gen) * 2 - 1  # a moved patch
    new[0, 0, 25, 20] += 0.05  # one isolated, slightly changed pixel
    return prev, new


@torch.no_grad()
def test_theta_zero_equals_full_recompute_and_theta_one_may_not() -> None:
    layers = _toy()
    prev, new = _frames()
    prev_outs = dense_forward(layers, prev)
    full = dense_forward(layers, new)
    change = (new - prev).abs().mean(dim=1)[0]  # (1, C, H, W) -> (H, W)
    exact, masks = propagated_forward(layers, new, prev_outs, change, theta=0.0)
    for got, want in zip(exact, full, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    assert 0 < masks[0].float().mean() < 0.5  # it skipped work
    approx, _ = propagated_forward(layers, new, prev_outs, change, theta=1.0)
    # theta = 1 drops the single slightly changed pixel (window sum 0.05): the documented approximation.
    assert (approx[-1] - full[-1]).abs().max() > 0


@torch.no_grad()
def test_propagated_mask_covers_every_output_that_changed() -> None:
    layers = _toy(3)
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 1, 32, 32, generator=gen)
        changed = torch.rand(32, 32, generator=gen) < 0.03
        y = x.clone()
        y[0, 0][changed] += torch.randn(int(changed.sum()), generator=gen)
        mask = changed
        a, b = x, y
        for layer in layers:
            mask = propagate_mask(mask, layer)
            a, b = dense_forward([layer], a)[0], dense_forward([layer], b)[0]
            actually = (a - b).abs().amax(dim=(0, 1)) > 0  # (1, C, h, w) -> (h, w)
            assert not (actually & ~mask).any()  # a superset is allowed

"""Pretraining losses (docs/pretraining.md §4; tests 5-6 of its "Tests" list) and the cross-rank negatives."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from rsvheat.ssl import NonFiniteLossError, cosine_loss, frequency_loss, info_nce, spatial_loss
from tests.rsvheat.ssl._dist_worker import gathered_info_nce


def test_frequency_loss_equals_spatial_loss_for_white_gaussian_error() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(4, 3, 256, 256, generator=gen)
    pred = target + 0.7 * torch.randn(4, 3, 256, 256, generator=gen)
    spa, fre = spatial_loss(pred, target), frequency_loss(pred, target)
    assert float(spa) == pytest.approx(0.7 * math.sqrt(2 / math.pi), rel=0.01)  # E|N(0, σ²)| = σ√(2/π)
    assert float(fre) == pytest.approx(float(spa), rel=0.05)
    assert float(spatial_loss(target, target)) == 0.0 and float(frequency_loss(target, target)) == 0.0


def test_frequency_loss_weights_smooth_errors_less_than_spatial_loss() -> None:
    target = torch.zeros(1, 1, 64, 64)
    ramp = torch.linspace(-1, 1, 64)
    pred = (ramp[:, None] + ramp[None, :])[None, None]  # a smooth error: its energy sits in a few DCT coefficients
    assert float(frequency_loss(pred, target)) < 0.2 * float(spatial_loss(pred, target))


def test_spatial_loss_ignores_invalid_pixels_whatever_their_values() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(2, 3, 16, 16, generator=gen)
    pred = torch.randn(2, 3, 16, 16, generator=gen)
    valid = torch.rand(2, 16, 16, generator=gen) > 0.4
    spoiled = pred.clone()
    spoiled[~valid[:, None].expand_as(pred)] = float("nan")
    expected = (pred - target).abs()[valid[:, None].expand_as(pred)].mean()
    torch.testing.assert_close(spatial_loss(spoiled, target, valid), expected)
    per_band = valid[:, None].repeat(1, 3, 1, 1)
    per_band[:, 0] = False  # band 0 entirely invalid
    expected = (pred - target).abs()[per_band].mean()
    torch.testing.assert_close(spatial_loss(pred, target, per_band), expected)
    nothing = torch.zeros(2, 16, 16, dtype=torch.bool)
    empty = spatial_loss(pred.requires_grad_(True), target, nothing)
    assert float(empty.detach()) == 0.0 and empty.requires_grad  # still in the graph


def test_frequency_loss_skips_chips_over_20_percent_invalid() -> None:
    gen = torch.Generator().manual_seed(2)
    target = torch.randn(3, 2, 20, 20, generator=gen)
    pred = torch.randn(3, 2, 20, 20, generator=gen)
    valid = torch.ones(3, 20, 20, dtype=torch.bool)
    valid[1, :5] = False  # 25 % invalid: skipped
    valid[2, :4] = False  # 20 % invalid: kept, with the invalid pixels zeroed in both images
    mixed = frequency_loss(pred, target, valid)
    keep = torch.tensor([0, 2])
    zeroed = valid[keep, None]
    expected = frequency_loss(pred[keep] * zeroed, target[keep] * zeroed)
    torch.testing.assert_close(mixed, expected)
    spoiled = pred.clone()
    spoiled[2, :, :4] = float("nan")
    torch.testing.assert_close(frequency_loss(spoiled, target, valid), expected)
    everything_invalid = torch.zeros(3, 20, 20, dtype=torch.bool)
    assert float(frequency_loss(pred, target, everything_invalid)) == 0.0


def test_frequency_loss_asserts_finite() -> None:
    pred = torch.zeros(1, 1, 8, 8)
    pred[0, 0, 3, 3] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"'fre' is not finite"):
        frequency_loss(pred, torch.zeros(1, 1, 8, 8))


def test_info_nce_is_ln_batch_for_random_embeddings() -> None:
    gen = torch.Generator().manual_seed(3)
    for batch in (16, 64, 256):
        z_a, z_b = torch.randn(batch, 256, generator=gen), torch.randn(batch, 256, generator=gen)
        assert float(info_nce(z_a, z_b, 0.1)) == pytest.approx(math.log(batch), abs=0.5)


def test_info_nce_vanishes_for_identical_separated_pairs_and_is_symmetric() -> None:
    z = torch.eye(32, 64) * 3.0  # well separated: orthogonal directions
    assert float(info_nce(z, z.clone(), 0.1)) < 2e-3  # log(1 + 31·e^-10)
    assert float(info_nce(z, z.clone(), 0.05)) < 1e-6  # -> 0 as the pairs separate further
    gen = torch.Generator().manual_seed(4)
    z_a, z_b = torch.randn(8, 32, generator=gen), torch.randn(8, 32, generator=gen)
    torch.testing.assert_close(info_nce(z_a, z_b), info_nce(z_b, z_a))
    assert float(info_nce(z_a, z_a + 0.01 * z_b)) < float(info_nce(z_a, z_b))  # positives close -> lower loss
    with pytest.raises(ValueError, match=r"two \(B, D\) embeddings"):
        info_nce(z_a, z_b[:4])


def test_cosine_loss_stops_the_gradient_at_the_targets() -> None:
    gen = torch.Generator().manual_seed(5)
    p_a, p_b, z_a, z_b = (torch.randn(6, 16, generator=gen).requires_grad_(True) for _ in range(4))
    loss = cosine_loss(p_a, p_b, z_a, z_b)
    loss.backward()
    assert z_a.grad is None and z_b.grad is None
    assert p_a.grad is not None and float(p_a.grad.abs().sum()) > 0
    with torch.no_grad():
        expected = float(1 - torch.cosine_similarity(z_a, z_b).mean())
        assert float(cosine_loss(z_a, z_b, z_a, z_b)) == pytest.approx(expected)
        assert float(cosine_loss(z_a, z_a, z_a, z_a)) == pytest.approx(0.0, abs=1e-6)


def test_info_nce_gathers_negatives_across_ranks_with_gradient(tmp_path: Path) -> None:
    """Two gloo ranks with 4 and 3 rows: the rank losses average to the full-batch loss and gradients flow back."""
    mp.spawn(gathered_info_nce, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    gen = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(7, 16, generator=gen), torch.randn(7, 16, generator=gen)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Every row saw all 7 candidates, so the row-weighted rank losses add up to the full-batch loss.
    torch.testing.assert_close(4 * ranks[0]["loss"] + 3 * ranks[1]["loss"], 7 * info_nce(z_a, z_b, 0.1))
    # Gradients reach each row's own rank, summed over both ranks' use of it: grad_r = ∂(L_0 + L_1)/∂z_r.
    z_a2, z_b2 = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    a, b = F.normalize(z_a2, dim=1), F.normalize(z_b2, dim=1)
    reference = torch.zeros(())
    for rows in (slice(0, 4), slice(4, 7)):  # rank 0's and rank 1's local losses, each against all 7 rows
        labels = torch.arange(7)[rows]
        reference = reference + 0.5 * (
            F.cross_entropy(a[rows] @ b.T / 0.1, labels) + F.cross_entropy(b[rows] @ a.T / 0.1, labels)
        )
    reference.backward()
    torch.testing.assert_close(torch.cat([ranks[0]["grad_a"], ranks[1]["grad_a"]]), z_a2.grad)
    torch.testing.assert_close(torch.cat([ranks[0]["grad_b"], ranks[1]["grad_b"]]), z_b2.grad)

"""Frequency masking (docs/pretraining.md §2; tests 1-4 of its "Tests" list)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsvheat.layers.dct import dct2d, idct2d
from rsvheat.ssl import FrequencyMasking, MaskingConfig, UnknownOptionError, build_pretrainer
from rsvheat.ssl.masking import band_masks, frequency_distance, padded_size


def _spectrum(view: torch.Tensor) -> torch.Tensor:
    return dct2d(view, layout="bchw")


def _no_coefficient_on(distance: torch.Tensor, radii: torch.Tensor) -> bool:
    return bool(((distance[None, None] - radii[:, :, None, None]).abs() > 1e-3).all())


@pytest.mark.parametrize(("height", "width"), [(48, 48), (40, 56)])
def test_low_plus_high_minus_x_is_the_dc_image(height: int, width: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, height, width, dtype=torch.float64) * 2 + 0.5
    masking = FrequencyMasking({"pad_mode": "none"})
    rho = torch.tensor([0.1237, 0.2113, 0.3171], dtype=torch.float64)
    draw = masking.draw(3, (height, width), rho=rho)
    distance = frequency_distance(height, width, dtype=torch.float64)
    radii = draw.cuts.double() * math.hypot(height, width)
    assert _no_coefficient_on(distance, radii)  # the ρ are chosen so that no index has D = r
    low, high = masking.views(x, draw)
    dc_image = x.mean(dim=(2, 3), keepdim=True).expand_as(x)  # per-band constant image of the band mean
    torch.testing.assert_close(low + high - x, dc_image, atol=1e-5, rtol=0)
    r = radii[:, 0, None, None, None]  # (B, 1, 1, 1)
    d = distance[None, None]
    low_spec, high_spec = _spectrum(low), _spectrum(high)
    assert low_spec.masked_select((d > r).expand_as(low_spec)).abs().max() <= 1e-9
    assert high_spec.masked_select(((d > 0) & (d < r)).expand_as(high_spec)).abs().max() <= 1e-9
    # and they are not empty: the kept coefficients are the input's
    x_spec = _spectrum(x)
    torch.testing.assert_close(
        low_spec.masked_select((d <= r).expand_as(x_spec)), x_spec.masked_select((d <= r).expand_as(x_spec))
    )


def test_nested_bands_partition_the_spectrum_and_each_keeps_dc() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    masking = FrequencyMasking({"pad_mode": "none", "num_bands": 4})
    draw = masking.draw(2, (32, 48), rho=torch.tensor([0.1113, 0.2071]))
    assert draw.cuts.shape == (2, 3) and bool((draw.cuts.diff(dim=1) > 0).all())
    torch.testing.assert_close(draw.cuts[:, 0], draw.rho)
    views = masking.views(x, draw)
    assert views.shape == (4, 2, 3, 32, 48)
    dc_image = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    torch.testing.assert_close(views.sum(0) - x, 3 * dc_image, atol=1e-5, rtol=0)
    distance = frequency_distance(32, 48, dtype=torch.float64)
    radii = draw.cuts.double() * math.hypot(32, 48)
    edges = [torch.zeros(2), *radii.unbind(1), torch.full((2,), math.inf)]
    for k, view in enumerate(views):
        lo, hi = edges[k][:, None, None, None], edges[k + 1][:, None, None, None]
        outside = ((distance < lo) | (distance > hi)) & (distance > 0)
        spec = _spectrum(view)
        assert spec.masked_select(outside.expand_as(spec)).abs().max() <= 1e-9
        torch.testing.assert_close(spec[..., 0, 0], _spectrum(x)[..., 0, 0])  # DC in every view


def test_annulus_mode_splits_out_a_random_ring() -> None:
    torch.manual_seed(2)
    x = torch.randn(4, 2, 32, 32, dtype=torch.float64)
    masking = FrequencyMasking({"pad_mode": "none", "annulus": True})
    gen = torch.Generator().manual_seed(3)
    draw = masking.draw(4, (32, 32), gen)
    assert draw.cuts.shape == (4, 2) and bool((draw.cuts[:, 0] <= draw.cuts[:, 1]).all())
    outer, ring = masking.views(x, draw)
    torch.testing.assert_close(outer + ring - x, x.mean(dim=(2, 3), keepdim=True).expand_as(x), atol=1e-5, rtol=0)
    distance = frequency_distance(32, 32, dtype=torch.float64)
    a1, a2 = (draw.cuts.double() * math.hypot(32, 32)).unbind(1)
    inside = (distance > a1[:, None, None, None]) & (distance < a2[:, None, None, None])
    spec = _spectrum(outer)
    assert spec.masked_select(inside.expand_as(spec)).abs().max() <= 1e-9
    with pytest.raises(ValueError, match=r"annulus=True makes exactly 2 views"):
        MaskingConfig(annulus=True, num_bands=3)


def test_masking_is_deterministic_and_rho_varies_within_the_clip() -> None:
    masking = FrequencyMasking()
    x = torch.randn(16, 3, 40, 40)
    first, draw_1 = masking(x, generator=torch.Generator().manual_seed(7))
    second, draw_2 = masking(x, generator=torch.Generator().manual_seed(7))
    other, draw_3 = masking(x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(draw_1.rho, draw_2.rho, rtol=0, atol=0)
    assert not torch.equal(draw_1.rho, draw_3.rho) and not torch.equal(first, other)
    assert len(set(draw_1.rho.tolist())) > 8  # ρ is drawn per sample: the batch mixes scales
    rho = masking.draw(20000, (64, 64), torch.Generator().manual_seed(0)).rho
    assert float(rho.min()) == pytest.approx(0.02) and float(rho.max()) == pytest.approx(0.5)
    assert 0.02 <= float(rho.min()) and float(rho.max()) <= 0.5
    clipped_low, clipped_high = float((rho == rho.min()).float().mean()), float((rho == rho.max()).float().mean())
    # |g| with g ~ N(0.1, 0.3): P(|g| < 0.02) ≈ 0.050, P(|g| > 0.5) = P(g > 0.5) + P(g < −0.5) ≈ 0.091 + 0.023
    assert 0.04 < clipped_low < 0.06 and 0.10 < clipped_high < 0.13


def test_a_pair_shares_rho() -> None:
    pretrainer = build_pretrainer(
        "vheat_test", {"optical": 3, "sar": 2}, masking={"pad_mode": "none"}, projection={"hidden": 32, "dim": 16}
    )
    batch = {"optical": torch.randn(6, 3, 32, 32), "sar": torch.randn(6, 2, 32, 32)}
    views, draw = pretrainer.make_views(batch, generator=torch.Generator().manual_seed(0))
    assert len(set(draw.rho.tolist())) >= 4
    supports = {
        name: _spectrum(v[0]).abs().amax(dim=1) > 1e-6 for name, v in views.items()
    }  # (B, H, W) low-view support
    assert torch.equal(supports["optical"], supports["sar"])
    # one radius per sample, shared by the pair: as many distinct supports as distinct ρ
    assert len({int(s.sum()) for s in supports["optical"]}) == len(set(draw.rho.tolist()))


@pytest.mark.parametrize("rho", [0.1, 0.2, 0.3])
def test_masked_fraction_is_a_quarter_disc(rho: float) -> None:
    distance = frequency_distance(256, 256)
    masks = band_masks(distance, torch.tensor([[rho * math.hypot(256, 256)]]))
    fraction = float(masks[0].float().mean())  # what the high view loses
    assert fraction == pytest.approx(math.pi * rho**2 / 2, rel=0.10)


def test_area_mode_masks_the_drawn_fraction() -> None:
    masking = FrequencyMasking({"radius_mode": "area"})
    draw = masking.draw(12, (256, 256), torch.Generator().manual_seed(0))
    assert draw.area is not None and bool(((draw.area >= 0.2) & (draw.area <= 0.3)).all())
    assert len(set(draw.area.tolist())) == 12
    masks = band_masks(frequency_distance(256, 256), draw.cuts * math.hypot(256, 256))
    fractions = masks[0].double().mean(dim=(1, 2, 3))
    torch.testing.assert_close(fractions, draw.area, rtol=0.01, atol=0)


def test_zero_padding_224_to_256_and_crop_back() -> None:
    assert padded_size(224, 224, "zero") == (256, 256)
    assert padded_size(200, 136, "reflect") == (256, 256)
    assert padded_size(224, 224, "none") == (224, 224)
    assert padded_size(256, 256, "zero") == (256, 256)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    rho = torch.tensor([0.15, 0.3], dtype=torch.float64)
    for mode, torch_mode in (("zero", "constant"), ("reflect", "reflect")):
        masking = FrequencyMasking({"pad_mode": mode})
        draw = masking.draw(2, (224, 224), rho=rho)
        views = masking.views(x, draw)
        assert views.shape == (2, 2, 3, 224, 224)  # cropped back
        spectrum = dct2d(F.pad(x, (0, 32, 0, 32), mode=torch_mode), layout="bchw")  # padded at the bottom/right
        masks = band_masks(frequency_distance(256, 256, dtype=torch.float64), draw.cuts.double() * math.hypot(256, 256))
        for k in range(2):
            expected = idct2d(spectrum * masks[k], layout="bchw")[..., :224, :224]
            torch.testing.assert_close(views[k], expected, atol=1e-9, rtol=0)
    unpadded = FrequencyMasking({"pad_mode": "none"})
    assert not torch.allclose(unpadded.views(x, unpadded.draw(2, (224, 224), rho=rho)), views)


def test_invalid_pixels_are_zeroed_before_the_dct() -> None:
    x = torch.randn(2, 3, 32, 32)
    valid = torch.rand(2, 32, 32) > 0.3
    masking = FrequencyMasking()
    draw = masking.draw(2, (32, 32), torch.Generator().manual_seed(0))
    dirty = torch.where(valid[:, None], x, torch.tensor(float("nan")))
    torch.testing.assert_close(masking.views(dirty, draw, valid), masking.views(x * valid[:, None], draw))
    with pytest.raises(ValueError, match=r"expected \(2, 32, 32\) per pixel"):
        masking.views(x, draw, valid[:, :16])


def test_masking_config_rejects_unknown_and_bad_options() -> None:
    with pytest.raises(UnknownOptionError, match=r"'radius'.*known masking options: annulus, area_max"):
        MaskingConfig.from_dict({"radius": "diag"})
    with pytest.raises(ValueError, match=r"pad_mode='wrap'"):
        MaskingConfig(pad_mode="wrap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"num_bands=1"):
        MaskingConfig(num_bands=1)
    assert MaskingConfig.from_dict(MaskingConfig(num_bands=3).to_dict()) == MaskingConfig(num_bands=3)

"""Stems per modality and loading an RGB checkpoint into an N-band stem (docs/hco.md §RS-vHeat)."""

from __future__ import annotations

import pytest
import torch

import rsvheat
from rsvheat.layers.stem import adapt_rgb_filters, adapt_stem_weights, build_stems

S2_L1C = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def test_rgb_filters_go_to_b4_b3_b2_and_the_rest_get_the_mean_scaled_by_3_over_n() -> None:
    weight = torch.randn(8, 3, 3, 3)
    adapted = adapt_rgb_filters(weight, S2_L1C)
    assert adapted.shape == (8, 13, 3, 3)
    scale = 3 / 13
    for band, channel in (("B04", 0), ("B03", 1), ("B02", 2)):
        assert torch.allclose(adapted[:, S2_L1C.index(band)], weight[:, channel] * scale)
    others = [i for i, band in enumerate(S2_L1C) if band not in ("B02", "B03", "B04")]
    assert torch.allclose(adapted[:, others], weight.mean(dim=1, keepdim=True).expand(-1, 10, -1, -1) * scale)
    # Unpadded ids and common names (Landsat) select the same slots.
    landsat = adapt_rgb_filters(weight, ["blue", "green", "red", "nir08"])
    assert torch.allclose(landsat[:, 2], weight[:, 0] * 0.75) and torch.allclose(landsat[:, 0], weight[:, 2] * 0.75)
    assert torch.equal(adapt_rgb_filters(weight, ["B4", "b3", "B02"]), adapt_rgb_filters(weight, ["B04", "B03", "B02"]))


def test_bad_source_filters_and_empty_band_list_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(out, 3, k, k\)"):
        adapt_rgb_filters(torch.randn(8, 4, 3, 3), S2_L1C)
    with pytest.raises(ValueError, match="band_names is empty"):
        adapt_rgb_filters(torch.randn(8, 3, 3, 3), [])


@pytest.mark.parametrize("name", ["vheat_test", "heracles_test"])
def test_adapted_checkpoint_loads_and_a_grey_chip_gives_the_rgb_output(name: str) -> None:
    torch.manual_seed(0)
    rgb = rsvheat.create_model(name, in_chans=3).eval()
    state = rgb.state_dict()
    adapted = adapt_stem_weights(state, S2_L1C)
    assert torch.equal(state["stems.optical.conv1.weight"], rgb.stems["optical"].conv1.weight)  # input untouched
    s2 = rsvheat.create_model(name, in_chans=13).eval()
    s2.load_state_dict(adapted)  # strict: every key and shape matches the 13-band model
    grey = torch.rand(2, 1, 64, 48)
    with torch.no_grad():
        expected = rgb(grey.expand(-1, 3, -1, -1))
        assert torch.allclose(s2(grey.expand(-1, 13, -1, -1)), expected, atol=1e-5)
        assert not torch.allclose(s2(torch.rand(2, 13, 64, 48)), expected, atol=1e-3)


def test_source_stem_is_renamed_to_the_target_modality_and_missing_stems_are_named() -> None:
    rgb = rsvheat.create_model("rsvheat_test")  # stems: optical (3 bands) and sar (1 band)
    adapted = adapt_stem_weights(rgb.state_dict(), S2_L1C, modality="s2", source_modality="optical")
    assert not any(key.startswith("stems.optical.") for key in adapted)
    target = rsvheat.create_model("rsvheat_test", in_chans={"s2": 13, "sar": 1})
    target.load_state_dict(adapted)
    assert torch.equal(target.stems["s2"].norm2.weight, rgb.stems["optical"].norm2.weight)
    nested = {f"encoder.{key}": value for key, value in rgb.state_dict().items()}
    nested_adapted = adapt_stem_weights(nested, ["VV", "VH", "B04"], prefix="encoder.")
    assert nested_adapted["encoder.stems.optical.conv1.weight"].shape[1] == 3
    with pytest.raises(KeyError, match=r"stems are \['optical', 'sar'\].*source_modality"):
        adapt_stem_weights(rgb.state_dict(), S2_L1C, modality="s2")
    with pytest.raises(ValueError, match="3-band stem"):
        adapt_stem_weights(rgb.state_dict(), S2_L1C, modality="sar")


def test_build_stems_rejects_bad_band_counts() -> None:
    assert set(build_stems({"s2": 13, "s1": 2}, 16)) == {"s2", "s1"}
    with pytest.raises(ValueError, match="positive int"):
        build_stems({"s1": 0}, 16)

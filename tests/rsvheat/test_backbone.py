"""One backbone interface for every image family (vHeat, RS-vHeat, Heracles), and its shared argument rules."""

from __future__ import annotations

import pytest
import torch

import rsvheat
from rsvheat.errors import BandCountMismatchError, UnknownModalityError
from rsvheat.models._backbone import (
    check_modality_input,
    format_in_chans,
    format_size,
    pick_default_modality,
    resolve_stage_indices,
    stage_sizes,
)

IMAGE_VARIANTS = [n for n in rsvheat.list_models() if "_ts" not in n and "chipseq" not in n]
TEST_VARIANTS = [n for n in IMAGE_VARIANTS if n.endswith("_test")]


@pytest.mark.parametrize("name", IMAGE_VARIANTS)
def test_every_registry_backbone_defaults_to_no_classifier_and_shares_the_interface(name: str) -> None:
    with torch.device("meta"):
        model = rsvheat.create_model(name)
    assert model.num_classes == 0 and isinstance(model.head, torch.nn.Identity)
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]
    assert model.feature_info[-1]["num_chs"] == model.num_features
    assert [info["num_chs"] for info in model.feature_info] == list(model.dims) and len(model.depths) == 4
    assert model.default_modality in model.modalities and tuple(model.in_chans) == model.modalities
    for method in ("forward_intermediates", "forward_features", "forward_head", "reset_classifier"):
        assert callable(getattr(model, method))
    model.set_grad_checkpointing(True)


@pytest.mark.parametrize("name", TEST_VARIANTS)
def test_forward_embeds_and_the_last_map_is_channel_normalised(name: str) -> None:
    torch.manual_seed(0)
    model = rsvheat.create_model(name, in_chans={"s2": 5, "s1": 2}).eval()
    x = torch.randn(2, 5, 48, 40)
    with torch.no_grad():
        maps = model.forward_features(x)
        pooled = model(x)
        # At init the last map leaves a LayerNorm over channels (weight 1, bias 0) in both families; the pooled
        # embedding is its mean.
        assert maps[-1].mean(dim=1).abs().max().item() < 1e-4
        assert maps[-1].var(dim=1, unbiased=False).mean().item() == pytest.approx(1.0, abs=1e-2)
        assert pooled.shape == (2, model.num_features)
        assert torch.allclose(pooled, model.forward_head(maps[-1], pre_logits=True), atol=1e-6)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        assert model(torch.randn(1, 2, 40, 40), modality="s1").shape == (1, 3)
    with pytest.raises(BandCountMismatchError, match="'s2' expects 5 bands"):
        model(torch.randn(1, 2, 32, 32))


def test_stage_sizes_follow_ceil_halving() -> None:
    assert stage_sizes(224, 224) == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert stage_sizes(50, 70) == [(13, 18), (7, 9), (4, 5), (2, 3)]
    assert stage_sizes(1, 3, num_stages=2) == [(1, 1), (1, 1)]


def test_argument_helpers_normalise_and_explain() -> None:
    assert format_size(64) == (64, 64) and format_size([48, 64]) == (48, 64)
    with pytest.raises(ValueError, match="img_size must be a positive int"):
        format_size((64, True), "img_size")
    assert format_in_chans(13) == {"optical": 13}
    with pytest.raises(ValueError, match="non-empty dict"):
        format_in_chans({})
    assert pick_default_modality({"sar": 2, "optical": 13}) == "optical"
    assert pick_default_modality({"s1": 2, "s2": 13}) == "s1"
    with pytest.raises(UnknownModalityError, match="'s1', 's2'"):
        check_modality_input(torch.zeros(1, 2, 8, 8), {"s1": 2, "s2": 13}, "sar")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        check_modality_input(torch.zeros(2, 8, 8), {"s1": 2}, "s1")


def test_stage_indices() -> None:
    assert resolve_stage_indices(None, 4) == [0, 1, 2, 3]
    assert resolve_stage_indices(2, 4) == [2, 3]
    assert resolve_stage_indices([-1, 0, 3], 4) == [0, 3]
    with pytest.raises(ValueError, match="last 5 stages"):
        resolve_stage_indices(5, 4)
    with pytest.raises(ValueError, match="out of range"):
        resolve_stage_indices([4], 4)


def test_recorded_kwargs_are_a_snapshot_of_what_built_the_model() -> None:
    bands = {"optical": 4, "sar": 2}
    model = rsvheat.create_model("heracles_test", in_chans=bands, img_size=None)
    bands["optical"] = 13  # the caller reuses its dict
    assert model.model_kwargs == {"in_chans": {"optical": 4, "sar": 2}}  # None values are dropped
    assert model.in_chans == {"optical": 4, "sar": 2}

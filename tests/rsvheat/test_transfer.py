"""Encoder transfer for fine-tuning: stem matching by band name, stem adaptation, bit-identical trunk loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rsvheat
from rsvheat.errors import BandMatchError
from rsvheat.transfer import adapt_stem, load_pretrained_encoder, match_stem

S2 = ["B02", "B03", "B04", "B08"]


def test_match_stem_prefers_most_shared_bands_then_target_name() -> None:
    stems = {"sentinel_2": S2, "sentinel_1": ["VV", "VH"], "other": ["B02", "B03", "B04", "B08"]}
    match = match_stem(stems, ["b04", "B03", "B02"], "other")  # case-insensitive, another order, a subset
    assert match.source == "other" and match.source_index == (2, 1, 0) and not match.exact
    assert match_stem(stems, S2, "sentinel_2").exact
    partial = match_stem(stems, ["B02", "B03", "B11"], "s2", min_overlap=0.5)
    assert partial.new_bands == ("B11",) and partial.source_index == (0, 1, None)


def test_match_stem_error_names_the_bands_and_the_fix() -> None:
    with pytest.raises(BandMatchError, match=r"VV VH.*sentinel_2: B02 B03 B04 B08.*--bands"):
        match_stem({"sentinel_2": S2}, ["VV", "VH"], "sentinel_1", source="enc.pt")
    with pytest.raises(BandMatchError):  # one of four is below the default 50 %
        match_stem({"sentinel_2": S2}, ["B02", "X1", "X2", "X3"], "s")


def test_adapt_stem_picks_filters_and_starts_new_bands_from_the_mean() -> None:
    encoder = rsvheat.create_model("vheat_test", in_chans={"sentinel_2": 4, "sentinel_1": 2}, img_size=32)
    state = encoder.state_dict()
    match = match_stem({"sentinel_2": S2, "sentinel_1": ["VV", "VH"]}, ["B08", "B02", "B11"], "s2", min_overlap=0.6)
    adapted = adapt_stem(state, match)
    assert not any(k.startswith(("stems.sentinel_1.", "stems.sentinel_2.")) for k in adapted)
    source = state["stems.sentinel_2.conv1.weight"]  # (O, 4, k, k)
    weight = adapted["stems.s2.conv1.weight"]  # (O, 3, k, k)
    assert torch.equal(weight[:, 0], source[:, 3]) and torch.equal(weight[:, 1], source[:, 0])
    assert torch.allclose(weight[:, 2], source.mean(dim=1))
    assert torch.equal(adapted["stems.s2.conv2.weight"], state["stems.sentinel_2.conv2.weight"])


@pytest.mark.parametrize("backbone", ["rsvheat_test", "heracles_test"])
def test_load_pretrained_encoder_is_bit_identical_and_resized(tmp_path: Path, backbone: str) -> None:
    torch.manual_seed(0)
    source = rsvheat.create_model(backbone, in_chans={"sentinel_2": 4, "sentinel_1": 2}, img_size=64)
    path = rsvheat.save_checkpoint(tmp_path / "encoder.pt", source, bands={"sentinel_2": S2, "sentinel_1": ["VV", "VH"]})
    encoder, report = load_pretrained_encoder(path, stem="sentinel_2", bands=S2, img_size=32)
    assert encoder.in_chans == {"sentinel_2": 4} and report.match.exact
    want = source.state_dict()
    for key, value in encoder.state_dict().items():
        if key in report.weights.resized:
            assert value.shape != want[key].shape  # size-bound (FVE/SCE, spectral) resized to 32 px
        elif not key.startswith(("head.", "aux_head.")):
            assert torch.equal(value, want[key]), key
    assert (backbone == "heracles_test") or report.weights.resized  # the HCO's FVE/SCE follow the chip size


def test_task_checkpoint_transfers_its_encoder_only(tmp_path: Path) -> None:
    model = rsvheat.build_task_model("classification", "vheat_test", 5, {"in_chans": {"s2": 4}, "img_size": 32})
    path = rsvheat.save_checkpoint(tmp_path / "best.pt", model, bands={"s2": S2})
    encoder, report = load_pretrained_encoder(path, stem="s2", bands=S2, img_size=32)
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder.state_dict().items()
               if k in report.weights.loaded)
    assert len(report.weights.loaded) == len([k for k in encoder.state_dict() if not k.startswith("head.")])


def test_checkpoint_without_band_names_is_refused(tmp_path: Path) -> None:
    path = rsvheat.save_checkpoint(tmp_path / "x.pt", rsvheat.create_model("vheat_test", in_chans={"s2": 4}))
    with pytest.raises(ValueError, match="records no band names"):
        load_pretrained_encoder(path, stem="s2", bands=S2, img_size=32)

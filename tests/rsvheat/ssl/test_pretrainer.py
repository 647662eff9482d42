"""The frequency pretraining wrapper (docs/pretraining.md §3) on every image backbone of the registry."""

from __future__ import annotations

import pytest
import torch

import rsvheat
from rsvheat.ssl import FrequencyPretrainer, UnknownOptionError, build_pretrainer, build_pretrainer_from_config
from rsvheat.ssl.decoder import ReconstructionDecoder
from tests.rsvheat.heads._backbones import image_test_backbones

BACKBONES = image_test_backbones()
SMALL = {"decoder": {"fuse_dim": 32, "widths": (32, 16, 16, 8)}, "projection": {"hidden": 64, "dim": 32}}
IN_CHANS = {"optical": 4, "sar": 2}


def _batch(modalities: tuple[str, ...], size: tuple[int, int] = (40, 56), batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, IN_CHANS[m], *size, generator=gen) for m in modalities}


def test_every_image_backbone_is_covered() -> None:
    assert {"vheat_test", "rsvheat_test", "heracles_test"} <= set(BACKBONES)


@pytest.mark.parametrize("modalities", [("optical",), ("optical", "sar")], ids=["single", "pair"])
@pytest.mark.parametrize("name", BACKBONES)
def test_forward_backward_non_square(name: str, modalities: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    pretrainer = build_pretrainer(name, IN_CHANS, **SMALL)
    assert isinstance(pretrainer, FrequencyPretrainer) and pretrainer.encoder.model_name == name
    out = pretrainer(_batch(modalities), generator=torch.Generator().manual_seed(1))
    assert set(out) == {"loss", "spa", "fre", "con"}
    assert out["loss"].requires_grad and not any(out[k].requires_grad for k in ("spa", "fre", "con"))
    assert all(bool(torch.isfinite(v)) for v in out.values())
    weighted = out["spa"] + out["fre"] + out["con"]
    torch.testing.assert_close(out["loss"].detach(), weighted)
    out["loss"].backward()
    unused_stems = {m for m in IN_CHANS if m not in modalities}
    for key, param in pretrainer.named_parameters():
        unused = any(key.startswith((f"encoder.stems.{m}.", f"decoders.{m}.")) for m in unused_stems)
        if unused or not param.requires_grad:
            assert param.grad is None, key
            continue
        assert param.grad is not None, key
        assert bool(torch.isfinite(param.grad).all()), key


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (96, 40)])
def test_decoder_reconstructs_at_the_input_size(size: tuple[int, int]) -> None:
    encoder = rsvheat.create_model("vheat_test", in_chans=3)
    decoder = ReconstructionDecoder(encoder.feature_info, 3, skip_stages=(0, 1))
    features = encoder.forward_features(torch.randn(1, 3, *size))
    out = decoder(dict(enumerate(features)), size)
    assert out.shape == (1, 3, *size)


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    pretrainer = build_pretrainer("vheat_test", {"optical": 4}, **SMALL)
    batch = _batch(("optical",), size=(32, 32), batch=4)
    opt = torch.optim.AdamW(pretrainer.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(12):
        out = pretrainer(batch, generator=torch.Generator().manual_seed(0))  # the same views every step
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_invalid_pixels_do_not_affect_the_losses() -> None:
    torch.manual_seed(0)
    pretrainer = build_pretrainer("rsvheat_test", IN_CHANS, **SMALL).eval()
    batch = _batch(("optical", "sar"), size=(32, 48))
    gen = torch.Generator().manual_seed(5)
    valid = {"optical": torch.rand(2, 32, 48, generator=gen) > 0.1, "sar": torch.rand(2, 32, 48, generator=gen) > 0.1}
    spoiled = {m: torch.where(valid[m][:, None], x, torch.tensor(float("nan"))) for m, x in batch.items()}
    other = {m: torch.where(valid[m][:, None], x, torch.tensor(1e3)) for m, x in batch.items()}
    with torch.no_grad():
        outs = [pretrainer(b, valid, generator=torch.Generator().manual_seed(0)) for b in (batch, spoiled, other)]
        unmasked = pretrainer(batch, generator=torch.Generator().manual_seed(0))
    for out in outs[1:]:
        for key in ("loss", "spa", "fre", "con"):
            torch.testing.assert_close(out[key], outs[0][key])
    assert not torch.equal(unmasked["spa"], outs[0]["spa"])  # the mask does change what is counted


def test_cosine_mode_trains_the_predictor() -> None:
    pretrainer = build_pretrainer("heracles_test", {"optical": 4}, con_mode="cosine", **SMALL)
    assert pretrainer.predictor is not None
    out = pretrainer(_batch(("optical",)), generator=torch.Generator().manual_seed(0))
    assert 0.0 <= float(out["con"]) <= 2.0
    out["loss"].backward()
    assert all(p.grad is not None for p in pretrainer.predictor.parameters())
    assert build_pretrainer("heracles_test", {"optical": 4}, **SMALL).predictor is None


@pytest.mark.parametrize(
    "options",
    [
        {"fuse_at": (1, 2, 3, 4)},
        {"masking": {"num_bands": 3, "pad_mode": "reflect"}},
        {"masking": {"annulus": True, "radius_mode": "area"}},
        {"loss_weights": {"con": 0.0, "fre": 2.0}},
    ],
    ids=["fuse-all", "three-bands", "annulus", "weights"],
)
def test_configured_variants_run(options: dict) -> None:
    pretrainer = build_pretrainer("vheat_test", IN_CHANS, **SMALL, **options)
    out = pretrainer(_batch(("optical", "sar"), size=(36, 28)), generator=torch.Generator().manual_seed(0))
    w = pretrainer.loss_weights
    torch.testing.assert_close(
        out["loss"].detach(), w["spa"] * out["spa"] + w["fre"] * out["fre"] + w["con"] * out["con"]
    )
    out["loss"].backward()
    if "fuse_at" in options:
        assert set(pretrainer.fuse_frequency) == {"1", "2", "3", "4"}
        assert set(pretrainer.decoders["sar"].skips) == {"0", "1"}


def test_bf16_autocast_gives_finite_losses() -> None:
    pretrainer = build_pretrainer("vheat_test", {"optical": 4}, **SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pretrainer(_batch(("optical",), size=(32, 32)), generator=torch.Generator().manual_seed(0))
    assert all(bool(torch.isfinite(v)) for v in out.values())
    out["loss"].backward()


def test_config_round_trip() -> None:
    pretrainer = build_pretrainer(
        "heracles_test",
        IN_CHANS,
        backbone_kwargs={"img_size": 48},
        masking={"num_bands": 3},
        fuse_at=(2, 3, 4),
        **SMALL,
    )
    rebuilt = build_pretrainer_from_config(pretrainer.config)
    assert rebuilt.config == pretrainer.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in pretrainer.state_dict().items()
    }


def test_unknown_options_list_the_known_ones() -> None:
    with pytest.raises(UnknownOptionError, match=r"'rho'.*known masking options: annulus, area_max, area_min"):
        build_pretrainer("vheat_test", IN_CHANS, masking={"rho": 0.1})
    with pytest.raises(UnknownOptionError, match=r"'spatial'.*known loss_weights options: con, fre, spa"):
        build_pretrainer("vheat_test", IN_CHANS, loss_weights={"spatial": 1.0})
    with pytest.raises(UnknownOptionError, match=r"'width'.*known decoder options: fuse_dim, widths"):
        build_pretrainer("vheat_test", IN_CHANS, decoder={"width": 8})
    with pytest.raises(UnknownOptionError, match=r"'proj_dim'.*known projection options: dim, hidden"):
        build_pretrainer("vheat_test", IN_CHANS, projection={"proj_dim": 8})
    with pytest.raises(
        UnknownOptionError, match=r"'imgsize'.*known backbone_kwargs of 'vheat_test' options: .*img_size"
    ):
        build_pretrainer("vheat_test", IN_CHANS, backbone_kwargs={"imgsize": 64})
    with pytest.raises(UnknownOptionError, match=r"'epochs'.*known pretrainer options: backbone"):
        build_pretrainer_from_config({"backbone": "vheat_test", "in_chans": IN_CHANS, "epochs": 3})
    with pytest.raises(ValueError, match=r"Unknown model 'vheat_huge'; registered models: .*vheat_test"):
        build_pretrainer("vheat_huge", IN_CHANS)


def test_bad_arguments_and_batches_are_explained() -> None:
    with pytest.raises(ValueError, match=r"must include the last two stages"):
        build_pretrainer("vheat_test", IN_CHANS, fuse_at=(2, 4))
    with pytest.raises(ValueError, match=r"needs an image backbone with one stem per modality"):
        build_pretrainer("heracles_ts_test", {"optical": 4})
    with pytest.raises(ValueError, match=r"has no dense `feature_info`"):
        FrequencyPretrainer(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"con_mode='simclr'"):
        build_pretrainer("vheat_test", IN_CHANS, con_mode="simclr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"in_chans must be a dict"):
        build_pretrainer("vheat_test", 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"loss_weights\['con'\] = -1"):
        build_pretrainer("vheat_test", IN_CHANS, loss_weights={"con": -1})
    pretrainer = build_pretrainer("vheat_test", IN_CHANS, **SMALL)
    with pytest.raises(ValueError, match=r"'lidar' has no stem; the encoder's modalities: \['optical', 'sar'\]"):
        pretrainer({"lidar": torch.randn(2, 1, 32, 32)})
    with pytest.raises(ValueError, match=r"different batch sizes \[2, 3\]"):
        pretrainer({"optical": torch.randn(2, 4, 32, 32), "sar": torch.randn(3, 2, 32, 32)})
    with pytest.raises(ValueError, match=r"expects 4 bands but the input has 3"):
        pretrainer({"optical": torch.randn(2, 3, 32, 32)})

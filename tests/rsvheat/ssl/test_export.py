"""Encoder export (docs/pretraining.md §3 export rule; test 7 of its "Tests" list) and transfer to other backbones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rsvheat
from rsvheat.layers.spectral_mixer import resize_spectral_weight
from rsvheat.models.vheat import resize_embeddings
from rsvheat.ssl import build_pretrainer, export_encoder, load_encoder_weights
from tests.rsvheat.heads._backbones import image_test_backbones

BACKBONES = image_test_backbones()
IN_CHANS = {"optical": 4, "sar": 2}
BANDS = {"optical": ["B02", "B03", "B04", "B08"], "sar": ["VV", "VH"]}
STATS = {
    "stats_hash": "0f1e2d",
    "optical": {"mean": [0.1, 0.2, 0.3, 0.4], "std": [1.0, 1.0, 1.0, 1.0]},
    "sar": {"mean": [-12.0, -19.0], "std": [3.0, 3.5]},
}
LINEAGE = {"datasets": ["s3://bucket/s2/v3"], "dataset_versions": ["v3"], "chips_seen": 1024}


def _trained_pretrainer(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    pretrainer = build_pretrainer(name, IN_CHANS, decoder={"fuse_dim": 16, "widths": (16, 8, 8, 8)})
    opt = torch.optim.SGD(pretrainer.parameters(), lr=0.1)
    batch = {"optical": torch.randn(2, 4, 32, 32), "sar": torch.randn(2, 2, 32, 32)}
    pretrainer(batch, generator=torch.Generator().manual_seed(0))["loss"].backward()
    opt.step()  # weights that differ from any fresh initialisation
    return pretrainer


@pytest.mark.parametrize("name", BACKBONES)
def test_export_holds_only_the_encoder_and_loads_without_flags(name: str, tmp_path: Path) -> None:
    pretrainer = _trained_pretrainer(name)
    path = tmp_path / "out" / "encoder.pt"
    export_encoder(pretrainer, path, bands=BANDS, stats=STATS, lineage=LINEAGE, step=1)
    payload = torch.load(path, weights_only=True)
    keys = set(payload["state_dict"])
    assert keys == set(pretrainer.encoder.state_dict())
    assert not any(k.startswith(("encoder.", "fuse_frequency", "decoders", "proj", "predictor")) for k in keys)
    encoder, meta = rsvheat.load_checkpoint(path)
    assert type(encoder) is type(pretrainer.encoder)
    assert (meta["model"], meta["in_chans"], meta["bands"], meta["stats_hash"]) == (name, IN_CHANS, BANDS, "0f1e2d")
    assert meta["extra"]["lineage"] == LINEAGE and meta["step"] == 1
    assert meta["extra"]["pretraining"]["masking"]["radius_mode"] == "diag"
    pretrainer.encoder.eval()
    x = torch.randn(1, 2, 40, 24)
    with torch.no_grad():
        for a, b in zip(encoder.forward_features(x, "sar"), pretrainer.encoder.forward_features(x, "sar"), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", BACKBONES)
def test_export_loads_into_other_stems_and_another_image_size(name: str, tmp_path: Path) -> None:
    pretrainer = _trained_pretrainer(name)
    path = tmp_path / "encoder.pt"
    export_encoder(pretrainer, path, bands=BANDS)
    source = pretrainer.encoder.state_dict()
    torch.manual_seed(1)
    target = rsvheat.build_task_model(
        "segmentation", name, num_classes=3, backbone_kwargs={"in_chans": {"optical": 4, "rgb": 3}, "img_size": 96}
    )
    report = load_encoder_weights(target, path)
    assert report.new_stems == ["rgb"] and report.skipped_stems == ["sar"]
    assert report.resized, "the size-bound parameters (FVE/SCE or spectral weights) must be resized 64 -> 96"
    loaded = target.encoder.state_dict()
    for key in report.loaded:
        if key in report.resized:
            assert loaded[key].shape != source[key].shape
        else:
            torch.testing.assert_close(loaded[key], source[key], rtol=0, atol=0)
    assert not any(k.startswith("stems.sar.") for k in loaded)
    assert all(k in report.loaded for k in loaded if k.startswith("stems.optical."))
    for key in report.resized:
        owner = target.encoder.get_submodule(key.rpartition(".")[0])
        if key.endswith((".fve", ".sce")):
            expected = resize_embeddings({key: source[key]}, (96, 96), mode=owner.fve_interp)[key]
        else:
            expected = resize_spectral_weight(source[key], tuple(loaded[key].shape[1:]), owner.transform)
        torch.testing.assert_close(loaded[key], expected)
    logits = target(torch.randn(1, 3, 96, 80), modality="rgb")
    assert logits.shape == (1, 3, 96, 80) and bool(torch.isfinite(logits).all())


def test_transfer_refuses_another_architecture(tmp_path: Path) -> None:
    pretrainer = _trained_pretrainer("vheat_test")
    export_encoder(pretrainer, tmp_path / "encoder.pt", bands=BANDS)
    other = rsvheat.create_model("vheat_test", in_chans=IN_CHANS, depths=(1, 1, 2, 1))
    with pytest.raises(ValueError, match=r"lacks 1[0-9] trunk tensors"):
        load_encoder_weights(other, tmp_path / "encoder.pt")
    wider = rsvheat.create_model("vheat_test", in_chans=IN_CHANS, embed_dim=32)
    with pytest.raises(ValueError, match=r"is not a size-bound parameter"):
        load_encoder_weights(wider, tmp_path / "encoder.pt")


def test_export_checks_bands_against_the_stems(tmp_path: Path) -> None:
    pretrainer = _trained_pretrainer("vheat_test")
    with pytest.raises(ValueError, match=r"lists 3 bands"):
        export_encoder(pretrainer, tmp_path / "encoder.pt", bands={"optical": ["B02", "B03", "B04"]})

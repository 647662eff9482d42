"""Self-describing checkpoints: round trips, weights_only loading, band/stats validation and stats checks."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import rsvheat
from rsvheat.checkpoint import check_stats, load_checkpoint, load_checkpoint_meta, save_checkpoint
from rsvheat.errors import StatsMismatchError
from rsvheat.heads import DetectionOutput
from rsvheat.tasks import TASKS, build_task_model
from tests.rsvheat.heads._backbones import image_test_backbones, task_test_backbone
from tests.rsvheat.heads._backbones import single_torch_thread as single_torch_thread  # autouse

BACKBONES = image_test_backbones()
TASK_BACKBONE = task_test_backbone()
IN_CHANS = {"optical": 4, "sar": 2}
BANDS = {"optical": ["B02", "B03", "B04", "B08"], "sar": ["VV", "VH"]}
STATS = {
    "stats_hash": "a1b2c3",
    "stats_version": "2",
    "optical": {"mean": [0.1, 0.2, 0.3, 0.4], "std": [0.5, 0.5, 0.6, 0.7]},
    "sar": {"mean": [-12.0, -19.0], "std": [3.0, 3.5]},
}


def _outputs(model: torch.nn.Module, *inputs: torch.Tensor, **kwargs: object) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*inputs, **kwargs)
    if isinstance(out, DetectionOutput):
        return [*out.cls_logits, *out.box_reg, *out.centerness]
    return list(out) if isinstance(out, list) else [out]


@pytest.mark.parametrize("name", BACKBONES)
def test_bare_backbone_round_trip_two_modalities(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = rsvheat.create_model(name, in_chans=IN_CHANS).eval()
    path = save_checkpoint(
        tmp_path / "ckpt" / "model.pt",
        model,
        bands=BANDS,
        stats=STATS,
        dataset_version="v3",
        epoch=4,
        step=1000,
        metrics={"val_loss": np.float64(0.25)},  # numpy scalars are stored as plain floats
        extra={"lr": 1e-3, "schedule": ("cosine", 10)},
    )
    loaded, meta = load_checkpoint(path)
    assert type(loaded) is type(model) and not loaded.training
    for modality, bands in IN_CHANS.items():
        x = torch.randn(2, bands, 40, 56)
        expected = _outputs(model.forward_features, x, modality=modality)
        for a, b in zip(expected, _outputs(loaded.forward_features, x, modality=modality), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert meta["model"] == name
    assert meta["model_kwargs"] == {"in_chans": IN_CHANS}
    assert meta["task"] is None
    assert meta["in_chans"] == IN_CHANS
    assert meta["bands"] == BANDS
    assert meta["stats"] == {m: STATS[m] for m in IN_CHANS}
    assert (meta["stats_hash"], meta["stats_version"], meta["dataset_version"]) == ("a1b2c3", "2", "v3")
    assert (meta["epoch"], meta["step"], meta["metrics"]) == (4, 1000, {"val_loss": 0.25})
    assert type(meta["metrics"]["val_loss"]) is float
    assert meta["extra"] == {"lr": 1e-3, "schedule": ("cosine", 10)}
    assert meta["pretrain_img_size"] == list(model.img_size)
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["git_sha"] is None or len(meta["git_sha"]) == 40
    # HCO backbones: FVE (and SCE) shapes are recorded (docs/hco.md §Resolution changes)
    if name.startswith(("vheat", "rsvheat")):
        assert meta["fve_sce_shapes"]["stages.0.fve"] == list(model.stages[0].fve.shape)
    assert load_checkpoint_meta(path) == meta


@pytest.mark.parametrize("task", TASKS)
def test_task_model_round_trip(task: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    head_kwargs = {} if task in ("classification", "multilabel") else {"channels": 16}
    model = build_task_model(task, TASK_BACKBONE, None if task == "change" else 3, {"in_chans": 3}, **head_kwargs)
    # Perturb every weight so a head that was silently re-initialised on load would not match.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    path = save_checkpoint(tmp_path / f"{task}.pt", model, bands=["B04", "B03", "B02"], epoch=1)
    loaded, meta = load_checkpoint(path)
    assert type(loaded) is type(model)
    assert meta["task"] == {"task": task, "num_classes": model.num_classes, "head_kwargs": head_kwargs}
    assert meta["bands"] == {model.encoder.default_modality: ["B04", "B03", "B02"]}
    assert meta["stats_hash"] is None
    x = torch.randn(2, 3, 40, 56)
    inputs = (x, x.flip(-1)) if task == "change" else (x,)
    for a, b in zip(_outputs(model, *inputs), _outputs(loaded, *inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Payload:
    """Unpickling this runs ``Path.touch`` on the marker: code that a weights_only load must never execute."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    model = rsvheat.create_model(TASK_BACKBONE)
    path = save_checkpoint(tmp_path / "ok.pt", model)
    payload = torch.load(path, weights_only=True)
    marker = tmp_path / "executed"
    payload["meta"]["extra"] = {"evil": _Payload(marker)}
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_save_refuses_objects_that_would_not_load_back(tmp_path: Path) -> None:
    model = rsvheat.create_model(TASK_BACKBONE)
    with pytest.raises(TypeError, match=r"meta\['extra'\]\['when'\]"):
        save_checkpoint(tmp_path / "x.pt", model, extra={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic_and_overwrites(tmp_path: Path) -> None:
    model = rsvheat.create_model(TASK_BACKBONE)
    save_checkpoint(tmp_path / "m.pt", model, epoch=1)
    save_checkpoint(tmp_path / "m.pt", model, epoch=2)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind
    assert load_checkpoint_meta(tmp_path / "m.pt")["epoch"] == 2


@pytest.mark.parametrize(
    ("bands", "stats", "match"),
    [
        ({"optical": ["B02", "B03", "B04"], "sar": ["VV", "VH"]}, None, r"lists 3 bands .* takes 4"),
        ({"optical": ["B02", "B03", "B04", "B08"], "radar": ["VV", "VH"]}, None, "modality 'radar'"),
        ({"optical": ["B02", "B02", "B04", "B08"]}, None, "repeats"),
        (["B02", "B03", "B04", "B08"], None, "must be a dict"),
        (None, {**STATS, "sar": {"mean": [0.0], "std": [1.0]}}, r"\['mean'\] has 1 values"),
        (None, {k: v for k, v in STATS.items() if k != "stats_hash"}, "no 'stats_hash'"),
        (None, {**STATS, "sar": {"mean": [0.0, 0.0], "std": [1.0, 0.0]}}, "std > 0"),
    ],
)
def test_save_validates_bands_and_stats(bands: object, stats: object, match: str, tmp_path: Path) -> None:
    model = rsvheat.create_model(TASK_BACKBONE, in_chans=IN_CHANS)
    with pytest.raises(ValueError, match=match):
        save_checkpoint(tmp_path / "x.pt", model, bands=bands, stats=stats)  # type: ignore[arg-type]
    assert not (tmp_path / "x.pt").exists()


def test_save_needs_a_registry_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="create_model"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2))


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an rsvheat checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_check_stats(tmp_path: Path) -> None:
    model = rsvheat.create_model(TASK_BACKBONE, in_chans=IN_CHANS)
    meta = load_checkpoint_meta(save_checkpoint(tmp_path / "m.pt", model, stats=STATS, dataset_version="v3"))
    check_stats(meta, "a1b2c3")  # same stats: no error
    with pytest.raises(
        StatsMismatchError, match=r"'a1b2c3'.*'v3'.*!= dataset 'v4' stats 'ffff00'.*jobs/stats.py"
    ) as info:
        check_stats(meta, "ffff00", dataset_version="v4")
    assert isinstance(info.value, ValueError)
    assert (info.value.checkpoint_hash, info.value.dataset_hash) == ("a1b2c3", "ffff00")
    with pytest.raises(StatsMismatchError, match="no stats_hash"):
        check_stats(meta, None)
    bare = load_checkpoint_meta(save_checkpoint(tmp_path / "bare.pt", model))
    with pytest.raises(StatsMismatchError, match="records no stats_hash"):
        check_stats(bare, "a1b2c3")


def test_fine_tune_from_a_pretrained_backbone_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pretrained = rsvheat.create_model(TASK_BACKBONE, in_chans=IN_CHANS)
    path = save_checkpoint(tmp_path / "encoder.pt", pretrained, bands=BANDS, stats=STATS)
    encoder, meta = load_checkpoint(path)
    check_stats(meta, STATS["stats_hash"])
    model = build_task_model("segmentation", encoder, 5, channels=16)
    assert all(m.training for m in model.modules())
    for key, value in pretrained.state_dict().items():
        if key in model.encoder.state_dict():  # the classifier is dropped; every other encoder weight is kept
            assert torch.equal(model.encoder.state_dict()[key], value), key
    # The fine-tuned model's own checkpoint still rebuilds from the registry name and kwargs alone.
    reloaded, task_meta = load_checkpoint(save_checkpoint(tmp_path / "seg.pt", model.eval(), bands=meta["bands"]))
    x = torch.randn(1, 2, 32, 40)
    torch.testing.assert_close(_outputs(model, x, modality="sar"), _outputs(reloaded, x, modality="sar"))
    assert task_meta["model_kwargs"] == {"in_chans": IN_CHANS} and task_meta["bands"] == BANDS
    with pytest.raises(ValueError, match="already built"):
        build_task_model("segmentation", encoder, 5, {"in_chans": 3})

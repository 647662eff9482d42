"""The layer-divergence tool: metrics against hand-computed values, the noise-floor rule, outputs and the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import rsvheat
from rsvheat.divergence import (
    CSV_COLUMNS,
    analyze_layer_divergence,
    fd_bins,
    gaussian_kl,
    histogram_divergences,
    main,
    paired_distances,
)


def test_metrics_match_hand_computed_values() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([1.0, 2.0, 3.0, 5.0])
    # mean 2.5 / 2.75, population variance 1.25 / 2.1875:
    # KL = ln(sqrt(2.1875 / 1.25)) + (1.25 + 0.25**2) / (2 * 2.1875) - 0.5 = 0.5 ln 1.75 - 0.2
    assert gaussian_kl(a, b) == pytest.approx(0.5 * math.log(1.75) - 0.2, abs=1e-12)
    # a + b sorted [1 1 2 2 3 3 4 5]: IQR = 3.25 - 1.75 = 1.5, h = 2 * 1.5 * 4**(-1/3) = 1.89, ceil(4 / h) = 3 -> 5.
    # Edges 1, 1.8, 2.6, 3.4, 4.2, 5: counts a [1 1 1 1 0], b [1 1 1 0 1].
    kl, js, bins = histogram_divergences(a, b)
    assert bins == 5
    eps = 1e-10
    full, empty = (1 + eps) / (4 + 5 * eps), eps / (4 + 5 * eps)  # a bin with one value, and an empty one
    # Only bins 4 and 5 differ: full·ln(full/empty) + empty·ln(empty/full)
    assert kl == pytest.approx((full - empty) * math.log(full / empty), rel=1e-9)
    assert kl == pytest.approx(0.25 * 10 * math.log(10), rel=1e-6)  # ≈ 0.25·ln(1/ε) = 5.76: the ε pitfall
    assert js == pytest.approx(0.25 * math.log(2), rel=1e-6)  # m = [.25 .25 .25 .125 .125]
    rel, cos = paired_distances(a, b)
    assert rel == pytest.approx(1 / math.sqrt(30))
    assert cos == pytest.approx(1 - 34 / math.sqrt(30 * 39))


def test_gaussian_kl_closed_form_and_bounds() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, 1_000_000)
    b = rng.normal(0.5, 2.0, 1_000_000)
    assert gaussian_kl(a, b) == pytest.approx(math.log(2) + (1 + 0.25) / 8 - 0.5, abs=5e-3)  # 0.349
    assert abs(gaussian_kl(a, b) - 0.349) <= 5e-3
    far = rng.uniform(100, 101, 1000)
    _, js, _ = histogram_divergences(rng.uniform(0, 1, 1000), far)  # disjoint supports: JS -> ln 2 from below
    assert 0.69 < js <= math.log(2)
    assert fd_bins(rng.normal(size=64), rng.normal(size=64)) < 100
    assert math.isnan(gaussian_kl(np.ones(10), rng.normal(size=10)))


def _task_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = rsvheat.build_task_model("segmentation", "rsvheat_test", 3, {"in_chans": {"optical": 4}, "img_size": 32})
    return model.state_dict()


def test_identical_checkpoints_give_zero(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = rsvheat.build_task_model("segmentation", "rsvheat_test", 3, {"in_chans": {"optical": 4}, "img_size": 32})
    path = tmp_path / "model.pt"
    rsvheat.save_checkpoint(path, model)
    report = analyze_layer_divergence(path, model.state_dict(), out=tmp_path / "div")
    for row in report.layers:
        assert row.kl_hist <= 1e-9 and row.js <= 1e-9
        assert row.rel_l2 == 0 and row.cos_dist == pytest.approx(0, abs=1e-12)
        assert row.kl_gauss == pytest.approx(0, abs=1e-12) or math.isnan(row.kl_gauss)
        assert row.reliable == (row.n_params >= 1000)
    groups = {r.group for r in report.layers}
    assert groups == {"encoder", "decoder", "head"}
    by_layer = {r.layer: r for r in report.layers}
    assert by_layer["encoder.stems.optical.conv1.weight"].stage == "stem"
    assert by_layer["encoder.stages.2.fve"].stage == "2"  # FVE/SCE are rows of their own
    assert by_layer["encoder.downsamples.0.0.weight"].stage == "1"
    assert by_layer["head.classifier.weight"].group == "head" and not by_layer["head.classifier.weight"].reliable
    assert "encoder.stems.optical.conv1.bias" in report.skipped  # 1-D: only with include_1d
    assert any(not r.reliable for r in report.layers) and any(r.reliable for r in report.layers)
    with open(tmp_path / "div" / "divergence.csv") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        assert len(list(reader)) == len(report.layers)
    summary = json.loads((tmp_path / "div" / "divergence.json").read_text())
    assert set(summary["group_means"]) == groups and summary["suggest_freeze"] == []
    with_1d = analyze_layer_divergence(model.state_dict(), model.state_dict(), include_1d=True)
    assert len(with_1d.layers) > len(report.layers)


def _synthetic(base: dict[str, torch.Tensor], scale: dict[str, float], sigma: float, seed: int
               ) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + sigma * scale.get(k, 1.0) * torch.randn(v.shape, generator=gen) for k, v in base.items()}


def test_noise_floor_verdicts_and_suggest_freeze(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    base = {name: torch.randn(64, 32, generator=gen) for name in (
        "encoder.stems.optical.conv.weight", "encoder.stages.0.mix.weight", "encoder.stages.1.mix.weight",
        "encoder.stages.2.mix.weight", "head.decoder.fuse.weight", "head.classifier.weight")}
    sigma = 0.01
    seeds = [_synthetic(base, {}, sigma, s) for s in (1, 2, 3)]  # reference runs: seed-level perturbations
    reference = seeds[0]
    # B: stem, stage 0 and stage 2 move like another seed; stage 1 and the decoder move 10x that.
    moved = {"encoder.stages.1.mix.weight": 10.0, "head.decoder.fuse.weight": 10.0}
    other = _synthetic(base, moved, sigma, 7)
    report = analyze_layer_divergence(reference, other, floor=seeds, out=tmp_path)
    verdict = {r.layer: r.verdict for r in report.layers}
    assert verdict == {
        "encoder.stems.optical.conv.weight": "robust", "encoder.stages.0.mix.weight": "robust",
        "encoder.stages.1.mix.weight": "sensitive", "encoder.stages.2.mix.weight": "robust",
        "head.decoder.fuse.weight": "sensitive", "head.classifier.weight": "robust",
    }
    assert report.suggest_freeze == ["stem", "0"]  # the prefix stops at the first sensitive stage
    assert report.floor_pairs == 3
    ratios = {r.layer: r.ratio for r in report.layers}
    assert ratios["encoder.stages.1.mix.weight"] > 5 and ratios["encoder.stages.0.mix.weight"] < 1.25
    # the group means are weighted by parameter count: equal sizes here, so the plain mean of the two layers
    dec = [r.rel_l2 for r in report.layers if r.group == "decoder"]
    assert report.group_means["decoder"]["rel_l2"] == pytest.approx(np.mean(dec))
    from PIL import Image

    image = np.asarray(Image.open(tmp_path / "divergence.png").convert("RGB"))
    assert (image == (215, 215, 215)).all(axis=-1).sum() > 100  # the floor band
    assert (image == (31, 119, 180)).all(axis=-1).sum() > 20  # the encoder line


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for seed in range(3):
        torch.save(_task_state(0) if seed == 0 else _synthetic(_task_state(0), {}, 1e-3, seed), tmp_path / f"{seed}.pt")
        paths.append(str(tmp_path / f"{seed}.pt"))
    assert main([paths[0], paths[1], "--floor", paths[1], paths[2], "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "suggest_freeze" in out and (tmp_path / "out" / "divergence.csv").exists()
    torch.save({"not": "weights"}, tmp_path / "bad.pt")
    assert main([paths[0], str(tmp_path / "bad.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "holds no state dict" in capsys.readouterr().err

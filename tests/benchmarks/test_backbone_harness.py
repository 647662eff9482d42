"""The backbone and HCO-operator benchmark harnesses: bookkeeping, prediction, reports, correctness (never timings).

Runs in the project venv (no timm needed): timm is only imported when a timm model is built.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.fft
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import _common  # noqa: E402
import backbone  # noqa: E402
import hco_operator  # noqa: E402


# --- _common --------------------------------------------------------------------------------------------------------
def test_replace_section_appends_then_replaces_only_its_own_section() -> None:
    doc = _common.replace_section("", "backbone", "first")
    assert doc.startswith("# Benchmark results")
    doc = _common.replace_section(doc, "ingest", "ingest numbers")
    doc = _common.replace_section(doc, "backbone", "second")
    assert "first" not in doc
    assert "<!-- backbone:start -->\nsecond\n<!-- backbone:end -->" in doc
    assert "<!-- ingest:start -->\ningest numbers\n<!-- ingest:end -->" in doc
    assert doc.index("backbone:start") < doc.index("ingest:start")  # replaced in place, not moved


def test_replace_section_rejects_broken_markers() -> None:
    with pytest.raises(ValueError, match="1 start and 0 end markers"):
        _common.replace_section("<!-- backbone:start -->\nold\n", "backbone", "new")


def test_write_results_section_keeps_foreign_text(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n<!-- ingest:start -->\nkeep me\n<!-- ingest:end -->\n")
    _common.write_results_section("backbone", "table", path)
    text = path.read_text()
    assert "keep me" in text and "<!-- backbone:start -->\ntable\n<!-- backbone:end -->" in text


def test_time_repeats_respects_repeat_bounds() -> None:
    calls: list[int] = []
    out = _common.time_repeats(lambda: calls.append(1), min_repeats=2, max_repeats=5, budget_s=0.0)
    assert out["repeats"] == 2 == len(calls)
    out = _common.time_repeats(lambda: None, min_repeats=1, max_repeats=4, budget_s=1e9)
    assert out["repeats"] == 4 and len(out["cpu_times_s"]) == 4
    with pytest.raises(ValueError, match="min_repeats"):
        _common.time_repeats(lambda: None, min_repeats=3, max_repeats=2, budget_s=1.0)


def test_run_header_and_json(tmp_path: Path) -> None:
    record = _common.run_header(["benchmarks/x.py", "--quick"])
    assert (
        record["machine"]["cpu_count"] >= 1
        and record["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    )
    path = _common.write_json({**record, "results": [1]}, "unit", out_dir=tmp_path)
    assert path.name.startswith("unit-") and json.loads(path.read_text())["results"] == [1]


def test_peak_rss_reset_tracks_a_new_allocation() -> None:
    if not _common.reset_peak_rss():
        pytest.skip("this kernel does not allow resetting VmHWM")
    base = _common.read_rss_bytes()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    peak = _common.read_peak_rss_bytes()
    del block
    assert peak - base >= 60 * 2**20


# --- backbone.py ----------------------------------------------------------------------------------------------------
def _config(model: str, size: int = 512, dtype: str = "fp32", ckpt: backbone.Ckpt = False, **kw: Any) -> backbone.Config:
    return backbone.Config(model, size, 1, dtype, "train", ckpt, threads=1, **kw)  # type: ignore[arg-type]


def test_groups_run_every_model_of_a_size_dtype_and_ckpt_back_to_back() -> None:
    args = backbone.parse_args(["--sizes", "1024", "512", "--dtypes", "fp32", "bf16", "--ckpt", "off", "on"])
    assert backbone.groups(args)[:3] == [(512, "fp32", False), (512, "fp32", True), (512, "bf16", False)]
    assert len(backbone.groups(args)) == 8 and args.mode == "train" and args.batch == 1
    assert backbone.groups(backbone.parse_args(["--sizes", "512", "--dtypes", "bf16", "--ckpt", "mlp", "on"])) == [
        (512, "bf16", "mlp"), (512, "bf16", True)]


def test_rows_report_memory_and_wall_speed_ratios_and_baseline_ooms(tmp_path: Path) -> None:
    def ok(model: str, mem: float, ips: float, ckpt: backbone.Ckpt = False) -> backbone.Outcome:
        result = {"params": 1, "images_per_s": ips, "median_s": 1 / ips, "peak_mem_mb": mem, "cpu_util": 1.0}
        return backbone.Outcome(_config(model, ckpt=ckpt), "ok", result=result)

    outcomes = [
        ok("vheat_base", 50.0, 3.0),
        ok(backbone.SWIN, 100.0, 1.0),
        ok(backbone.VIT, 25.0, 6.0),
        ok("vheat_base", 40.0, 2.0, ckpt=True),
        backbone.Outcome(_config(backbone.SWIN, ckpt=True), "oom", reason="OOM > 6 GiB"),
        ok("vheat_base", 45.0, 2.5, ckpt="mlp"),
    ]
    rows = backbone.rows(outcomes, {"vheat_base@512": 2e9})
    assert rows[0]["mem_vs_swin"] == 0.5 and rows[0]["speed_vs_swin"] == 3.0 and rows[0]["gflops"] == 2.0
    assert rows[0]["mem_vs_vit"] == 2.0 and rows[0]["speed_vs_vit"] == 0.5
    assert "mem_vs_swin" not in rows[1]  # a baseline is not compared with itself
    assert rows[3]["vs_swin"] == "swin oom" and "mem_vs_vit" not in rows[3]  # no ViT row in that group
    assert rows[5]["mem_vs_swin"] == 0.45 and rows[5]["speed_vs_vit"] == 2.5 / 6.0  # "mlp" is ours: vs ckpt off
    record = {
        "command": "python benchmarks/backbone.py",
        "date_utc": "2026-12-02T00:00:00+00:00",
        "machine": {"cpu_model": "cpu", "cpu_count": 2, "ram_gib": 24},
        "versions": {"torch": "2", "timm": "1"},
        "settings": {"mode": "train", "threads": 2, "batch": 1, "steps": 1, "mem_cap_gb": 6.0},
        "load_start": {"1m": 0.1},
        "load_end": {"1m": 0.2},
        "wall_min": 1.0,
        "rows": rows,
        "outcomes": [{"config": dataclasses.asdict(o.config), "result": o.result} for o in outcomes],
    }
    text = backbone.markdown(record, "backbone-train-x.json")
    assert "JSON `benchmarks/out/backbone-train-x.json`" in text
    assert "| 512 | fp32 | off | `vheat_base` | 2 | 0.33 | 3 | 50 | None | 0.50 / 3.00× | 2.00 / 0.50× |" in text
    assert "| 512 | fp32 | on | Swin-B (timm, w8) | – | oom: OOM > 6 GiB |" in text
    assert "| 512 | fp32 | mlp | `vheat_base` |" in text and "glibc malloc with its default settings" in text
    record["settings"]["malloc_mmap_threshold"] = 1048576
    assert "`MALLOC_MMAP_THRESHOLD_=1048576` in every child alike" in backbone.markdown(record, "x.json")
    del record["settings"]["malloc_mmap_threshold"]
    saved = tmp_path / "backbone-train-x.json"
    saved.write_text(json.dumps(record))
    results = backbone.render(saved, "backbone-train-512", tmp_path / "RESULTS.md")
    assert f"<!-- backbone-train-512:start -->\n{text}\n<!-- backbone-train-512:end -->" in results.read_text()


def test_child_measures_a_training_step_and_reports_oom_under_its_address_space_cap() -> None:
    config = _config("vheat_test", size=64, ckpt=True, steps=1, mem_cap_gb=2.0)
    outcome = backbone.run_config(config, timeout_s=300)
    assert outcome.status == "ok", outcome.reason
    result = outcome.result
    # Weights and gradients alone are 2 × weights_mb: the figure counts everything after the imports.
    assert result["peak_mem_mb"] >= 2 * result["weights_mb"] and result["images_per_s"] > 0
    assert result["peak_method"] == "VmHWM reset after imports"
    big = _config("vheat_test", size=4096, steps=1, mem_cap_gb=0.5)
    assert backbone.run_config(big, timeout_s=300).status == "oom"


def test_meta_flop_count_matches_the_vheat_spec() -> None:
    """docs/hco.md §Reference numbers: vHeat-B at 224 is 16.10 GMAC in training mode and 14.87 GMAC in inference
    mode."""
    fused = backbone.count_flops_meta("vheat_base", 224)
    unfused = backbone.count_flops_meta("vheat_base", 224, fused=False)
    assert fused["flops"] / 2e9 == pytest.approx(14.87, rel=5e-3)
    assert unfused["flops"] / 2e9 == pytest.approx(16.10, rel=5e-3)


# --- hco_operator.py ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 56, 57])
def test_candidate_rfft_dct_matches_scipy_and_inverts(n: int) -> None:
    x = torch.randn(2, n, 3, 4, dtype=torch.float64)  # (B, H, W, C), transform along H
    got = hco_operator.makhoul_dct(x, 1)
    expected = scipy.fft.dct(x.numpy(), type=2, norm="ortho", axis=1)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    torch.testing.assert_close(hco_operator.makhoul_idct(got, 1), x, atol=1e-12, rtol=0)


def test_operator_bench_paths_agree() -> None:
    row = hco_operator.bench_size(12, channels=4, batch=1, budget_s=0.0, max_repeats=1)
    assert row["max_abs_diff"] <= 1e-5 and row["max_abs_diff_makhoul"] <= 1e-5
    assert {"matmul", "fft", "makhoul"} <= row.keys()


def test_recommend_threshold_needs_fft_to_win_from_the_crossover_on() -> None:
    rows = [{"size": s, "fft_speedup": v} for s, v in [(56, 0.2), (128, 1.1), (256, 0.9), (512, 1.5), (1024, 3.0)]]
    assert hco_operator.recommend_threshold(rows) == (512, 256)
    never = [{"size": 56, "fft_speedup": 0.1}, {"size": 1024, "fft_speedup": 0.5}]
    assert hco_operator.recommend_threshold(never) == (None, 1024)


def test_parse_model_spec() -> None:
    assert backbone.parse_model_spec("vheat_base") == ("vheat_base", {})
    assert backbone.parse_model_spec("vheat_base:hco_core_dtype=autocast,fft_threshold=256") == (
        "vheat_base",
        {"hco_core_dtype": "autocast", "fft_threshold": 256},
    )
    with pytest.raises(ValueError, match="expected 'name:key=value"):
        backbone.parse_model_spec("vheat_base:oops")

"""The backbone and HCO-operator benchmark harnesses: bookkeeping, prediction, reports, correctness (never timings).

Runs in the project venv (no timm needed): timm is only imported when a timm model is built.
"""

from __future__ import annotations

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
def test_schedule_puts_batch_one_everywhere_before_large_batches() -> None:
    pairs = backbone.schedule([1024, 224, 512, 2048], [1, 8])
    assert pairs[:4] == [(224, 1), (512, 1), (1024, 1), (2048, 1)]
    assert pairs[4:] == [(224, 8), (512, 2), (1024, 2), (2048, 2)]
    assert backbone.large_batch(8, 224) == 8 and backbone.large_batch(1, 512) == 1


def _outcome(model: str, size: int, batch: int, **result: Any) -> backbone.Outcome:
    config = backbone.Config(model, size, batch, "fp32", budget_s=1.0, max_repeats=1, threads=2)
    return backbone.Outcome(config, "ok", result=result)


def test_predict_extrapolates_time_by_flops_and_memory_by_growth() -> None:
    history = [
        _outcome("m", 224, 1, median_cpu_s=2.0, peak_mem_mb=100.0, flops_meta=10),
        _outcome("m", 512, 1, median_cpu_s=8.0, peak_mem_mb=400.0, flops_meta=40),
    ]
    guess = backbone.predict(history, "m", "fp32", 1024, 2, flops=160)
    assert guess is not None
    assert guess["forward_s"] == pytest.approx(8.0 * 4 * 2 / 2)  # CPU s × FLOPs ratio × batch ÷ threads
    # Memory grew ×4 for ×(512/224)² pixels: exponent < 1 is floored to linear.
    assert guess["mem_exponent"] == pytest.approx(max(1.0, np.log(4) / np.log((512 / 224) ** 2)))
    assert backbone.predict(history, "other", "fp32", 1024, 1, flops=None) is None


def test_rows_and_markdown_report_ratios_against_both_baselines() -> None:
    common = {"params": 10, "flops": 2e9, "images_per_s_best": 1.0, "cpu_util": 1.0}
    outcomes = [
        _outcome("vheat_base", 224, 1, peak_mem_mb=50.0, images_per_s=3.0, images_per_s_cpu=4.0, **common),
        _outcome(backbone.SWIN, 224, 1, peak_mem_mb=100.0, images_per_s=1.0, images_per_s_cpu=2.0, **common),
        _outcome(backbone.VIT, 224, 1, peak_mem_mb=25.0, images_per_s=6.0, images_per_s_cpu=8.0, **common),
        backbone.Outcome(backbone.Config("vheat_base", 2048, 1, "fp32", 1.0, 1, 2), "skipped", reason="too slow"),
    ]
    rows = backbone._rows(outcomes)
    assert rows[0]["mem_vs_swin"] == 0.5 and rows[0]["speed_vs_swin"] == 2.0 and rows[0]["speed_wall_vs_swin"] == 3.0
    assert rows[0]["mem_vs_vit"] == 2.0 and rows[0]["flops_vs_vit"] == 1.0
    assert "mem_vs_swin" not in rows[1]  # a baseline is not compared with itself
    record = {
        "command": "python benchmarks/backbone.py",
        "date_utc": "2026-11-23T00:00:00+00:00",
        "machine": {"cpu_model": "cpu", "cpu_count": 2, "ram_gib": 24, "cpu_isa": ["avx2"]},
        "versions": {"torch": "2", "timm": "1"},
        "settings": {"dtypes": ["fp32"], "threads": 2},
        "load_start": {"1m": 0.1},
        "load_end": {"1m": 0.2},
        "wall_min": 1.0,
        "rows": rows,
        "outcomes": [{"result": o.result} for o in outcomes],
        "static": {"vheat_base@224": {"flops": 2e9, "flops_unfused": 3e9}},
    }
    text = backbone.markdown(record)
    assert "| 224 | 1 | `vheat_base` | 0.00 | 2.0 | 3 | 4 | 50 | 0.50 / 1.00 / 2.00× (3.00×) |" in text
    assert "skipped: too slow" in text and "1.50 GMAC unfused" in text


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

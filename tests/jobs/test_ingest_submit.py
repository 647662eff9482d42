"""`ray job submit --working-dir . -- python jobs/ingest.py ...` against a real token-authenticated Ray head.

Marked ``cluster`` (its own pytest invocation); reuses the head fixture of ``test_submit_cluster.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.jobs.test_submit_cluster import RayHead, ray_head  # noqa: F401 - the fixture is used by name

pytestmark = pytest.mark.cluster


def test_ingest_via_job_submit(ray_head: RayHead, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    result = ray_head.submit(
        "python", "jobs/ingest.py", "--catalog", "tests/data/synthetic/items-fc.json", "--output", str(out),
        "--chip-size", "64", "--workers", "1", "--no-progress",
        submission_id=f"ingest-test-{tmp_path.name}"[:60], timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "exit status 0" in result.stdout
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["counts"]["items_failed"] == 0 and meta["counts"]["chips_written"] > 0
    assert pq.read_table(out / "index.parquet").num_rows >= meta["counts"]["chips_written"]

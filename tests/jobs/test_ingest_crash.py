"""Crash safety: SIGKILL the ingest driver after its first commit, re-run, and get exactly the chips of a clean run.

The job runs as a real subprocess (``python jobs/ingest.py``) joined to the session's Ray cluster through
``RAY_ADDRESS``; killing the driver also kills the actors it owns, possibly mid-write. Items are large enough
(1024 px, 256 chips each) that the kill lands mid-run; the test checks that it did.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import rasterio
from affine import Affine

from jobs.ingest import EXIT_OK, main
from tests.conftest import REPO_ROOT
from tests.data.synthetic.data import S1_RTC

N_ITEMS = 6
SIZE = 1024


def _big_catalog(tmp_path: Path) -> Path:
    """N S1 RTC items (distinct ids) sharing one pair of 1024 x 1024 float32 COGs."""
    base = json.loads(S1_RTC.read_text())
    transform = Affine(*base["properties"]["proj:transform"][:6])
    rng = np.random.default_rng(0)
    for key in ("vv", "vh"):
        profile = {"driver": "COG", "width": SIZE, "height": SIZE, "count": 1, "dtype": "float32", "crs": "EPSG:32633",
                   "transform": transform, "nodata": -32768.0, "blocksize": 256, "compress": "DEFLATE"}
        with rasterio.open(tmp_path / f"{key}.tif", "w", **profile) as dst:
            dst.write(rng.gamma(2.0, 0.05, (SIZE, SIZE)).astype(np.float32), 1)
    items = []
    for n in range(N_ITEMS):
        item = copy.deepcopy(base)
        item["id"] = f"{base['id']}-{n:02d}"
        item["properties"]["proj:shape"] = [SIZE, SIZE]
        for key in ("vv", "vh"):
            item["assets"][key]["href"] = str(tmp_path / f"{key}.tif")
        items.append(item)
    path = tmp_path / "items.json"
    path.write_text(json.dumps(items))
    return path


def _chips(out: Path) -> list[tuple[Any, ...]]:
    table = pq.read_table(out / "index.parquet")
    columns = ["chip_id", "status", "checksum", "shard_path", "row_group", "row_index"]
    return sorted(zip(*(table[c].to_pylist() for c in columns), strict=True))


def test_sigkill_mid_run_then_rerun_gives_clean_result(ray_local: Any, tmp_path: Path) -> None:
    catalog = _big_catalog(tmp_path)
    args = ["--catalog", str(catalog), "--chip-size", "64", "--workers", "1", "--no-progress"]

    crashed = tmp_path / "crashed"
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    process = subprocess.Popen(
        [sys.executable, "jobs/ingest.py", *args, "--output", str(crashed)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    manifests = crashed / "manifests"
    deadline = time.monotonic() + 120
    try:
        while not list(manifests.rglob("*.json")):
            assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
            assert time.monotonic() < deadline, "no manifest appeared within 120 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()
    committed_at_kill = len(list(manifests.rglob("*.json")))
    assert 1 <= committed_at_kill < N_ITEMS, "the kill must land mid-run for this test to mean anything"
    assert not (crashed / "index.parquet").exists()

    time.sleep(1.0)  # let Ray reap the dead driver's actor before re-running on the same output
    assert main([*args, "--output", str(crashed)]) == EXIT_OK
    clean = tmp_path / "clean"
    assert main([*args, "--output", str(clean)]) == EXIT_OK

    assert _chips(crashed) == _chips(clean)
    chip_ids = [c[0] for c in _chips(crashed)]
    assert len(chip_ids) == len(set(chip_ids)) == N_ITEMS * (SIZE // 64) ** 2
    for shard in json.loads((crashed / "dataset.json").read_text())["shards"]:
        assert pq.read_metadata(crashed / shard).num_rows > 0  # every indexed shard is whole

"""Concurrent and repeated ingest runs into one output, on the session's local Ray cluster.

A second run while the first holds the output's lease gets exit 2 naming the holder, and a run of the same schedule
slot told to wait (``--lease-wait``) waits for it and then finds the slot done (exit 0, no work); a later run with
other chip settings is refused with exit 2 and the fix; duplicates, commit failures and malformed `updated` values are
reported; a run with nothing to do writes no new snapshot. The first run is a real subprocess (`python
jobs/ingest.py`) joined to the cluster, which also shows Ray's harmless start-up line is filtered from its stderr.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from jobs.ingest import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, main
from pipeline.lease import current_lease
from pipeline.manifest import OutputStore
from pipeline.schedule import read_slot
from pipeline.stac import read_catalog
from tests.conftest import REPO_ROOT
from tests.jobs.test_ingest_crash import _big_catalog

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"


def _args(catalog: Path, out: Path, *extra: str) -> list[str]:
    return ["--catalog", str(catalog), "--output", str(out), "--workers", "1", "--no-progress", *extra]


def test_second_run_is_refused_while_the_first_holds_the_lease(
    ray_local: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = _big_catalog(tmp_path)
    out = tmp_path / "out"
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    slot = ("--schedule-slot", "2026-01-01T06:00:00Z")
    first = subprocess.Popen(
        [sys.executable, "jobs/ingest.py",
         *_args(catalog, out, "--chip-size", "64", "--lease-owner", "run-64", "--since", "auto", *slot)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while current_lease(OutputStore.open(str(out))) is None:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run took no lease within 120 s"
            time.sleep(0.05)
        # A retry of the same slot that may wait (started at once, while the first run is still starting Ray): it
        # gets the lease when the first run is done, finds the slot done by it and does nothing (a catch-up burst of
        # one slot collapses into one run).
        retry = _args(catalog, out, "--chip-size", "64", "--since", "auto", *slot, "--lease-wait", "300")
        waited: list[int] = []
        waiter = threading.Thread(target=lambda: waited.append(main(retry)), daemon=True)
        waiter.start()
        assert main(_args(catalog, out, "--chip-size", "32")) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "is being written by another run: owner 'run-64'" in err and "until 20" in err, err
        assert "--lease-wait SECONDS waits here" in err
        waiter.join(timeout=400)
        assert waited == [EXIT_OK]
        printed = capsys.readouterr().out
        assert "schedule slot 20260101T060000Z was already done by run 'run-64' (finished 20" in printed, printed
        assert "exit status 0" in printed and "processed" not in printed
        stdout, stderr = first.communicate(timeout=400)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == EXIT_OK, stderr[-3000:]
    assert "exit status 0" in stdout
    # Ray's error-level "constructor arguments in the object store" line is filtered, our own lines are not
    assert "has constructor arguments in the object store" not in stderr and "INFO jobs.ingest" in stderr
    assert "schedule slot 20260101T060000Z done" in stdout
    store = OutputStore.open(str(out))
    lease = current_lease(store)
    assert lease is not None and lease.released and lease.generation == 2  # the waiting run held it after run-64
    record = read_slot(store, "v1", datetime(2026, 1, 1, 6, tzinfo=UTC))
    assert record is not None and (record.owner, record.exit_code, record.items_committed) == ("run-64", EXIT_OK, 6)

    # Sequentially, other chip settings into the same dataset version are refused with the way out.
    assert main(_args(catalog, out, "--chip-size", "32")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "built with processing_version" in err and "chip_size=64" in err and "--dataset-version v1-p" in err
    chips = pq.read_table(out / "index.parquet").column("window").to_pylist()
    assert {w[2] for w in chips} == {64}  # never mixed


def test_duplicates_bad_updated_and_no_snapshot_when_nothing_to_do(
    ray_local: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = {i["collection"]: i for i in read_catalog(SYNTHETIC / "items-fc.json").items}
    s1, s2 = items["sentinel-1-rtc"], items["sentinel-2-l2a"]
    changed = copy.deepcopy(s2)
    changed["properties"]["eo:cloud_cover"] = 99.0
    bad = copy.deepcopy(items["landsat-c2-l2"])
    bad["properties"]["updated"] = "yesterday"
    catalog = tmp_path / "dupes.json"
    catalog.write_text(json.dumps([s1, s1, s2, changed, bad]))
    out = tmp_path / "out"
    assert main(_args(catalog, out, "--chip-size", "64")) == EXIT_PARTIAL
    text = capsys.readouterr().out
    assert "duplicates: 2 item ids listed more than once" in text, text
    failures = {(f["item_id"], f["error_class"], f["stage"]): f["message"]
                for f in pq.read_table(out / "failures.parquet").to_pylist()}
    assert set(failures) == {(s2["id"], "DuplicateItemError", "search"), (bad["id"], "InvalidItemError", "resolve")}
    assert "appears 2 times in the source with 2 different contents" in failures[(s2["id"], "DuplicateItemError",
                                                                                   "search")]
    assert "`updated` 'yesterday'" in failures[(bad["id"], "InvalidItemError", "resolve")]
    assert len(list((out / "snapshots").glob("*.ndjson"))) == 1

    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps([s1, s2]))
    assert main(_args(clean, out, "--chip-size", "64")) == EXIT_OK  # nothing new: no Ray work, no snapshot
    assert "2 already committed, 0 processed" in capsys.readouterr().out
    assert len(list((out / "snapshots").glob("*.ndjson"))) == 1


def test_commit_failures_land_in_failures_parquet(
    ray_local: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    item = next(i for i in read_catalog(SYNTHETIC / "items-fc.json").items if i["collection"] == "sentinel-1-rtc")
    catalog = tmp_path / "one.json"
    catalog.write_text(json.dumps([item]))
    out = tmp_path / "out"
    (out / "manifests" / "v1").mkdir(parents=True)
    (out / "manifests" / "v1" / "sentinel-1-rtc").write_text("a file where the manifest folder must go")
    assert main(_args(catalog, out, "--chip-size", "64")) == 1  # nothing committed
    text = capsys.readouterr().out
    assert "could not record their failure in the output; they are in failures.parquet" in text
    failures = pq.read_table(out / "failures.parquet").to_pylist()
    assert [(f["item_id"], f["stage"]) for f in failures] == [(item["id"], "commit")], failures

"""jobs/embed.py --incremental on a real ingest of a scene and a later copy with a known changed block."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import rsvheat
from jobs.embed import EXIT_OK, EXIT_USAGE, main
from jobs.ingest import main as ingest_main
from pipeline.stac import read_catalog
from pipeline.synthetic_change import write_changed_copy

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"
S2 = "sentinel-2-l2a"


@pytest.fixture(scope="module")
def two_dates(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("embed-inc")
    base = next(it for it in read_catalog(SYNTHETIC / "items-fc.json").items if it["collection"] == S2)
    later = write_changed_copy(base, root / "later", fraction=0.1, days_later=5, seed=1)
    catalog = root / "items.json"
    catalog.write_text(json.dumps([base, later.item]))
    data = root / "data"
    assert ingest_main(["--catalog", str(catalog), "--output", str(data), "--chip-size", "32", "--no-progress"]) == 0
    bands = list(json.loads((data / "dataset.json").read_text())["collections"][S2]["bands"])
    torch.manual_seed(0)
    model = rsvheat.create_model("vheat_test", in_chans={"optical": len(bands)})
    stats = {"stats_hash": "t", "optical": {"mean": [1000.0] * len(bands), "std": [500.0] * len(bands)}}
    rsvheat.save_checkpoint(root / "enc.pt", model, bands={"optical": bands}, stats=stats)
    return {"root": root, "data": data, "base": base, "later": later}


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    return {r["chip_id"]: r for r in pq.read_table(path).to_pylist()}


@pytest.mark.slow  # ingest + three embedding runs on a local Ray: about 40 s
def test_incremental_reuses_unchanged_chips_and_matches_a_full_run(two_dates: dict[str, Any]) -> None:
    root, data = two_dates["root"], two_dates["data"]
    args = ["--model", str(root / "enc.pt"), "--data", str(data), "--collection", S2, "--batch-size", "4"]
    assert main([*args, "--output", str(root / "full")]) == EXIT_OK
    assert main([*args, "--output", str(root / "inc"), "--incremental", "--state", str(root / "state")]) == EXIT_OK
    full, inc = _rows(root / "full" / "embeddings.parquet"), _rows(root / "inc" / "embeddings.parquet")
    assert sorted(full) == sorted(inc)  # the same rows as a full run
    base_id, later_id = two_dates["base"]["id"], two_dates["later"].item["id"]
    first = {r["chip_id"].rsplit(":", 1)[1]: r for r in inc.values() if r["item_id"] == base_id}
    second = [r for r in inc.values() if r["item_id"] == later_id]
    assert not any(r["reused"] for r in first.values())  # the tile's first scene computes everything
    assert {r["reason"] for r in first.values()} == {"no_cache"}

    r0, c0, r1, c1 = two_dates["later"].block  # 40 x 40 px: overlaps 2 x 2 chips of 32 px
    windows = {w["chip_id"]: w["window"] for w in pq.read_table(data / "index.parquet").to_pylist()}
    for r in second:
        col, row = windows[r["chip_id"]][:2]
        overlaps = row < r1 and row + 32 > r0 and col < c1 and col + 32 > c0
        assert overlaps == (r["reason"] == "changed")  # exactly the chips the block touches
        np.testing.assert_allclose(r["embedding"], full[r["chip_id"]]["embedding"], rtol=1e-4, atol=1e-5)
        if r["reused"]:
            cached = first[r["chip_id"].rsplit(":", 1)[1]]
            assert r["embedding"] == cached["embedding"]  # bit-identical cached floats
            assert r["source_date"] == cached["datetime"] and r["age_days"] == 5
        else:
            assert r["source_date"] == r["datetime"] and r["age_days"] == 0
        assert r["change_score_id"] == "index_delta"
    assert sum(r["reason"] == "changed" for r in second) == 4
    assert sum(r["reason"] == "audit" for r in second) >= 1  # at least one reused stratum was audited

    record = json.loads((root / "state" / "accounting.json").read_text())
    acc = record["accounting"]
    assert acc["chips_recomputed"] + acc["chips_reused"] == acc["chips_total"] == len(inc)
    assert acc["recomputed_by_reason"] == {"no_cache": len(first), "changed": 4}
    assert acc["saved_frac"] == pytest.approx(1 - acc["chips_recomputed"] / acc["chips_total"], abs=1e-6)
    assert record["audit"]["chips"] >= 1 and not record["audit"]["alarm"]
    assert record["audit"]["cos_p95"] < 1e-4  # a reused chip whose input did not change does not drift
    assert [s["mode"] for s in record["scenes"]] == ["incremental", "incremental"]

    # Run again on the same data: every scene was processed, nothing is recomputed, the output is unchanged.
    assert main([*args, "--output", str(root / "again"), "--incremental", "--state", str(root / "state")]) == EXIT_OK
    again = _rows(root / "again" / "embeddings.parquet")
    assert {k: v["embedding"] for k, v in again.items()} == {k: v["embedding"] for k, v in inc.items()}
    acc = json.loads((root / "state" / "accounting.json").read_text())["accounting"]
    assert acc["chips_total"] == 0 and acc["scenes_skipped"] == 2


def test_incremental_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", str(tmp_path / "enc.pt"), "--data", str(tmp_path), "--output", str(tmp_path / "x"),
            "--incremental"]
    assert main(args) == EXIT_USAGE
    assert "--state DIR" in capsys.readouterr().err
    assert main([*args, "--state", "s3://bucket/state"]) == EXIT_USAGE
    assert "filesystem path" in capsys.readouterr().err
    (tmp_path / "inc.yaml").write_text("incremental:\n  chip: {tau: 0.1}\n")
    assert main([*args, "--state", str(tmp_path / "s"), "--incremental-config", str(tmp_path / "inc.yaml")]) == 2
    assert "unknown key(s) ['tau'] in incremental.chip" in capsys.readouterr().err

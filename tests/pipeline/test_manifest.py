"""pipeline.manifest: atomic store, manifest keys, the commit record and the outputs rebuilt from manifests."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import geopandas
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

from pipeline.manifest import (
    FAILURE_SCHEMA,
    INDEX_SCHEMA,
    ItemManifest,
    OutputStore,
    chip_key,
    item_key,
    load_manifests,
    watermarks,
    write_outputs,
)
from pipeline.records import FailureRecord
from pipeline.stats import BandStats


def _chip_row(item_id: str, n: int, status: str = "written") -> dict[str, object]:
    box = shapely.box(10.0 + n * 0.01, 45.0, 10.01 + n * 0.01, 45.01)
    return {
        "chip_id": f"c:{item_id}:{n}",
        "chip_key": chip_key(f"c:{item_id}:{n}"),
        "grid_cell": f"32632_E{n:04d}_N0001",
        "item_id": item_id,
        "collection": "c",
        "datetime": "2024-04-19T10:00:00Z",
        "geometry": shapely.to_wkb(box).hex(),
        "utm_epsg": 32632,
        "window": [n * 64, 0, 64, 64],
        "cloud_pct": None,
        "nodata_pct": 0.0 if status == "written" else 80.0,
        "status": status,
        "reason": None if status == "written" else "nodata_pct 80.0 > max_nodata 50",
        "shard_path": f"shards/v1/c/utm=32632/{item_id}.parquet" if status == "written" else None,
        "row_group": 0 if status == "written" else None,
        "row_index": n if status == "written" else None,
        "checksum": "ab" * 16 if status == "written" else None,
        "processing_version": "p1-x",
        "mgrs_tile": None,
        "processing_baseline": None,
        "orbit_state": None,
        "relative_orbit": None,
        "polarizations": None,
    }


def _manifest(
    item_id: str, *, values: float, updated: str | None = None, when: str = "2024-04-19T10:00:00Z"
) -> ItemManifest:
    stats = BandStats(["a", "b"])
    stats.update(np.full((2, 4, 4), values, np.float32), np.ones((4, 4), bool))
    return ItemManifest(
        item_id=item_id,
        collection="c",
        processing_version="p1-x",
        dataset_version="v1",
        updated=updated,
        datetime=when,
        status="committed",
        shard={"path": f"shards/v1/c/utm=32632/{item_id}.parquet", "n_rows": 2, "n_bytes": 10, "checksum": "x"},
        counts={"written": 2, "dropped_nodata": 1, "dropped_cloud": 0},
        chips=(_chip_row(item_id, 0), _chip_row(item_id, 1), _chip_row(item_id, 2, "dropped_nodata")),
        stats=stats.to_dict(),
        sensor={"sensor": "s", "bands": [{"name": "a"}, {"name": "b"}]},
    )


def test_item_key_is_safe_and_collision_free() -> None:
    keys = {item_key("c", i) for i in ("../../etc/passwd", "a/b", "a_b", "a b", "")}
    assert len(keys) == 5
    for key in keys:
        assert "/" not in key and ".." not in key and not key.startswith(".")
    assert item_key("c", "x") == item_key("c", "x") != item_key("d", "x")
    assert 0 <= chip_key("a") < 2**63 and chip_key("a") != chip_key("b")


def test_collection_paths_do_not_collide() -> None:
    paths = {
        ItemManifest(item_id="i", collection=c, processing_version="p", dataset_version="v/1", updated=None,
                     datetime=None, status="committed").rel_path
        for c in ("a/b", "a_b", "../a_b")
    }
    assert len(paths) == 3
    for path in paths:
        assert ".." not in path and path.count("/") == 3


def test_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    store = OutputStore.open(str(tmp_path / "out"))
    store.write_bytes("a/b.json", b"1")
    store.write_bytes("a/b.json", b"22")
    assert store.read_bytes("a/b.json") == b"22"
    assert os.listdir(tmp_path / "out" / "a") == ["b.json"]
    (tmp_path / "out" / "a" / "c.json.tmp-dead").write_bytes(b"torn")  # a crash mid-write
    assert store.list_files("a", ".json") == ["a/b.json"]
    assert store.list_files("missing") == []


def test_unsupported_scheme() -> None:
    with pytest.raises(ValueError, match="unsupported scheme 'gopher'"):
        OutputStore.open("gopher://x/y")


def test_manifest_roundtrip_and_failure_supersede(tmp_path: Path) -> None:
    store = OutputStore.open(str(tmp_path))
    failed = ItemManifest(
        item_id="i1", collection="c", processing_version="p1-x", dataset_version="v1", updated=None, datetime=None,
        status="failed", failure={"item_id": "i1", "asset": "", "stage": "read", "error_class": "E", "message": "m"},
    )
    failed.commit(store)
    assert load_manifests(store, "v1")["failed"] == [failed]
    ok = _manifest("i1", values=1.0)
    ok.commit(store)  # a later success clears the failure
    loaded = load_manifests(store, "v1")
    assert loaded == {"committed": [ok], "failed": []}
    assert ok.matches("p1-x", None) and not ok.matches("p1-x", "2025-01-01") and not ok.matches("p2", None)


def test_outputs_are_deterministic_geoparquet(tmp_path: Path) -> None:
    store = OutputStore.open(str(tmp_path))
    for item_id, value, when in (("i2", 3.0, "2024-05-01T00:00:00Z"), ("i1", 1.0, "2024-04-01T00:00:00Z")):
        _manifest(item_id, values=value, when=when).commit(store)
    search_failures = [FailureRecord("bad.json", "", "search", "InvalidItemError", "not JSON")]
    first = write_outputs(store, dataset_version="v1", source={"catalog": "x"}, search_failures=search_failures)
    blobs = {name: (tmp_path / name).read_bytes() for name in ("index.parquet", "failures.parquet", "dataset.json")}
    second = write_outputs(store, dataset_version="v1", source={"catalog": "x"}, search_failures=search_failures)
    assert first == second
    assert blobs == {name: (tmp_path / name).read_bytes() for name in blobs}

    index = pq.read_table(tmp_path / "index.parquet")
    assert index.schema.remove_metadata() == INDEX_SCHEMA
    assert index["chip_id"].to_pylist() == ["c:i1:0", "c:i1:1", "c:i1:2", "c:i2:0", "c:i2:1", "c:i2:2"]
    geo = json.loads(index.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert set(geo["columns"]["geometry"]["geometry_types"]) == {"Polygon", "MultiPolygon"}  # antimeridian chips
    assert geo["columns"]["geometry"]["crs"]["id"] == {"authority": "OGC", "code": "CRS84"}
    frame = geopandas.read_parquet(tmp_path / "index.parquet")
    assert frame.crs.to_string() == "OGC:CRS84"
    assert frame.geometry.iloc[0].equals(shapely.box(10.0, 45.0, 10.01, 45.01))

    failures = pq.read_table(tmp_path / "failures.parquet")
    assert failures.schema.remove_metadata() == FAILURE_SCHEMA and failures["stage"].to_pylist() == ["search"]

    stats = first["collections"]["c"]["stats"]
    assert stats["count"] == [32, 32]
    assert stats["mean"] == pytest.approx([2.0, 2.0]) and stats["std"] == pytest.approx([1.0, 1.0])
    assert first["counts"]["chips_written"] == 4 and first["counts"]["chips_dropped_nodata"] == 2
    assert first["watermark"]["c"]["datetime"] == "2024-05-01T00:00:00Z"
    assert first["collections"]["c"]["bands"] == ["a", "b"]
    assert first["pixel_encoding"]["type"] == "raw" and first["pixel_encoding"]["dtype_column"] == "dtype"


def test_empty_outputs_have_schema(tmp_path: Path) -> None:
    store = OutputStore.open(str(tmp_path))
    dataset = write_outputs(store, dataset_version="v1", source={})
    assert pq.read_table(tmp_path / "failures.parquet").num_rows == 0
    assert pq.read_table(tmp_path / "index.parquet").schema.remove_metadata() == INDEX_SCHEMA
    assert dataset["counts"]["items_committed"] == 0 and dataset["collections"] == {}


def test_watermarks_take_latest() -> None:
    marks = watermarks(
        [
            _manifest("a", values=1, when="2024-01-01T00:00:00Z", updated="2024-02-01T00:00:00Z"),
            _manifest("b", values=1, when="2024-03-01T00:00:00+00:00"),
        ]
    )
    assert marks == {"c": {"datetime": "2024-03-01T00:00:00+00:00", "updated": "2024-02-01T00:00:00Z"}}


def test_rebuild_survives_an_unparseable_committed_updated(tmp_path: Path) -> None:
    """A manifest committed by an older version with ``updated: "yesterday"`` no longer breaks every rebuild."""
    from pipeline.warnings import InvalidTimestampWarning

    store = OutputStore.open(str(tmp_path))
    _manifest("i1", values=1.0, updated="yesterday").commit(store)
    _manifest("i2", values=3.0, updated="2024-06-01T00:00:00Z", when="2024-05-01T00:00:00Z").commit(store)
    with pytest.warns(InvalidTimestampWarning, match=r"item 'i1'.*`updated` 'yesterday' is not an RFC 3339"):
        dataset = write_outputs(store, dataset_version="v1", source={})
    assert dataset["counts"]["items_committed"] == 2
    assert dataset["watermark"]["c"] == {"datetime": "2024-05-01T00:00:00Z", "updated": "2024-06-01T00:00:00Z"}
    assert pq.read_table(tmp_path / "index.parquet").num_rows == 6


def test_streamed_rebuild_matches_the_in_memory_build(tmp_path: Path) -> None:
    from pipeline.manifest import build_dataset_json, build_index_table, load_summaries

    store = OutputStore.open(str(tmp_path))
    for n in range(5):
        _manifest(f"i{n}", values=float(n), when=f"2024-0{n + 1}-01T00:00:00Z").commit(store)
    streamed = write_outputs(store, dataset_version="v1", source={"x": 1})
    loaded = load_manifests(store, "v1")
    assert streamed == build_dataset_json(loaded["committed"], loaded["failed"], dataset_version="v1", source={"x": 1})
    table = pq.read_table(tmp_path / "index.parquet")
    in_memory = build_index_table(loaded["committed"])
    assert table.equals(in_memory) and table.schema.metadata == in_memory.schema.metadata
    summaries = load_summaries(store, "v1")["committed"]
    assert sorted(summaries) == [("c", f"i{n}") for n in range(5)]
    assert summaries[("c", "i3")].matches("p1-x", None) and not summaries[("c", "i3")].matches("p2", None)


def test_failures_the_store_refused_are_still_in_the_table(tmp_path: Path) -> None:
    """A failed item whose failure manifest could not be committed (the commit itself failed) is not lost."""
    store = OutputStore.open(str(tmp_path))
    lost = ItemManifest(
        item_id="i9", collection="c", processing_version="p1-x", dataset_version="v1", updated=None, datetime=None,
        status="failed", failure={"item_id": "i9", "asset": "", "stage": "commit", "error_class": "PermissionError",
                                  "message": "cannot write manifests/v1/c"},
    )
    dataset = write_outputs(store, dataset_version="v1", source={}, uncommitted=[lost])
    failures = pq.read_table(tmp_path / "failures.parquet").to_pylist()
    assert [(f["item_id"], f["stage"], f["error_class"]) for f in failures] == [("i9", "commit", "PermissionError")]
    assert dataset["counts"]["items_failed"] == 1


def test_processing_version_pin(tmp_path: Path) -> None:
    from pipeline.errors import ProcessingVersionError
    from pipeline.manifest import check_processing_version, pin_processing_version

    store = OutputStore.open(str(tmp_path))
    check_processing_version(store, "v1", "p-any")  # no pin yet: anything goes
    assert pin_processing_version(store, "v1", "p-64", {"chip_size": 64})["processing_version"] == "p-64"
    pin_processing_version(store, "v1", "p-64", {"chip_size": 64})  # idempotent
    with pytest.raises(ProcessingVersionError, match=r"built with processing_version 'p-64' \(chip_size=64\).*"
                                                     r"--dataset-version v1-p-32"):
        pin_processing_version(store, "v1", "p-32", {"chip_size": 32})
    pin_processing_version(store, "v1-p-32", "p-32", {"chip_size": 32})  # the suggested fix works


def test_degenerate_stats_warn(tmp_path: Path) -> None:
    """One item of constant pixels: std 0 for every band, which would silently become 1 when normalising."""
    from pipeline.warnings import DegenerateStatsWarning

    store = OutputStore.open(str(tmp_path))
    _manifest("i1", values=5.0).commit(store)
    with pytest.warns(DegenerateStatsWarning, match=r"collection 'c'.*a: constant values \(std 0\)"):
        write_outputs(store, dataset_version="v1", source={})


def test_list_files_survives_a_directory_appearing_and_vanishing(tmp_path: Path) -> None:
    """Arrow's local listing fails "not found" when the directory appears between its listing and its check (what
    six racing lease takers hit); the store lists again instead of raising."""
    store = OutputStore.open(str(tmp_path))
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            os.makedirs(tmp_path / "state" / "lease" / "ingest", exist_ok=True)
            (tmp_path / "state" / "lease" / "ingest" / "000000000001.json").write_text("{}")
            shutil.rmtree(tmp_path / "state")

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        listings = [store.list_files("state/lease/ingest", ".json") for _ in range(20000)]
    finally:
        stop.set()
        thread.join()
    assert {tuple(found) for found in listings} <= {(), ("state/lease/ingest/000000000001.json",)}

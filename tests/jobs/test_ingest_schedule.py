"""Scheduled ingestion: slot after slot with ``--since auto --schedule-slot``, items added to the source in between.

Each slot's run is ``main()`` on the session's Ray cluster, reading real rasters: the synthetic fixtures served by a
loopback STAC API (rustac), and, under the ``realdata`` marker, the real sample catalog copied into ``tmp_path``. After
the first slot, copies of some items with new ids and later acquisition times are added to the source. A retry of the
first slot then does nothing, and the next slot adds exactly the new items' chips: every existing shard and manifest
is left byte for byte, and the chips of each new item equal those of the item it was copied from (same rasters).
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from jobs.ingest import EXIT_OK, main
from pipeline.manifest import OutputStore
from pipeline.schedule import read_slot
from pipeline.stac import read_catalog
from pipeline.times import format_datetime, parse_datetime
from tests.jobs.test_ingest import check_pixels

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"
SLOT_1, SLOT_2 = "2026-03-01T00:00:00Z", "2026-03-01T06:00:00Z"
_CHIP_COLUMNS = ("grid_cell", "window", "status", "reason", "checksum", "row_group", "row_index")


def _later_copy(item: dict[str, Any], days: int) -> dict[str, Any]:
    """``item`` re-published ``days`` later under a new id (same assets): a new acquisition of the same rasters."""
    copied = copy.deepcopy(item)
    copied["id"] = f"{item['id']}-r{days}"
    props = copied["properties"]
    for key in ("datetime", "start_datetime", "end_datetime"):
        if props.get(key):
            props[key] = format_datetime(parse_datetime(props[key]) + timedelta(days=days))
    return copied


def _state(out: Path) -> dict[str, Any]:
    """What a later run must not touch: shard bytes, manifest bytes and times, the index rows by chip id."""
    index = pq.read_table(out / "index.parquet").to_pylist()
    return {
        "shards": {p.relative_to(out): p.read_bytes() for p in (out / "shards").rglob("*.parquet")},
        "manifests": {p.relative_to(out): (p.read_bytes(), p.stat().st_mtime_ns)
                      for p in (out / "manifests").rglob("*.json")},
        "index": {row["chip_id"]: row for row in index},
        "snapshots": sorted((out / "snapshots").glob("*.ndjson")),
    }


def _chips_of(state: dict[str, Any], item_id: str) -> list[tuple[Any, ...]]:
    rows = [r for r in state["index"].values() if r["item_id"] == item_id]
    return sorted(tuple(str(r[c]) for c in _CHIP_COLUMNS) for r in rows)


def _assert_only_new_items_added(before: dict[str, Any], after: dict[str, Any], copies: dict[str, str]) -> None:
    """``copies`` maps each new item id to the id of the item it copies."""
    for rel, blob in before["shards"].items():
        assert after["shards"].get(rel) == blob, f"shard {rel} changed"
    assert {rel: after["manifests"].get(rel) for rel in before["manifests"]} == before["manifests"]
    new_manifests = sorted(set(after["manifests"]) - set(before["manifests"]))
    assert len(new_manifests) == len(copies), new_manifests
    for chip_id, row in before["index"].items():
        assert after["index"].get(chip_id) == row, f"index row of {chip_id} changed"
    added = set(after["index"]) - set(before["index"])
    assert added == {c for c, r in after["index"].items() if r["item_id"] in copies}
    assert sum(after["index"][c]["status"] == "written" for c in added) > 0
    for new_id, source_id in copies.items():
        assert _chips_of(after, new_id) == _chips_of(before, source_id), new_id
    new_shards = {after["index"][c]["shard_path"] for c in added} - {None}
    assert {str(p) for p in set(after["shards"]) - set(before["shards"])} == new_shards


def _scheduled(source: list[str], out: Path, slot: str, *extra: str) -> int:
    return main([*source, "--output", str(out), "--since", "auto", "--schedule-slot", slot, "--workers", "1",
                 "--no-progress", *extra])


def _slots_then_added_items(
    source: list[str], grow: Callable[[], list[str]], out: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> dict[str, str]:
    """Slot 1; ``grow()`` adds items (returns the source args and the copies); a retry of slot 1 does nothing; slot 2
    adds only the new items. Returns the copies (new item id -> source item id).
    """
    assert _scheduled(source, out, SLOT_1, *extra) == EXIT_OK
    assert "schedule slot 20260301T000000Z done" in capsys.readouterr().out
    store = OutputStore.open(str(out))
    first = read_slot(store, "v1", parse_datetime(SLOT_1))
    assert first is not None and first.exit_code == EXIT_OK and first.items_committed > 0
    before = _state(out)
    index_bytes = (out / "index.parquet").read_bytes()
    grown, copies = grow()

    assert _scheduled(grown, out, SLOT_1, *extra) == EXIT_OK  # the slot is retried: already done
    printed = capsys.readouterr().out
    assert "schedule slot 20260301T000000Z was already done by run" in printed and "processed" not in printed
    assert (out / "index.parquet").read_bytes() == index_bytes and _state(out)["snapshots"] == before["snapshots"]

    assert _scheduled(grown, out, SLOT_2, *extra) == EXIT_OK
    printed = capsys.readouterr().out
    assert f"{len(copies)} processed: {len(copies)} committed, 0 failed" in printed, printed
    _assert_only_new_items_added(before, _state(out), copies)
    second = read_slot(store, "v1", parse_datetime(SLOT_2))
    assert second is not None and second.items_committed == len(copies)
    assert read_slot(store, "v1", parse_datetime(SLOT_1)) == first  # the first record is never rewritten
    return copies


def test_scheduled_slots_add_only_new_items_from_a_stac_api(
    ray_local: Any, stac_api: Callable[[Path], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = read_catalog(SYNTHETIC / "items-fc.json").items
    by_collection = {i["collection"]: i for i in items}
    new = [_later_copy(by_collection["sentinel-1-rtc"], 9), _later_copy(by_collection["sentinel-2-l2a"], 9)]

    def serve(name: str, features: list[dict[str, Any]]) -> list[str]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        return ["--stac-api", stac_api(path)]

    def grow() -> tuple[list[str], dict[str, str]]:  # the provider publishes two new acquisitions
        copies = {n["id"]: n["id"].rsplit("-r", 1)[0] for n in new}
        return serve("after", [*items, *new]), copies

    out = tmp_path / "out"
    copies = _slots_then_added_items(serve("before", items), grow, out, ["--chip-size", "64"], capsys)
    added = [c for c, r in _state(out)["index"].items() if r["item_id"] in copies and r["status"] == "written"]
    assert check_pixels(out, [*items, *new], chip_ids=added) >= len(added)


@pytest.mark.realdata
def test_scheduled_slots_add_only_new_items_to_the_sample_catalog(
    ray_local: Any, sample_catalog: Path, repo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = tmp_path / "samples"
    shutil.copytree(sample_catalog.parent, samples)
    source = ["--config", str(repo_root / "jobs" / "configs" / "ingest_sample.yaml"),
              "--catalog", str(samples / "catalog.json")]

    def grow() -> tuple[list[str], dict[str, str]]:  # the latest patch of two collections, re-acquired 60 days later
        copies: dict[str, str] = {}
        for collection in ("bigearthnet-s2-l2a", "bigearthnet-s1"):
            link_file = samples / collection / "collection.json"
            links = json.loads(link_file.read_text())
            href = max((link["href"] for link in links["links"] if link["rel"] == "item"),
                       key=lambda h: json.loads((link_file.parent / h).read_text())["properties"]["datetime"])
            source_item = json.loads((link_file.parent / href).read_text())
            item = _later_copy(source_item, 60)
            new_href = str(Path(href).parent / f"{item['id']}.json")  # next to the source: same relative assets
            (link_file.parent / new_href).write_text(json.dumps(item))
            links["links"].append({"rel": "item", "href": f"./{new_href}", "type": "application/geo+json"})
            link_file.write_text(json.dumps(links))
            copies[item["id"]] = source_item["id"]
        return source, copies

    out = tmp_path / "out"
    copies = _slots_then_added_items(source, grow, out, [], capsys)
    assert {i["id"] for i in read_catalog(samples / "catalog.json").items} >= set(copies)

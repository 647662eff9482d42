"""pipeline.ray_ingest around the commit: NaN refused before any shard byte, `updated` checked at resolve time,
one band table with overrides, the processing-version pin and the lease re-checked at commit, unsafe names."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pipeline.ray_ingest as ray_ingest
from pipeline.errors import InvalidItemError
from pipeline.lease import acquire_lease
from pipeline.manifest import (
    ItemManifest,
    OutputStore,
    load_manifests,
    pin_processing_version,
    pinned_processing_version,
    write_outputs,
)
from pipeline.ray_ingest import IngestSettings, _ChipFilter, ingest_item, processing_version
from pipeline.sensors import load_sensors
from pipeline.shards import shard_metadata, write_shard
from pipeline.stac import read_catalog
from pipeline.tiling import cut_item
from tests.data.synthetic.data import S1_RTC, resolved_item

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"


def _settings(out: Path, **overrides: Any) -> IngestSettings:
    kwargs: dict[str, Any] = {"chip_size": 64, "stride": None, "max_nodata": 50.0, "max_cloud": None}
    extra = {k: overrides.pop(k) for k in ("lease_owner", "lease_generation") if k in overrides}
    kwargs.update(overrides)
    pv = processing_version(load_sensors(), **kwargs)
    return IngestSettings(output=str(out), dataset_version="v1", processing_version=pv, **kwargs, **extra)


def _item(collection: str) -> dict[str, Any]:
    return next(i for i in read_catalog(SYNTHETIC / "items-fc.json").items if i["collection"] == collection)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_nan_is_refused_before_the_shard_is_written(tmp_path: Path) -> None:
    """A valid pixel that is NaN stops the write before the shard (or its temporary) exists: no orphan."""
    item = resolved_item(S1_RTC, ("vv", "vh"))
    chips = list(cut_item(item, chip_size=32))
    bad = chips[1].image.copy()
    rows, cols = np.nonzero(chips[1].valid)
    bad[0, rows[0], cols[0]] = np.nan  # one valid vv pixel
    stream = iter([chips[0], dataclasses.replace(chips[1], image=bad), *chips[2:]])
    settings = _settings(tmp_path, chip_size=32, max_nodata=100.0)
    state = {"stage": "read"}
    filtered = _ChipFilter(item, settings, stream, state)
    assert filtered.peek() is not None
    target = tmp_path / "shards" / "x.parquet"
    with pytest.raises(InvalidItemError, match=r"1 valid pixels that are NaN or inf"):
        write_shard(str(target), filtered.written(), item, dataset_version="v1", processing_version="p",
                    sensor_metadata={})
    assert _files(tmp_path) == []  # before the fix the whole shard was written, then the item failed


def test_malformed_updated_fails_the_item_at_resolve(tmp_path: Path) -> None:
    store = OutputStore.open(str(tmp_path))
    item = _item("sentinel-1-rtc")
    item["properties"]["updated"] = "yesterday"
    result = ingest_item(json.dumps(item), _settings(tmp_path), sensors=load_sensors(), store=store)
    assert (result.status, result.stage, result.error_class) == ("failed", "resolve", "InvalidItemError")
    assert "property `updated` 'yesterday' is not an RFC 3339" in result.message
    assert not list(tmp_path.glob("shards/**/*"))
    assert load_manifests(store, "v1")["committed"] == []
    assert pinned_processing_version(store, "v1") is None  # nothing committed: the dataset version binds nobody
    write_outputs(store, dataset_version="v1", source={})  # the rebuild after it works


def test_dataset_band_table_reflects_nodata_override(tmp_path: Path) -> None:
    store = OutputStore.open(str(tmp_path))
    settings = _settings(tmp_path, overrides={"B05": {"nodata": 7.0}}, max_nodata=100.0)
    result = ingest_item(json.dumps(_item("sentinel-2-l2a")), settings, sensors=load_sensors(), store=store)
    assert result.status == "committed", result.message
    manifest = ItemManifest.from_json(result.manifest)
    footer = shard_metadata(str(tmp_path / manifest.shard["path"]))
    table = {b["name"]: b["nodata"] for b in footer["sensor_metadata"]["bands"]}
    assert table == {b["name"]: b["nodata"] for b in footer["bands"]}  # one band table, not two
    assert table["B05"] == 7.0 and [b["name"] for b in footer["sensor_metadata"]["bands"]] == footer["band_order"]
    dataset = write_outputs(store, dataset_version="v1", source={})
    bands = {b["name"]: b for b in dataset["collections"]["sentinel-2-l2a"]["sensor"]["bands"]}
    assert bands["B05"]["nodata"] == 7.0 and bands["B02"]["nodata"] == 0


def test_commit_rechecks_the_processing_version_pin(tmp_path: Path) -> None:
    """A dataset version pinned to other chip settings takes no chips of this run: no shard, no manifest."""
    store = OutputStore.open(str(tmp_path))
    other = _settings(tmp_path, chip_size=32)
    pin_processing_version(store, "v1", other.processing_version, {"chip_size": 32})
    result = ingest_item(json.dumps(_item("sentinel-1-rtc")), _settings(tmp_path), sensors=load_sensors(),
                         store=store)
    assert (result.status, result.error_class) == ("failed", "ProcessingVersionError")
    assert "--dataset-version v1-p" in result.message and "chip_size=32" in result.message
    assert not list(tmp_path.glob("shards/**/*.parquet")) and not list(tmp_path.glob("manifests/**/*.json"))


def test_commit_needs_the_runs_lease(tmp_path: Path) -> None:
    store = OutputStore.open(str(tmp_path))
    with acquire_lease(store, "driver", ttl=60, renew_every=0) as lease:
        ok = _settings(tmp_path, lease_owner="driver", lease_generation=lease.generation)
        assert ingest_item(json.dumps(_item("sentinel-1-rtc")), ok, sensors=load_sensors(), store=store).status == (
            "committed")
    pin = pinned_processing_version(store, "v1")  # the first commit pinned the dataset version
    assert pin is not None and pin["processing_version"] == ok.processing_version and pin["settings"]["chip_size"] == 64
    # the driver released the lease (or lost it): its actors commit nothing more, not even a failure manifest
    stale = _settings(tmp_path, lease_owner="driver", lease_generation=1)
    result = ingest_item(json.dumps(_item("sentinel-2-l2a")), stale, sensors=load_sensors(), store=store)
    assert (result.status, result.error_class) == ("failed", "LeaseLostError")
    assert [m.item_id for m in load_manifests(store, "v1")["committed"]] == [_item("sentinel-1-rtc")["id"]]
    assert load_manifests(store, "v1")["failed"] == []


@pytest.mark.parametrize(
    ("item_id", "collection", "dataset_version"),
    [
        ("../../../escape-item", "sentinel-1-rtc", "v1"),
        ("S1A_ok", "../../../escape-collection", "v1"),
        ("S1A_ok", "sentinel-1-rtc", "../../../escape-version"),
        ("/abs/escape", "/abs/collection", "/abs/version"),
    ],
)
def test_unsafe_names_never_leave_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, item_id: str, collection: str, dataset_version: str
) -> None:
    """Unsafe ids, collections and dataset versions go through the real shard and manifest path code.

    ``check_item_id`` (the first defence, tested elsewhere) is switched off so that the unsafe id reaches the path
    code; the test then looks where an unsanitised join would have landed.
    """
    monkeypatch.setattr(ray_ingest, "check_item_id", lambda _id: None)
    out = tmp_path / "a" / "b" / "out"
    store = OutputStore.open(str(out))
    item = _item("sentinel-1-rtc")
    item["id"], item["collection"] = item_id, collection
    settings = dataclasses.replace(_settings(out), dataset_version=dataset_version)
    result = ingest_item(json.dumps(item), settings, sensors=load_sensors(), store=store)
    assert result.status == "committed", result.message
    write_outputs(store, dataset_version=dataset_version, source={})
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written), written
    for name in ("escape-item", "escape-collection", "escape-version"):  # where `shards/v/c/../../../x` would land
        assert not list(tmp_path.rglob(f"{name}*")) or all(
            p.resolve().is_relative_to(out.resolve()) for p in tmp_path.rglob(f"{name}*"))
    assert not Path("/abs").exists()
    manifest = ItemManifest.from_json(store.read_bytes(result.manifest_path))
    assert manifest.item_id == item_id and manifest.collection == collection  # the raw names are kept as data
    assert (out / manifest.shard["path"]).is_file() and ".." not in manifest.shard["path"]

"""pipeline.infer + items.item_sensor: items whose collection no sensor lists are ingested from their own metadata."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.errors import SensorNotFoundError
from pipeline.items import _WARNED, item_sensor, resolve_item
from pipeline.sensors import DEFAULT_SENSORS_PATH, load_sensors
from pipeline.stac import read_catalog
from pipeline.warnings import SensorInferredWarning
from tests.data.archives.data import NO_COLLECTION, UNKNOWN_COLLECTION


def _items(path: Path) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in read_catalog(path).items}


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    _WARNED.clear()  # "once per collection" is per process: every test starts with nothing warned


def test_items_without_collection_are_resolved_from_their_metadata() -> None:
    items = _items(NO_COLLECTION)
    with pytest.warns(SensorInferredWarning) as record:
        drone = resolve_item(items["drone-0001"])
        planet = resolve_item(items["planet-0001"])
    assert len(record) == 2  # two archives, two inferred sensors: one warning each
    assert drone.collection == drone.sensor and drone.collection.startswith("stac-items-")
    assert [b.name for b in drone.bands] == ["blue", "green", "red", "nir"]  # the provider's asset order
    assert [b.center_wavelength_um for b in drone.bands] == [0.49, 0.56, 0.665, 0.842]
    assert all(b.nodata == 0 and b.scale == 0.0001 and b.gsd_m == 3.0 and not b.to_db for b in drone.bands)
    assert drone.modality == "optical" and drone.quality is None
    # One 4-band GeoTIFF: a band per eo:bands entry, read by index; nodata only in the file's own header.
    assert [(b.name, b.asset_key, b.band_index) for b in planet.bands] == [
        ("blue", "analytic", 1), ("green", "analytic", 2), ("red", "analytic", 3), ("nir", "analytic", 4)]
    assert all(b.nodata == 0.0 for b in planet.bands)
    inferred = planet.sensor_metadata["inferred"]
    assert inferred["files_read"] == ["analytic"] and inferred["from"] == "item STAC metadata"
    assert planet.sensor_metadata["bands"][3]["band_index"] == 4
    note = str(record[1].message)
    assert "Items without a `collection`" in note and "--sensors" in note and '"collection": "stac-items-' in note


def test_unknown_collection_warns_once_and_its_snippet_pins_it(tmp_path: Path) -> None:
    items = list(_items(UNKNOWN_COLLECTION).values())
    with pytest.warns(SensorInferredWarning) as record:
        resolved = [resolve_item(item) for item in items]
    assert len(record) == 1  # two items of one collection
    first = resolved[0]
    assert first.collection == "acme-l-band-sar" and first.modality == "sar"
    assert [(b.name, b.nodata, b.units, b.to_db) for b in first.bands] == [
        ("HH", -9999.0, "dB", False), ("HV", -9999.0, "dB", False)]
    note = str(record[0].message)
    assert note.startswith("Collection `acme-l-band-sar` matches no configured sensor; its sensor was inferred")
    assert "HH (asset HH, nodata -9999.0, scale 1, offset 0, dB)" in note
    snippet = note[note.index("sensors:\n"):]
    # Pasted under `sensors:` of a copy of the packaged config, the entry pins the collection: no more inference.
    config = yaml.safe_load(DEFAULT_SENSORS_PATH.read_text())
    config["sensors"].update(yaml.safe_load(snippet)["sensors"])
    pinned_path = tmp_path / "sensors.yaml"
    pinned_path.write_text(yaml.safe_dump(config))
    pinned = load_sensors(pinned_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SensorInferredWarning)
        again = resolve_item(items[0], pinned)
    assert again.sensor == "acme-l-band-sar" and "inferred" not in again.sensor_metadata
    assert again.bands == first.bands
    assert pinned["acme-l-band-sar"].config_hash == first.sensor_metadata["config_hash"]


def test_unknown_collection_matched_by_platform_gets_an_extends_snippet() -> None:
    item = copy.deepcopy(_items(NO_COLLECTION)["drone-0001"])
    item["collection"] = "my-landsat-mirror"
    item["properties"]["platform"] = "landsat-9"
    for key in ("swir16", "swir22"):
        item["assets"][key] = copy.deepcopy(item["assets"]["nir"])
    item["assets"]["nir08"] = item["assets"].pop("nir")
    spec, note = item_sensor(item, load_sensors())
    assert spec.name == "landsat-c2-l2" and note is not None
    assert "the sensor `landsat-c2-l2` was matched by platform and asset keys" in note
    assert yaml.safe_load(note[note.index("sensors:\n"):]) == {
        "sensors": {"my-landsat-mirror": {"extends": "landsat-c2-l2", "collections": ["my-landsat-mirror"]}}}
    assert item_sensor({**item, "collection": "landsat-c2-l2"}, load_sensors())[1] is None


def test_nothing_usable_fails_with_the_reason() -> None:
    item = copy.deepcopy(_items(NO_COLLECTION)["planet-0001"])
    del item["assets"]["analytic"]
    with pytest.raises(SensorNotFoundError) as err:
        resolve_item(item)
    message = str(err.value)
    assert "no usable data asset" in message and "`thumbnail`: media type 'image/png'" in message
    assert "`metadata`: media type 'application/xml'" in message and "--sensors" in message


def test_inferred_name_is_stable_and_ignores_non_data_assets() -> None:
    from pipeline.infer import inferred_name

    item = _items(NO_COLLECTION)["planet-0001"]
    fewer = copy.deepcopy(item)
    del fewer["assets"]["thumbnail"]
    assert inferred_name(item) == inferred_name(fewer) == inferred_name(json.loads(json.dumps(item)))
    assert inferred_name({**item, "collection": "x"}) == "x"

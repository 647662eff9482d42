"""jobs/predict.py end to end on synthetic COGs: georeferencing, nodata, exactness of a one-window scene, failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch

import rsvheat
from jobs.predict import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, main
from pipeline.items import resolve_item
from pipeline.stac import read_catalog
from pipeline.tiling import cut_item, scene_grid

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"
S2 = "sentinel-2-l2a"
CLASSES = ["water", "vegetation", "bare"]


def _s2_items() -> list[dict[str, Any]]:
    return [it for it in read_catalog(SYNTHETIC / "items-fc.json").items if it["collection"] == S2]


def _segmentation_checkpoint(path: Path, bands: list[str]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = rsvheat.build_task_model("segmentation", "vheat_test", len(CLASSES), {"in_chans": {"optical": len(bands)}})
    stats = {"stats_hash": "t", "optical": {"mean": [1000.0] * len(bands), "std": [500.0] * len(bands)}}
    rsvheat.save_checkpoint(path, model, bands={"optical": bands}, stats=stats, extra={"classes": CLASSES})
    return model.eval()


@pytest.fixture
def s2_catalog(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    items = _s2_items()
    path = tmp_path / "items.json"
    path.write_text(json.dumps(items))
    return path, items


def test_scene_in_one_window_equals_a_direct_model_call(
    ray_local: Any, tmp_path: Path, s2_catalog: tuple[Path, list[dict[str, Any]]]
) -> None:
    catalog, items = s2_catalog
    item = resolve_item(items[0])
    bands = [b.name for b in item.bands]
    model = _segmentation_checkpoint(tmp_path / "seg.pt", bands)
    out = tmp_path / "pred"
    args = ["--model", str(tmp_path / "seg.pt"), "--catalog", str(catalog), "--output", str(out)]
    assert main([*args, "--window", "128", "--overlap", "0", "--max-items", "1"]) == EXIT_OK

    grid = scene_grid(item)
    with rasterio.open(out / f"{item.safe_id}.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert (ds.crs.to_epsg(), ds.transform, ds.width, ds.height) == (grid.epsg, grid.transform, grid.width,
                                                                         grid.height)
        labels = ds.read(1)
        nodata = ds.nodata
    (chip,) = list(cut_item(item, chip_size=128))  # the 128 px scene is one window
    x = (chip.image.astype(np.float32) - 1000.0) / 500.0
    with torch.inference_mode():
        expected = model(torch.from_numpy(x[None]), modality="optical")[0].argmax(0).numpy()
    valid = chip.valid[: grid.height, : grid.width]
    np.testing.assert_array_equal(labels[valid], expected[: grid.height, : grid.width][valid])
    assert np.all(labels[~valid] == nodata)

    stac = json.loads((out / f"{item.safe_id}.json").read_text())
    assert stac["properties"]["proj:code"] == f"EPSG:{grid.epsg}"
    assert stac["properties"]["proj:shape"] == [grid.height, grid.width]
    assert stac["properties"]["proj:transform"] == list(grid.transform)[:6]
    assert stac["assets"]["prediction"]["href"] == f"./{item.safe_id}.tif"
    assert [c["name"] for c in stac["assets"]["prediction"]["classification:classes"]] == CLASSES


def test_overlapping_windows_probabilities_and_a_failed_scene(
    ray_local: Any, tmp_path: Path, s2_catalog: tuple[Path, list[dict[str, Any]]]
) -> None:
    catalog, items = s2_catalog
    bands = [b.name for b in resolve_item(items[0]).bands]
    _segmentation_checkpoint(tmp_path / "seg.pt", bands)
    broken = json.loads(json.dumps(items[1]))
    broken["id"] = "no-red-band"
    broken["assets"].pop(next(k for k in broken["assets"] if k in ("B04", "red")))
    catalog.write_text(json.dumps([items[0], broken]))
    out = tmp_path / "pred"
    args = ["--model", str(tmp_path / "seg.pt"), "--catalog", str(catalog), "--output", str(out)]
    assert main([*args, "--window", "64", "--overlap", "16", "--output-kind", "probabilities"]) == EXIT_PARTIAL

    item = resolve_item(items[0])
    with rasterio.open(out / f"{item.safe_id}.tif") as ds:
        probs = ds.read()  # (K, H, W)
        assert ds.count == len(CLASSES) and ds.dtypes[0] == "float32"
    covered = np.isfinite(probs[0])
    assert covered.mean() > 0.5
    np.testing.assert_allclose(probs[:, covered].sum(axis=0), 1.0, atol=1e-5)  # a blend of softmaxes stays one

    failures = pq.read_table(out / "failures.parquet").to_pylist()
    assert [f["item_id"] for f in failures] == ["no-red-band"]
    assert failures[0]["stage"] == "resolve" and "`B04`" in failures[0]["message"]


def test_models_it_cannot_apply_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    encoder = rsvheat.create_model("vheat_test", in_chans={"optical": 12})
    rsvheat.save_checkpoint(tmp_path / "enc.pt", encoder)
    args = ["--model", str(tmp_path / "enc.pt"), "--catalog", str(SYNTHETIC / "items-fc.json"), "--output",
            str(tmp_path / "o")]
    assert main(args) == EXIT_USAGE
    assert "without a task head" in capsys.readouterr().err
    assert main([*args[:-2], "--output", str(tmp_path / "o"), "--window", "300", "--overlap", "300"]) == EXIT_USAGE
    assert "--overlap" in capsys.readouterr().err


def test_select_bands_orders_and_names_what_is_missing() -> None:
    from jobs.predict import select_bands

    item = resolve_item(_s2_items()[0])
    picked = select_bands(item, ["B04", "B03", "B02"])
    assert [b.name for b in picked.bands] == ["B04", "B03", "B02"]
    with pytest.raises(KeyError, match=r"lacks band\(s\) \['B10'\].*B8A"):
        select_bands(item, ["B04", "B10"])

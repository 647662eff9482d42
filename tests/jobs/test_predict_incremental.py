"""jobs/predict.py --incremental: a scene and a later copy with a known changed block; chip-level reuse for the HCO
model through the real job, crop + halo for a local CNN through the same tile runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from torch import nn

import rsvheat
from jobs._incremental import StateDir
from jobs._predict_incremental import TileRunner
from jobs.predict import EXIT_OK, EXIT_USAGE, main
from pipeline.change import incremental_config
from pipeline.items import resolve_item
from pipeline.stac import read_catalog
from pipeline.synthetic_change import write_changed_copy
from pipeline.tiling import cut_item, scene_grid
from rsvheat.receptive import reuse_mode

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"
S2 = "sentinel-2-l2a"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("predict-inc")
    base = next(it for it in read_catalog(SYNTHETIC / "items-fc.json").items if it["collection"] == S2)
    later = write_changed_copy(base, root / "later", fraction=0.05, days_later=6, seed=3)
    catalog = root / "items.json"
    catalog.write_text(json.dumps([later.item, base]))  # out of order on purpose: the job sorts by date
    return {"root": root, "base": base, "later": later, "catalog": catalog}


def _changed(window: tuple[int, int], size: int, mask: np.ndarray, tau_chip: float = 0.005) -> bool:
    """Whether the ground-truth change covers more than tau_chip of the window's in-scene pixels."""
    col, row = window
    part = mask[row : row + size, col : col + size]
    return bool(part.sum() / part.size > tau_chip)


@pytest.mark.slow  # two prediction runs on a local Ray: about 20 s
def test_incremental_prediction_equals_a_full_run(ray_local: Any, scenes: dict[str, Any]) -> None:
    root = scenes["root"]
    bands = [b.name for b in resolve_item(scenes["base"]).bands]
    torch.manual_seed(0)
    model = rsvheat.build_task_model("segmentation", "vheat_test", 3, {"in_chans": {"optical": len(bands)}})
    stats = {"stats_hash": "t", "optical": {"mean": [1000.0] * len(bands), "std": [500.0] * len(bands)}}
    rsvheat.save_checkpoint(root / "seg.pt", model, bands={"optical": bands}, stats=stats)
    args = ["--model", str(root / "seg.pt"), "--catalog", str(scenes["catalog"]), "--window", "64", "--overlap", "16",
            "--output-kind", "probabilities"]
    assert main([*args, "--output", str(root / "full")]) == EXIT_OK
    # The ground-truth mask knows no clouds: score every pixel with data (the default would use the SCL raster).
    (root / "inc.yaml").write_text("incremental:\n  validity: {source: nodata}\n")
    assert main([*args, "--output", str(root / "inc"), "--incremental", "--state", str(root / "state"),
                 "--incremental-config", str(root / "inc.yaml")]) == EXIT_OK

    later = resolve_item(scenes["later"].item)
    name = later.safe_id
    with rasterio.open(root / "full" / f"{name}.tif") as a, rasterio.open(root / "inc" / f"{name}.tif") as b:
        full, inc = a.read(), b.read()
    np.testing.assert_array_equal(np.isnan(full), np.isnan(inc))
    np.testing.assert_allclose(inc[~np.isnan(inc)], full[~np.isnan(full)], atol=1e-5)

    windows = pq.read_table(root / "inc" / f"{name}.windows.parquet").to_pylist()
    with rasterio.open(scenes["later"].change_mask_path) as ds:
        mask = ds.read(1).astype(bool)
    for w in windows:
        changed = _changed((w["window_col"], w["window_row"]), 64, mask)
        assert changed == (w["reason"] == "changed")  # exactly the windows the change covers, overlaps included
        assert w["reused"] == (w["reason"] not in ("changed", "audit"))
        assert not w["subchip"]  # the HCO is global: whole windows only
        if w["reused"]:
            assert w["age_days"] == 6 and w["source_date"].startswith(scenes["base"]["properties"]["datetime"][:10])
        assert w["change_score_id"] == "index_delta"
    stac = json.loads((root / "inc" / f"{name}.json").read_text())
    assert stac["properties"]["rsvheat:incremental"]["mode"] == "incremental"
    assert stac["assets"]["windows"]["href"] == f"./{name}.windows.parquet"

    record = json.loads((root / "state" / "accounting.json").read_text())
    acc = record["accounting"]
    assert acc["scenes"] == 2 and acc["chips_recomputed"] + acc["chips_reused"] == acc["chips_total"]
    assert acc["reused_by_reason"].get("unchanged", 0) + acc["reused_by_reason"].get("below_tau", 0) == acc[
        "chips_reused"]
    assert [s["item_id"] for s in record["scenes"]] == [scenes["base"]["id"], scenes["later"].item["id"]]

    # The same scenes again: both were processed with this model, their COGs exist, nothing runs.
    assert main([*args, "--output", str(root / "inc"), "--incremental", "--state", str(root / "state"),
                 "--incremental-config", str(root / "inc.yaml")]) == EXIT_OK
    acc = json.loads((root / "state" / "accounting.json").read_text())["accounting"]
    assert (acc["scenes_skipped"], acc["chips_total"]) == (2, 0)


def test_incremental_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", "x.pt", "--catalog", str(SYNTHETIC / "items-fc.json"), "--output", str(tmp_path / "o"),
            "--incremental"]
    assert main(args) == EXIT_USAGE
    assert "--state DIR" in capsys.readouterr().err


def _local_cnn(channels: int) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=2, dilation=2),
                         nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()


def test_crop_and_halo_inside_windows_equals_a_full_recompute(scenes: dict[str, Any], tmp_path: Path) -> None:
    base, later = resolve_item(scenes["base"]), resolve_item(scenes["later"].item)
    cnn = _local_cnn(len(base.bands))
    mode = reuse_mode(cnn)
    assert mode.subchip and (mode.halo, mode.stride) == (4, 1)

    def normalize(images: np.ndarray) -> np.ndarray:
        return (images.astype(np.float32) - 1000.0) / 500.0

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(cnn(x), dim=1)

    # tau_chip 0: every window with a changed pixel is recomputed, so every output must equal a full recompute
    # (a window changed below tau_chip would keep its approximate cached output).
    cfg = incremental_config({"chip": {"tau_chip": 0.0}, "validity": {"source": "nodata"}})
    runner = TileRunner(normalize, forward, (mode.halo, mode.stride), 3, 4, StateDir.open(str(tmp_path / "s")), cfg,
                        "m", "p")
    grid = scene_grid(base)
    for item in (base, later):
        chips = list(cut_item(item, chip_size=64, stride=48))
        outcome = runner.scene(item, chips, (grid.height, grid.width), grid)
    with torch.inference_mode():
        for chip, probs in outcome.windows:
            full = forward(torch.from_numpy(normalize(np.ascontiguousarray(chip.image)[None])))[0].numpy()
            np.testing.assert_allclose(probs, full, atol=1e-5)
    used = {(p["window_col"], p["window_row"]): p for p in outcome.provenance}
    assert any(p["subchip"] for p in used.values())
    assert all(p["subchip"] == (p["reason"] == "changed") for p in used.values())
    assert outcome.stats["model_pixels"] < sum(p["reason"] == "changed" for p in used.values()) * 64 * 64

"""jobs/finetune.py end to end on a real local Ray cluster: every task, 2 trials under ASHA, pretrained transfer.

The data are a real ingest of the synthetic Sentinel-2 COGs (two tiles plus a repeat pass of one, 32 px chips) with
one generated label set per task; each run is the job's own ``main`` with 2 trials (``lr=grid(3e-3, 1e-7)``) of 2
epochs on 2 workers.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from pyproj import Transformer

import rsvheat
from jobs.finetune import main as finetune_main
from jobs.ingest import main as ingest_main
from jobs.pretrain import main as pretrain_main
from pipeline.label_rules import write_rule_labels
from pipeline.labels import (
    write_box_labels,
    write_change_pairs,
    write_majority_labels,
    write_raster_labels,
    write_scene_labels,
)
from pipeline.stac import read_catalog

pytestmark = pytest.mark.cluster

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"
S2 = "sentinel-2-l2a"
EPOCHS = 2


def _write_raster(path: Path, data: np.ndarray, like: str) -> str:
    with rasterio.open(like) as ref:
        profile = {"driver": "GTiff", "width": ref.width, "height": ref.height, "count": 1, "dtype": "uint8",
                   "crs": ref.crs, "transform": ref.transform, "nodata": 255}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[None])  # (H, W) -> (1, H, W)
    return str(path)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> Path:
    """The ingest plus one label set per task (names = task names)."""
    root = tmp_path_factory.mktemp("finetune")
    items = [it for it in read_catalog(SYNTHETIC / "items-fc.json").items if it["collection"] == S2]
    later = json.loads(json.dumps(items[0]))
    later["id"] = items[0]["id"] + "-repeat"
    when = datetime.fromisoformat(items[0]["properties"]["datetime"].replace("Z", "+00:00")) + timedelta(days=10)
    later["properties"]["datetime"] = when.isoformat().replace("+00:00", "Z")
    for item, names in zip([*items, later], (["forest", "water"], ["urban"], ["water"]), strict=True):
        item["properties"]["test:labels"] = names
    catalog = root / "items.json"
    catalog.write_text(json.dumps([*items, later]))
    data = root / "ds"
    assert ingest_main(["--catalog", str(catalog), "--output", str(data), "--chip-size", "32", "--no-progress"]) == 0
    ds = str(data)
    write_scene_labels(ds, "multilabel", property="test:labels", items=[*items, later], collection=S2)
    # Land cover from the near-infrared band itself (a learnable rule), on each tile's 10 m grid.
    for k, item in enumerate(items):
        b08 = item["assets"]["B08"]["href"]
        with rasterio.open(b08) as src:
            nir = src.read(1).astype(np.float32)
        classes = np.digitize(nir, np.quantile(nir[nir > 0], [0.33, 0.66])).astype(np.uint8)
        classes[nir == 0] = 255
        write_raster_labels(ds, "segmentation" if k == 0 else "segmentation-b", raster=_write_raster(
            root / f"lc{k}.tif", classes, b08), classes=["low", "mid", "high"], collection=S2, derived=True)
        if k == 0:  # two classes (NIR above / below its median): another class set than any pretraining one
            binary = (nir > np.median(nir[nir > 0])).astype(np.uint8)
            binary[nir == 0] = 255
            write_raster_labels(ds, "binary", raster=_write_raster(root / "binary.tif", binary, b08),
                                classes=["dark", "bright"], collection=S2, derived=True)
    write_majority_labels(ds, "classification", source="segmentation", min_fraction=0.4)
    b02 = items[0]["assets"]["B02"]["href"]
    with rasterio.open(b02) as src:
        rows, cols = np.indices((src.height, src.width))
        change = ((rows // 8 + cols // 8) % 2).astype(np.uint8)  # an 8 px checkerboard: every chip has both
        crs, transform = src.crs, src.transform
    write_change_pairs(ds, "change", collection=S2, change_raster=_write_raster(root / "change.tif", change, b02))
    to_lonlat = Transformer.from_crs(crs, "OGC:CRS84", always_xy=True)
    features = []
    for col, row in [(5, 5), (40, 12), (70, 70), (100, 30), (20, 90)]:  # 8 x 8 px boxes
        x0, y1 = transform @ (col, row)
        x1, y0 = transform @ (col + 8, row + 8)
        (lon0, lon1), (lat0, lat1) = to_lonlat.transform([x0, x1], [y0, y1])
        features.append({"type": "Feature", "properties": {"kind": "ship"}, "geometry": {"type": "Polygon",
                         "coordinates": [[[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]]}})
    boxes = root / "boxes.geojson"
    boxes.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    write_box_labels(ds, "detection", geojson=str(boxes), class_property="kind", classes=["ship"], collection=S2)
    return data


def _run(data: Path, out: Path, task: str, *extra: str) -> int:
    return finetune_main([
        "--task", task, "--data", str(data), "--labels", task, "--output", str(out), "--model", "vheat_test",
        "--epochs", str(EPOCHS), "--num-samples", "1", "--search", "lr=grid(3e-3, 1e-7)", "--num-workers", "2",
        "--cpus-per-worker", "0.4", "--trial-cpus", "0.1", "--batch-size", "2", "--split-block-chips", "1",
        "--val-fraction", "0.3", "--run-name", f"ft-{task}", "--max-concurrent-trials", "1", *extra,
    ])


def _check_outputs(out: Path, task: str, metric: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert len(rows) == 2 and {r["lr"] for r in rows} == {"0.003", "1e-07"}
    assert all(r["status"] == "TERMINATED" for r in rows), rows
    model, meta = rsvheat.load_checkpoint(out / "best.pt")
    assert meta["task"]["task"] == task and meta["extra"]["finetune"]["labels"] == task
    assert meta["bands"] and meta["stats_hash"]
    (stem, bands), = meta["bands"].items()
    x = torch.zeros(1, len(bands), 32, 32)
    with torch.no_grad():
        outputs = model(x, x, modality=stem) if task == "change" else model(x, modality=stem)
    assert outputs is not None  # the exported model runs as rebuilt from its own metadata
    item = json.loads((out / "best.json").read_text())
    assert item["properties"]["rsvheat:metrics"][metric] == pytest.approx(float(rows[0][metric]))
    assert item["assets"]["weights"]["file:size"] == (out / "best.pt").stat().st_size
    # ASHA (grace 1, reduction 2, one trial at a time): the second trial is stopped after epoch 1 exactly when it
    # trails the first one there.
    first, second = sorted(rows, key=lambda r: r["trial_id"])
    first_curve = [float(v) for v in first[f"{metric}_per_epoch"].split()]
    second_curve = [float(v) for v in second[f"{metric}_per_epoch"].split()]
    assert len(first_curve) == EPOCHS and first["stopped_early"] == "False"
    assert (second["stopped_early"] == "True") == (second_curve[0] < first_curve[0]), (first, second)
    assert len(second_curve) == int(second["epochs_run"])
    return rows


@pytest.mark.parametrize(("task", "metric"), [
    ("segmentation", "mIoU"), ("classification", "macro_f1"), ("multilabel", "mAP"), ("change", "f1"),
    ("detection", "mAP50"),
])
def test_every_task_end_to_end(labelled: Path, tmp_path: Path, task: str, metric: str) -> None:
    out = tmp_path / task
    assert _run(labelled, out, task) == 0
    _check_outputs(out, task, metric)


def test_pretrained_frozen_encoder_is_bit_identical_in_best(labelled: Path, tmp_path: Path) -> None:
    torch.manual_seed(7)
    bands = json.loads((labelled / "dataset.json").read_text())["collections"][S2]["bands"]
    source = rsvheat.create_model("rsvheat_test", in_chans={"sentinel_2": len(bands)}, img_size=32)
    encoder_pt = rsvheat.save_checkpoint(tmp_path / "encoder.pt", source, bands={"sentinel_2": bands})
    out = tmp_path / "frozen"
    assert _run(labelled, out, "segmentation", "--pretrained", str(encoder_pt), "--encoder", "frozen") == 0
    best = torch.load(out / "best.pt", weights_only=True)["state_dict"]
    meta = rsvheat.load_checkpoint_meta(out / "best.pt")
    assert meta["extra"]["finetune"]["transfer"]["source_stem"] == "sentinel_2"
    (target_stem,) = meta["bands"]  # the data's sensor, e.g. sentinel_2_l2a
    pretrained = source.state_dict()
    encoder_keys = [k for k in best if k.startswith("encoder.")]
    assert encoder_keys
    for key in encoder_keys:
        source_key = key[len("encoder."):].replace(f"stems.{target_stem}.", "stems.sentinel_2.")
        assert torch.equal(best[key], pretrained[source_key]), key  # loaded, and never trained


def test_unmatched_bands_fail_before_any_trial(labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    sar = rsvheat.create_model("vheat_test", in_chans={"sentinel_1": 2}, img_size=32)
    encoder_pt = rsvheat.save_checkpoint(tmp_path / "sar.pt", sar, bands={"sentinel_1": ["VV", "VH"]})
    assert _run(labelled, tmp_path / "bad", "segmentation", "--pretrained", str(encoder_pt)) == 2
    assert "No stem of" in capsys.readouterr().err and not (tmp_path / "bad" / "results.csv").exists()


def test_noisy_label_encoder_transfers_with_a_new_head_and_class_set(labelled: Path, tmp_path: Path) -> None:
    """Issue 13 item 3: the encoder.pt of ``jobs/pretrain.py --objective noisy-labels`` (rule-based labels, 3 classes,
    the default UPerNet head) fine-tunes a 2-class task with another decoder; the pretraining head is never loaded."""
    rules = write_rule_labels(str(labelled), "rules", collection=S2, max_ignored=1.0)
    pretrained = tmp_path / "noisy"
    assert pretrain_main([
        "--objective", "noisy-labels", "--labels", "rules", "--data", str(labelled), "--collections", S2,
        "--model", "rsvheat_test", "--output", str(pretrained), "--storage-path", str(tmp_path / "runs"),
        "--run-name", "noisy", "--num-workers", "1", "--cpus-per-worker", "0.5", "--batch-size", "2",
        "--max-steps", "3", "--warmup-steps", "1", "--checkpoint-every", "3", "--val-fraction", "0",
    ]) == 0
    meta = rsvheat.load_checkpoint_meta(pretrained / "encoder.pt")
    assert meta["extra"]["objective"] == "noisy-labels" and meta["extra"]["classes"] == rules.classes
    out = tmp_path / "ft"
    assert finetune_main([
        "--task", "segmentation", "--data", str(labelled), "--labels", "binary", "--output", str(out),
        "--pretrained", str(pretrained / "encoder.pt"), "--encoder", "frozen", "--head-kwargs", "channels=8",
        "pool_scales=[1, 2]", "--epochs", "1", "--num-samples", "1", "--lr", "3e-3", "--num-workers", "1",
        "--cpus-per-worker", "0.4", "--trial-cpus", "0.1", "--batch-size", "2", "--split-block-chips", "1",
        "--val-fraction", "0.3", "--run-name", "ft-noisy",
    ]) == 0
    best = torch.load(out / "best.pt", weights_only=True)["state_dict"]
    encoder = torch.load(pretrained / "encoder.pt", weights_only=True)["state_dict"]
    for key, value in encoder.items():  # the frozen encoder is the pretrained one, bit for bit
        assert torch.equal(best[f"encoder.{key}"], value), key
    full = torch.load(pretrained / "model_full.pt", weights_only=True)["state_dict"]
    head = {k: v for k, v in best.items() if k.startswith("head.") and v.is_floating_point() and v.ndim >= 2}
    assert head and not any(k in full and full[k].shape == v.shape and torch.equal(full[k], v)
                            for k, v in head.items())  # a new decoder and classifier, nothing of the old head
    assert best["head.classifier.weight"].shape[0] == 2 and full["head.classifier.weight"].shape[0] == 3
    model, best_meta = rsvheat.load_checkpoint(out / "best.pt")
    assert best_meta["extra"]["finetune"]["classes"] == ["dark", "bright"]
    (stem, bands), = meta["bands"].items()  # the pretraining stem of the S2 chips feeds the fine-tuned one
    assert best_meta["extra"]["finetune"]["transfer"]["source_stem"] == stem
    with torch.no_grad():
        assert model(torch.zeros(1, len(bands), 32, 32), modality=stem).shape == (1, 2, 32, 32)

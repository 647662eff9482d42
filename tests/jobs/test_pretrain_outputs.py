"""jobs/_pretrain_outputs.py: metrics.csv, loss.png and the mlm STAC Item of an exported encoder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from jobs._pretrain_outputs import (
    METRIC_COLUMNS,
    MLM_SCHEMA,
    combined_stats_hash,
    metrics_csv_text,
    mlm_item,
    plot_loss_png,
    read_metrics_csv,
)

ROWS = [
    {"step": s, "loss": 3.0 / s, "spa": 1.0 / s, "fre": 0.5 / s, "con": 1.5 / s, "lr": 1e-4, "chips_per_s": 10.0,
     "data_wait": 0.01, "stream": "a+b" if s % 2 else "c", "step_s": 0.4}
    for s in range(1, 11)
]


def test_metrics_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(metrics_csv_text(ROWS))
    assert path.read_text().splitlines()[0] == ",".join(METRIC_COLUMNS)
    back = read_metrics_csv(path)
    assert [r["step"] for r in back] == list(range(1, 11))
    assert back[1]["loss"] == pytest.approx(1.5) and back[0]["stream"] == "a+b"


def test_loss_png_draws_every_series(tmp_path: Path) -> None:
    from PIL import Image

    path = plot_loss_png(ROWS, tmp_path / "loss.png", title="t")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (500, 900, 3)
    for color in [(20, 20, 20), (31, 119, 180), (44, 160, 44), (214, 39, 40)]:  # loss, spa, fre, con
        assert (image == color).all(axis=-1).sum() > 50, color
    with pytest.raises(ValueError, match="No finite loss"):
        plot_loss_png([{"step": 1, "loss": float("nan")}], tmp_path / "x.png")


def test_mlm_item_describes_the_encoder(tmp_path: Path) -> None:
    import rsvheat
    from rsvheat.ssl import build_pretrainer, export_encoder

    pretrainer = build_pretrainer("vheat_test", {"s2": 3, "s1": 2})
    stems = {"s2": {"bands": ["B04", "B03", "B02"], "mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 2.0],
                    "stats_hash": "h2", "modality": "optical"},
             "s1": {"bands": ["vv", "vh"], "mean": [-11.0, -17.0], "std": [3.5, 3.3], "stats_hash": "h1",
                    "modality": "sar"}}
    stats = {"stats_hash": combined_stats_hash({"s2": "h2", "s1": "h1"}),
             **{n: {"mean": s["mean"], "std": s["std"]} for n, s in stems.items()}}
    path = tmp_path / "encoder.pt"
    export_encoder(pretrainer, path, bands={n: s["bands"] for n, s in stems.items()}, stats=stats,
                   lineage={"datasets": [{"uri": "x", "collections": {"c": {}}}]})
    item = mlm_item(path, run_name="r", model="vheat_test", model_kwargs={}, stems=stems, img_size=120,
                    num_features=pretrainer.encoder.feature_info[-1]["num_chs"],
                    total_parameters=sum(p.numel() for p in pretrainer.encoder.parameters()),
                    lineage={"datasets": [{"collections": {"c": {}}}]}, steps=5, framework_version="2",
                    hyperparameters={"lr": 1e-4})
    json.dumps(item)  # plain JSON
    props = item["properties"]
    assert MLM_SCHEMA in item["stac_extensions"] and props["mlm:framework"] == "pytorch"
    assert props["mlm:architecture"] == "vheat_test"
    inputs = {i["name"]: i for i in props["mlm:input"]}
    assert inputs["s1"]["bands"] == ["vv", "vh"] and inputs["s1"]["input"]["shape"] == [-1, 2, 120, 120]
    assert inputs["s2"]["value_scaling"][2] == {"type": "z-score", "mean": 3.0, "stddev": 2.0}
    asset = item["assets"]["weights"]
    assert asset["href"] == "./encoder.pt" and "mlm:model" in asset["roles"]
    assert asset["file:checksum"] == "1220" + hashlib.sha256(path.read_bytes()).hexdigest()
    _, meta = rsvheat.load_checkpoint(path)
    assert meta["bands"]["s1"] == ["vv", "vh"] and meta["stats_hash"] == stats["stats_hash"]

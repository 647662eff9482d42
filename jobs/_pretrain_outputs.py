"""What a pretraining run leaves in ``--output``: ``metrics.csv``, ``loss.png`` and the ``encoder.json`` STAC Item.

``encoder.pt`` itself is written by :func:`rsvheat.ssl.export_encoder`; ``encoder.json`` describes it with the STAC
Machine Learning Model extension (``mlm``, v1.5.0): architecture, one ``mlm:input`` per stem with its band order,
shape and z-score ``value_scaling`` from the dataset stats, the feature-pyramid output, the framework, and an asset
with roles ``mlm:model``/``mlm:weights`` pointing at ``encoder.pt``. See ``docs/pretrain-job.md``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "METRIC_COLUMNS",
    "MLM_SCHEMA",
    "combined_stats_hash",
    "metrics_csv_text",
    "mlm_item",
    "plot_loss_png",
    "read_metrics_csv",
]

METRIC_COLUMNS = ("step", "loss", "spa", "fre", "con", "lr", "chips_per_s", "data_wait", "step_s", "stream", "wall_s")
MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.5.0/schema.json"
FILE_SCHEMA = "https://stac-extensions.github.io/file/v2.1.0/schema.json"


def metrics_csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = METRIC_COLUMNS) -> str:
    """``rows`` (one per logged step) as CSV text with ``columns`` (default :data:`METRIC_COLUMNS`) in that order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    return buffer.getvalue()


def read_metrics_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv``; numbers parsed (``step`` as int), ``stream`` kept as text."""
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                if key == "stream" or value in ("", None):
                    parsed[key] = value
                elif key == "step":
                    parsed[key] = int(value)
                else:
                    parsed[key] = float(value)
            rows.append(parsed)
    return rows


def plot_loss_png(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str = "",
                  terms: Sequence[str] = ("spa", "fre", "con")) -> Path:
    """Draw the loss and its ``terms`` over steps (:func:`rsvheat.plot.line_plot_png`) and save a PNG.

    Raises:
        ValueError: no row has a finite loss.
    """
    from rsvheat.plot import Series, line_plot_png

    if not any(_finite(r.get("loss")) for r in rows):
        raise ValueError(f"No finite loss in {len(rows)} metric rows; nothing to plot for {path}.")
    palette = [(31, 119, 180), (44, 160, 44), (214, 39, 40), (148, 103, 189), (255, 127, 14)]
    colors = {"loss": (20, 20, 20), **{t: palette[i % len(palette)] for i, t in enumerate(terms)}}
    series = {key: Series([(r["step"], float(r[key])) for r in rows if _finite(r.get(key))], color,
                          width=3 if key == "loss" else 1) for key, color in colors.items()}
    return line_plot_png(series, path, title=title or "pretraining loss", xlabel="step")


def _finite(value: Any) -> bool:
    try:
        return value not in ("", None) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def combined_stats_hash(per_stem: Mapping[str, str]) -> str:
    """One hash over the per-stem ``stats_hash`` values (an encoder records one ``stats_hash``)."""
    text = json.dumps(dict(sorted(per_stem.items())), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mlm_inputs(stems: Mapping[str, Mapping[str, Any]], img_size: int) -> list[dict[str, Any]]:
    """``mlm:input`` entries, one per stem: bands, shape, z-score scaling.

    Args:
        stems: per stem ``{"bands": [...], "mean": [...], "std": [...], "modality": str}``.
        img_size: the nominal chip size.
    """
    inputs = []
    for name, stem in stems.items():
        bands = list(stem["bands"])
        inputs.append(
            {
                "name": name,
                "description": f"{stem.get('modality', 'optical')} stem `{name}`; pass modality={name!r}",
                "bands": bands,
                "input": {
                    "shape": [-1, len(bands), img_size, img_size],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "float32",
                },
                "value_scaling": [
                    {"type": "z-score", "mean": float(m), "stddev": float(s)}
                    for m, s in zip(stem["mean"], stem["std"], strict=True)
                ],
                "resize_type": None,
                "pre_processing_function": None,
            }
        )
    return inputs


def weights_asset(path: Path, title: str) -> dict[str, Any]:
    """The ``mlm:model`` asset of a checkpoint file: relative href, size and multihash sha256."""
    return {
        "href": f"./{path.name}",
        "title": title,
        "type": "application/octet-stream; application=pytorch",
        "roles": ["mlm:model", "mlm:weights"],
        "mlm:artifact_type": "torch.save",
        "file:size": path.stat().st_size,
        "file:checksum": "1220" + _sha256(path),  # multihash: sha2-256
    }


def mlm_item(
    encoder_path: str | os.PathLike[str],
    *,
    run_name: str,
    model: str,
    model_kwargs: Mapping[str, Any],
    stems: Mapping[str, Mapping[str, Any]],
    img_size: int,
    num_features: int,
    total_parameters: int,
    lineage: Mapping[str, Any],
    steps: int,
    framework_version: str,
    hyperparameters: Mapping[str, Any],
) -> dict[str, Any]:
    """A STAC Item (``mlm`` extension) describing ``encoder.pt``.

    Args:
        encoder_path: the exported encoder (its size and sha256 go into the asset; the href is relative).
        stems: per stem ``{"bands": [...], "mean": [...], "std": [...], "stats_hash": str, "modality": str}``.
        img_size: the chip size pretrained on (any size works at inference; this is the nominal one).
        num_features: channels of the last pyramid stage.
    """
    path = Path(encoder_path)
    inputs = mlm_inputs(stems, img_size)
    properties = {
        "datetime": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "description": f"Self-supervised {model} encoder pretrained by jobs/pretrain.py (run {run_name!r}, "
        f"{steps} steps); load with rsvheat.load_checkpoint.",
        "mlm:name": f"{model}-{run_name}",
        "mlm:architecture": model,
        "mlm:tasks": ["similarity-search"],
        "mlm:framework": "pytorch",
        "mlm:framework_version": framework_version,
        "mlm:memory_size": path.stat().st_size,
        "mlm:total_parameters": int(total_parameters),
        "mlm:pretrained": True,
        "mlm:pretrained_source": "self-supervised (docs/pretrain-job.md) on " + ", ".join(
            sorted({c for d in lineage.get("datasets", []) for c in d.get("collections", {})})
        ),
        "mlm:accelerator": None,
        "mlm:accelerator_constrained": False,
        "mlm:hyperparameters": {**dict(hyperparameters), "model_kwargs": dict(model_kwargs)},
        "mlm:input": inputs,
        "mlm:output": [
            {
                "name": "features",
                "description": "last-stage feature map (forward_features(x, modality)[-1]); stages 1-3 at strides "
                "4/8/16 are also available",
                "tasks": ["similarity-search"],
                "result": {
                    "shape": [-1, int(num_features), math.ceil(img_size / 32), math.ceil(img_size / 32)],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32",
                },
                "post_processing_function": None,
            }
        ],
        "rsvheat:lineage": dict(lineage),
    }
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA, FILE_SCHEMA],
        "id": f"{model}-{run_name}",
        "geometry": None,
        "properties": properties,
        "links": [],
        "assets": {
            "weights": weights_asset(path, f"{model} encoder weights and metadata (rsvheat.checkpoint format)")
        },
    }

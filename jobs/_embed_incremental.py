"""``jobs/embed.py --incremental --state DIR``: embed only the chips that changed since the tile's reference
(docs/change-aware.md, docs/operations.md §Incremental runs).

1. **Change stage** (driver, per tile, items in acquisition order): read each new item's shard once, mosaic its chips
   onto the tile grid, compare with the tile's reference (validity, phase correlation, change score, threshold,
   morphology), decide every chip (tau_chip, max_age, versions), pick the drift-audit sample, fold the new valid
   pixels into the reference. Decisions need no model output, so a whole run is planned before any model runs.
2. **Embed** the chips to recompute plus the audit sample with the same :class:`jobs.embed.ChipEmbedder` actors as a
   full run (``ray.data.from_arrow`` of the selected rows: pixels are read once).
3. **Merge**: a reused chip gets its cached embedding (bit-identical bytes), a recomputed one the fresh vector; the
   audit compares cached and fresh for the sample. The cache, reference and log are committed only now, so a run
   that fails before this leaves the state as it was.
4. **Write** ``embeddings.parquet`` (the rows of earlier runs for items they processed, plus this run's), with
   ``reused``, ``age_days``, ``source_date``, ``change_score_id``, ``reason`` and ``changed_frac`` per chip;
   ``DIR/accounting.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs._incremental import StateDir, Stopwatch, preproc_version, run_stamp, tile_key
from pipeline.change import (
    Accounting,
    CacheEntry,
    ChipDecision,
    ChipWindow,
    IncrementalConfig,
    ReferenceState,
    audit_report,
    audit_sample,
    day_number,
    decide_chips,
    run_change_stage,
)
from pipeline.change.audit import cosine_distance
from pipeline.change.config import ValidityConfig
from pipeline.change.scores import score_bands
from pipeline.dataset import read_index
from pipeline.manifest import OutputStore
from pipeline.shards import decode_images, decode_valid

__all__ = [
    "PROVENANCE_FIELDS",
    "IncrementalEmbedding",
    "commit_state",
    "history",
    "merge_outputs",
    "plan_incremental",
    "preproc_of",
    "provenance_schema",
    "write_history",
]

log = logging.getLogger("jobs.embed")

_SHARD_COLUMNS = ["chip_id", "grid_cell", "transform", "window", "image", "dtype", "shape", "valid"]
_ROW_COLUMNS = ["chip_id", "image", "dtype", "shape", "valid"]
PROVENANCE_FIELDS = [
    pa.field("reused", pa.bool_(), nullable=False),
    pa.field("age_days", pa.int32(), nullable=False),
    pa.field("source_date", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("change_score_id", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("changed_frac", pa.float32(), nullable=False),
]


def provenance_schema(base: pa.Schema) -> pa.Schema:
    """``base`` (the full run's columns) plus the per-chip provenance of incremental runs."""
    return pa.schema([*base, *PROVENANCE_FIELDS], metadata=base.metadata)


@dataclass
class _Item:
    item_id: str
    when: datetime
    shard: str
    mgrs: str | None
    epsg: int


@dataclass
class _ItemPlan:
    """What the change stage decided for one item."""

    item: _Item
    tile: str
    mode: str  # incremental | out_of_order | version | misregistered | skipped
    decisions: list[ChipDecision]
    chip_ids: dict[str, str]  # grid_cell -> chip_id
    audit: list[str]  # grid cells in the audit sample
    stats: dict[str, Any]


@dataclass
class _TileState:
    key: str
    reference: ReferenceState | None
    cache: dict[str, CacheEntry]
    log: dict[str, Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # grid_cell -> cached embedding
    sources: dict[str, datetime] = field(default_factory=dict)  # grid_cell -> cached source date
    computed: dict[str, tuple[str, float]] = field(default_factory=dict)  # grid_cell -> (computed_at, changed_frac)
    touched: bool = False


@dataclass
class IncrementalEmbedding:
    """The planned run: per-item decisions, the rows to embed, and the state to commit afterwards."""

    items: list[_ItemPlan]
    selected: list[pa.Table]
    tiles: dict[str, _TileState]
    accounting: Accounting
    validity_source: str


def _items(index: pa.Table) -> list[_Item]:
    firsts: dict[str, _Item] = {}
    cols = {n: index[n].to_pylist() for n in ("item_id", "datetime", "shard_path", "mgrs_tile", "utm_epsg")}
    for i, item_id in enumerate(cols["item_id"]):
        if item_id not in firsts:
            firsts[item_id] = _Item(item_id, cols["datetime"][i], cols["shard_path"][i], cols["mgrs_tile"][i],
                                    int(cols["utm_epsg"][i]))
    return sorted(firsts.values(), key=lambda it: (it.when, it.item_id))


def _grid(table: pa.Table) -> tuple[tuple[float, float], float]:
    """The item grid's top-left corner and pixel size, from its first chip's transform and window."""
    a, _, c, _, e, f = table["transform"][0].as_py()
    col, row = table["window"][0].as_py()[:2]
    return (c - col * a, f - row * e), float(a)


def _mosaic(table: pa.Table) -> tuple[np.ndarray, np.ndarray, list[ChipWindow], dict[str, str]]:
    """The item's chips on its grid: ``(C, H, W)`` pixels, ``(H, W)`` valid, chip windows, grid_cell -> chip_id."""
    images = decode_images(table)  # (N, C, h, w)
    valid = decode_valid(table)  # (N, h, w)
    windows = [tuple(w) for w in table["window"].to_pylist()]
    height = max(r + h for _, r, _, h in windows)
    width = max(c + w for c, _, w, _ in windows)
    scene = np.zeros((images.shape[1], height, width), images.dtype)
    mask = np.zeros((height, width), bool)
    for img, ok, (c, r, w, h) in zip(images, valid, windows, strict=True):
        scene[:, r : r + h, c : c + w] = img
        mask[r : r + h, c : c + w] |= ok
    cells = table["grid_cell"].to_pylist()
    chips = [ChipWindow(g, w) for g, w in zip(cells, windows, strict=True)]  # type: ignore[arg-type]
    return scene, mask, chips, dict(zip(cells, table["chip_id"].to_pylist(), strict=True))


def _load_tile(state: StateDir, key: str) -> _TileState:
    tile = state.tile(key)
    reference = ReferenceState.load(tile / "reference") if (tile / "reference").is_dir() else None
    ts = _TileState(key=key, reference=reference, cache={}, log=state.read_log(key))
    path = tile / "embed_cache.parquet"
    if path.is_file():
        table = pq.read_table(path)
        dim = table.schema.field("embedding").type.list_size
        vectors = table["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, dim)  # (N*D,) -> (N, D)
        for i, row in enumerate(table.drop_columns(["embedding"]).to_pylist()):
            day = day_number(row["source_date"])
            ts.cache[row["grid_cell"]] = CacheEntry(day, row["model_version"], row["preproc_version"])
            ts.vectors[row["grid_cell"]] = vectors[i]
            ts.sources[row["grid_cell"]] = row["source_date"]
            ts.computed[row["grid_cell"]] = (row["computed_at"], float(row["changed_frac"]))
    return ts


def _validity(cfg: IncrementalConfig) -> ValidityConfig:
    if cfg.validity.source == "nodata":
        return cfg.validity
    # NOTE: shards keep the no-data mask but not the SCL raster; clouds were already filtered per chip at ingest.
    return ValidityConfig(source="nodata", dilate_px=cfg.validity.dilate_px)


def plan_incremental(
    store: OutputStore,
    collection: str,
    bands: Sequence[str],
    state: StateDir,
    cfg: IncrementalConfig,
    *,
    model_version: str,
    preproc: str,
) -> IncrementalEmbedding:
    """Run the change stage for every item of ``collection`` not yet processed, in acquisition order per tile."""
    index = read_index(store, collection)
    validity = _validity(cfg)
    if validity is not cfg.validity:
        log.warning("validity.source %r: the ingest output keeps no quality raster; using its no-data mask",
                    cfg.validity.source)
    inc = IncrementalConfig(**{**cfg.__dict__, "validity": validity})
    tiles: dict[str, _TileState] = {}
    plans: list[_ItemPlan] = []
    selected: list[pa.Table] = []
    acc = Accounting()
    for item in _items(index):
        table = pq.read_table(store.path(item.shard), columns=_SHARD_COLUMNS, filesystem=store.filesystem)
        acc.bytes_read += int(table.nbytes)
        origin, gsd = _grid(table)
        key = tile_key(item.epsg, origin, gsd, item.mgrs)
        ts = tiles.get(key) or _load_tile(state, key)
        tiles[key] = ts
        day = day_number(item.when)
        seen = ts.log["items"].get(item.item_id)
        if seen is not None and seen.get("model_version") == model_version and seen.get("preproc_version") == preproc:
            acc.scenes_skipped += 1
            plans.append(_ItemPlan(item, key, "done", [], {}, [], {}))
            continue
        watch = Stopwatch()
        with watch:
            scene, data_valid, chips, chip_ids = _mosaic(table)
            kept = score_bands(inc.change_score, bands)
            ref = ts.reference
            if ref is None or ref.meta.get("band_index") != kept:  # first scene, or another score's bands: restart
                ref = ReferenceState.empty(inc.n_obs, scene.shape, scene.dtype, {"tile": key}, band_index=kept)
            ref = ref.grown(*scene.shape[1:])
            if ref.count.shape != scene.shape[1:]:  # a scene smaller than the reference: pad it, never observed
                padded = np.zeros((scene.shape[0], *ref.count.shape), scene.dtype)
                padded[:, : scene.shape[1], : scene.shape[2]] = scene
                mask = np.zeros(ref.count.shape, bool)
                mask[: scene.shape[1], : scene.shape[2]] = data_valid
                scene, data_valid = padded, mask
            result = run_change_stage(ref, scene, data_valid, bands=bands, cfg=inc, halo=0)
            last = ts.log.get("last_day")
            force = None
            mode = "incremental"
            if seen is not None:
                force, mode = "version", "version"
            elif last is not None and day < last:
                force, mode = "out_of_order", "out_of_order"
            elif result.misregistered:
                force, mode = "misregistered", "misregistered"
            if mode == "misregistered" and inc.coreg.misregistration_policy == "skip":
                acc.scenes_skipped += 1
                plans.append(_ItemPlan(item, key, "skipped", [], chip_ids, [], {"shift_px": result.shift_px}))
                continue
            decisions = decide_chips(
                chips, changed=result.changed, newly_valid=result.classes.newly_valid, valid_now=result.valid_now,
                cache=ts.cache, day=day, model_version=model_version, preproc_version=preproc, cfg=inc.chip,
                force=force,  # type: ignore[arg-type]
            )
            sample = audit_sample(decisions, inc.audit, inc.chip, f"{key}/{item.item_id}")
            sampled = {d.key for d in sample}
            if mode == "incremental":
                ref.fold(scene, result.valid_now, day)
                ts.reference = ref
                for d in decisions:
                    if d.recompute or d.key in sampled:
                        ts.cache[d.key] = CacheEntry(day, model_version, preproc)
                ts.log["last_day"] = day if last is None else max(last, day)
            ts.touched = True
            ts.log["items"][item.item_id] = {"day": day, "model_version": model_version, "preproc_version": preproc,
                                             "mode": mode}
        acc.change_stage_cpu_seconds += watch.cpu  # mosaic, change stage, decision and fold
        acc.add(decisions, inc.chip.tau_chip)
        acc.chips_audited += len(sample)
        wanted = {chip_ids[d.key] for d in decisions if d.recompute} | {chip_ids[d.key] for d in sample}
        if wanted:
            rows = table.select(_ROW_COLUMNS)
            selected.append(rows.filter(pc.is_in(rows["chip_id"], pa.array(sorted(wanted), pa.string()))))
        stats = {"shift_px": result.shift_px, "tau_pix": result.tau_pix, "changed_pixel_frac":
                 round(result.changed_pixel_frac, 6), "newly_valid_px": int(result.classes.newly_valid.sum())}
        plans.append(_ItemPlan(item, key, mode, decisions, chip_ids, sorted(sampled), stats))
    return IncrementalEmbedding(plans, selected, tiles, acc, validity.source)


def merge_outputs(
    run: IncrementalEmbedding,
    fresh: Mapping[str, np.ndarray],
    cfg: IncrementalConfig,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, Any]]:
    """Resolve every planned chip to its output vector and provenance; returns (rows, vectors by chip id, audit)."""
    rows: list[dict[str, Any]] = []
    vectors: dict[str, np.ndarray] = {}
    audited: list[ChipDecision] = []
    distances: list[float] = []
    stamp = run_stamp()
    for plan in run.items:
        if plan.mode in ("done", "skipped"):
            continue
        ts = run.tiles[plan.tile]
        when = plan.item.when.astimezone(UTC)
        in_sample = set(plan.audit)
        for d in plan.decisions:
            chip_id = plan.chip_ids[d.key]
            cached = ts.vectors.get(d.key)
            if d.recompute or d.key in in_sample:
                vec = np.asarray(fresh[chip_id], np.float32)
                if not d.recompute and cached is not None:
                    audited.append(d)
                    distances.append(float(cosine_distance(cached[None], vec[None])[0]))
                source, reused = when, False
                if plan.mode == "incremental":
                    ts.vectors[d.key], ts.sources[d.key] = vec, when
                    ts.computed[d.key] = (stamp, d.changed_frac)
            else:
                vec, source, reused = cached, ts.sources[d.key], True  # type: ignore[assignment]
            vectors[chip_id] = vec
            rows.append({
                "chip_id": chip_id, "reused": reused, "age_days": int((when - source).days),
                "source_date": source, "change_score_id": cfg.change_score,
                "reason": "audit" if d.key in in_sample else d.reason, "changed_frac": float(d.changed_frac),
            })
    report = audit_report(audited, cfg.audit, cfg.chip, cos=np.asarray(distances))
    return rows, vectors, report.to_dict()


def commit_state(run: IncrementalEmbedding, state: StateDir, model_version: str, preproc: str) -> None:
    """Write each touched tile's reference, chip cache and log (reference first; the log last marks it done)."""
    for ts in run.tiles.values():
        if not ts.touched:
            continue
        tile = state.tile(ts.key)
        if ts.reference is not None:
            ts.reference.save(tile / "reference")
        if ts.vectors:
            cells = sorted(ts.vectors)
            dim = len(ts.vectors[cells[0]])
            table = pa.table({
                "grid_cell": cells,
                "source_date": pa.array([ts.sources[c] for c in cells], pa.timestamp("us", tz="UTC")),
                "model_version": [ts.cache[c].model_version for c in cells],
                "preproc_version": [ts.cache[c].preproc_version for c in cells],
                "computed_at": [ts.computed.get(c, ("", 0.0))[0] for c in cells],
                "changed_frac": pa.array([ts.computed.get(c, ("", 0.0))[1] for c in cells], pa.float32()),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.stack([ts.vectors[c] for c in cells]).reshape(-1).astype(np.float32)), dim),
            })
            tmp = tile / ".embed_cache.parquet.tmp"
            pq.write_table(table, tmp, compression="zstd")
            tmp.replace(tile / "embed_cache.parquet")
        state.write_log(ts.key, ts.log)


def history(state: StateDir) -> pa.Table | None:
    """Every embeddings row earlier incremental runs wrote (``DIR/embed_rows.parquet``), or ``None``."""
    path = state.root / "embed_rows.parquet"
    return pq.read_table(path) if path.is_file() else None


def write_history(state: StateDir, table: pa.Table) -> None:
    """Replace ``DIR/embed_rows.parquet``."""
    tmp = state.root / ".embed_rows.parquet.tmp"
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(state.root / "embed_rows.parquet")


def preproc_of(plan: Any, bands: Sequence[str], processing_versions: Sequence[str]) -> str:
    """The preprocessing version of an embedding run: stem, bands, stats and the ingest's processing versions."""
    return preproc_version(kind="embed", modality=plan.modality, bands=list(bands), mean=plan.mean, std=plan.std,
                           processing=sorted(set(processing_versions)), normalizer="invalid->0")


"""``jobs/predict.py --incremental --state DIR``: predict only the windows that changed since the tile's reference
(docs/change-aware.md, docs/operations.md §Incremental runs).

Per scene, in acquisition order per tile (one actor call holds a tile's scenes): read the scene's windows once, mosaic
them onto the tile grid, run the change stage against the tile's reference, decide every window, and then

* **reuse** the cached probabilities of unchanged windows (bit-identical float32 values);
* **recompute** changed windows: with crop + halo inside the window when the model is made only of local ops
  (:func:`rsvheat.receptive.reuse_mode`), exact to 1e-5; whole windows otherwise (HCO, Heracles, attention);
* **audit** a seeded, stratified sample of reused windows (fresh class map against the cached one).

The windows are then blended exactly as a full run blends them, so the scene COG equals a full run's wherever its
windows are bit-identical, and the state (reference, window cache, log) is written after the COG.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs._incremental import StateDir, Stopwatch, run_stamp, tile_key
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
from pipeline.change.audit import pixel_agreement
from pipeline.change.boxes import change_boxes
from pipeline.change.config import ValidityConfig
from pipeline.change.scores import score_bands
from pipeline.records import Chip, ResolvedItem

__all__ = ["SceneOutcome", "TileRunner", "WindowCache"]

Forward = Callable[[Any], Any]  # torch (B, C, h, w) normalised -> (B, K, h', w') probabilities


@dataclass
class WindowCache:
    """Cached window outputs of one tile: one ``(K, w, w)`` float32 ``.npy`` per window under ``predict_cache/``,
    listed with its provenance in ``predict_cache/index.parquet``.

    A run writes only the windows it recomputed (under new file names), then replaces the index, then deletes the
    files the index no longer names: a crash leaves the previous index and its files intact.
    """

    root: Path
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, tile: Path) -> WindowCache:
        """Read a tile's cache index (empty when absent); window arrays are read on demand."""
        root = tile / "predict_cache"
        index = root / "index.parquet"
        if not index.is_file():
            return cls(root)
        return cls(root, {r["key"]: r for r in pq.read_table(index).to_pylist()})

    def get(self, key: str) -> np.ndarray | None:
        """The cached ``(K, w, w)`` probabilities of window ``key``."""
        entry = self.meta.get(key)
        return None if entry is None else np.load(self.root / entry["file"])

    def entries(self) -> dict[str, CacheEntry]:
        """The decision's view of the cache."""
        return {k: CacheEntry(int(m["source_day"]), m["model_version"], m["preproc_version"]) for k, m in
                self.meta.items()}

    def save(self, fresh: dict[str, np.ndarray], meta: dict[str, dict[str, Any]], stamp: str) -> None:
        """Store the ``fresh`` windows and make ``meta`` (every window's provenance, fresh or kept) the index."""
        self.root.mkdir(parents=True, exist_ok=True)
        tag = "".join(ch for ch in stamp if ch.isalnum())
        entries = {k: {key: v for key, v in m.items() if key != "key"} for k, m in meta.items()}
        for k, probs in fresh.items():
            name = f"{k}-{tag}-{os.getpid()}.npy"
            np.save(self.root / name, np.ascontiguousarray(probs, np.float32))
            entries[k]["file"] = name
        for k, entry in entries.items():
            if "file" not in entry:  # kept from the previous index
                entry["file"] = self.meta[k]["file"]
        tmp = self.root / f".index.{os.getpid()}.parquet"
        pq.write_table(pa.Table.from_pylist([{"key": k, **entries[k]} for k in sorted(entries)]), tmp)
        os.replace(tmp, self.root / "index.parquet")
        named = {e["file"] for e in entries.values()}
        for path in self.root.glob("*.npy"):
            if path.name not in named:
                path.unlink()
        self.meta = {k: {"key": k, **entries[k]} for k in entries}


@dataclass
class SceneOutcome:
    """One scene's windows (in cut order), provenance and counters."""

    windows: list[tuple[Chip, np.ndarray]]
    provenance: list[dict[str, Any]]
    accounting: Accounting
    audit: dict[str, Any]
    mode: str
    stats: dict[str, Any]


def _key(chip: Chip) -> str:
    return f"{chip.window[0]}_{chip.window[1]}"


def _mosaic(chips: Sequence[Chip], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    c = chips[0].image.shape[0]
    scene = np.zeros((c, height, width), chips[0].image.dtype)
    valid = np.zeros((height, width), bool)
    for chip in chips:
        col, row, w, h = chip.window
        hh, ww = min(h, height - row), min(w, width - col)
        scene[:, row : row + hh, col : col + ww] = chip.image[:, :hh, :ww]
        valid[row : row + hh, col : col + ww] |= chip.valid[:hh, :ww]
    return scene, valid


class TileRunner:
    """Runs the incremental path for the scenes of one tile, in order (used by the predict actor and the benchmark).

    Args:
        normalize: ``(B, C, w, w)`` native pixels -> float32 model input.
        forward: the model plus its output activation, on torch tensors (any input size).
        subchip: ``(halo, stride)`` when the model supports crop + halo, else ``None`` (whole windows).
        num_classes, batch_size: as in the full run.
        state: the ``--state`` directory; ``cfg``: the ``incremental:`` block.
        model_version, preproc: what outputs are computed with now.
    """

    def __init__(
        self, normalize: Callable[[np.ndarray], np.ndarray], forward: Forward, subchip: tuple[int, int] | None,
        num_classes: int, batch_size: int, state: StateDir, cfg: IncrementalConfig, model_version: str, preproc: str,
    ) -> None:
        self.normalize, self.forward, self.subchip = normalize, forward, subchip
        self.num_classes, self.batch_size = num_classes, batch_size
        self.state, self.model_version, self.preproc = state, model_version, preproc
        self.cfg = cfg

    def _run(self, images: np.ndarray) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(self.normalize(images[start : start + self.batch_size]))
            with torch.inference_mode():
                out.append(self.forward(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def _crop_and_halo(self, chip: Chip, cached: np.ndarray, changed: np.ndarray) -> tuple[np.ndarray, int]:
        import torch

        from rsvheat.subchip import subchip_forward

        halo, stride = self.subchip or (0, 1)
        col, row, w, h = chip.window
        local = np.zeros((h, w), bool)
        part = changed[row : row + h, col : col + w]
        local[: part.shape[0], : part.shape[1]] = part
        x = torch.from_numpy(self.normalize(np.ascontiguousarray(chip.image)[None])[0])
        with torch.inference_mode():
            out, work = subchip_forward(self.forward, x, torch.from_numpy(cached), change_boxes(local), halo, stride)
        return out.float().numpy(), work

    def tile_of(self, item: ResolvedItem, grid: Any) -> str:
        """The tile key of an item on ``grid`` (MGRS tile when the item names one)."""
        mgrs = item.properties.get("s2:mgrs_tile")
        return tile_key(grid.epsg, (grid.transform.c, grid.transform.f), grid.gsd, str(mgrs) if mgrs else None)

    def done(self, item: ResolvedItem, grid: Any) -> bool:
        """Whether this tile's log has the item, processed in order with the current model and preprocessing."""
        seen = self.state.read_log(self.tile_of(item, grid))["items"].get(item.item_id)
        return bool(seen) and seen.get("mode") == "incremental" and seen.get("model_version") == self.model_version \
            and seen.get("preproc_version") == self.preproc

    def scene(self, item: ResolvedItem, chips: list[Chip], grid_shape: tuple[int, int], grid: Any) -> SceneOutcome:
        """Decide, compute and reuse the windows of one scene; updates and saves the tile's state."""
        cfg = self.cfg
        height, width = grid_shape
        key = self.tile_of(item, grid)
        tile = self.state.tile(key)
        log = self.state.read_log(key)
        acc = Accounting()
        watch = Stopwatch()
        day = day_number(item.datetime)
        with watch:
            windows = [c for c in chips if c.valid.any()]  # the full run skips windows without data too
            scene, data_valid = _mosaic(chips, height, width)
            kept = score_bands(cfg.change_score, [b.name for b in item.bands])
            ref = ReferenceState.load(tile / "reference") if (tile / "reference").is_dir() else None
            if ref is None or ref.meta.get("band_index") != kept:  # first scene, or another score's bands: restart
                ref = ReferenceState.empty(cfg.n_obs, scene.shape, scene.dtype, {"tile": key}, band_index=kept)
            ref = ref.grown(height, width)
            validity = cfg.validity if item.quality is not None and cfg.validity.source == "scl" else ValidityConfig(
                source="nodata", dilate_px=cfg.validity.dilate_px)
            inc = IncrementalConfig(**{**cfg.__dict__, "validity": validity})
            scl = _read_scl(item, grid) if validity.source == "scl" else None
            halo = self.subchip[0] if self.subchip else 0
            result = run_change_stage(ref, scene, data_valid, bands=[b.name for b in item.bands], cfg=inc, halo=halo,
                                      scl=scl)
            cache = WindowCache.load(tile)
            seen = log["items"].get(item.item_id)
            last = log.get("last_day")
            mode, force = "incremental", None
            if seen is not None:
                mode, force = "reprocessed", "version"
            elif last is not None and day < last:
                mode, force = "out_of_order", "out_of_order"
            elif result.misregistered:
                mode, force = "misregistered", "misregistered"
            decisions = decide_chips(
                [ChipWindow(_key(c), c.window) for c in windows], changed=result.changed,
                newly_valid=result.classes.newly_valid, valid_now=result.valid_now, cache=cache.entries(), day=day,
                model_version=self.model_version, preproc_version=self.preproc, cfg=inc.chip, force=force,  # type: ignore[arg-type]
            )
            sample = audit_sample(decisions, inc.audit, inc.chip, f"{key}/{item.item_id}")
        acc.change_stage_cpu_seconds += watch.cpu
        acc.bytes_read += int(scene.nbytes)  # the scene's pixels (read once, by cut_item, for both stages)
        acc.add(decisions, inc.chip.tau_chip)
        acc.chips_audited += len(sample)
        by_key = {d.key: d for d in decisions}
        sampled = {d.key for d in sample}
        outputs: dict[str, np.ndarray] = {}
        model = Stopwatch()
        full_keys = [d.key for d in decisions if d.recompute and not (
            self.subchip and d.reason == "changed" and d.key in cache.meta)]  # cached: crop + halo on top of it
        crop_keys = [d.key for d in decisions if d.recompute and d.key not in set(full_keys)]
        chip_of = {_key(c): c for c in windows}
        pixels = 0
        with model:
            if full_keys:
                fresh = self._run(np.stack([chip_of[k].image for k in full_keys]))
                outputs.update(zip(full_keys, fresh, strict=True))
                pixels += len(full_keys) * windows[0].image.shape[-1] ** 2
            for k in crop_keys:
                outputs[k], work = self._crop_and_halo(chip_of[k], cache.get(k), result.changed)  # type: ignore[arg-type]
                pixels += work
        acc.model_seconds += model.wall
        audit = Stopwatch()
        agreement: list[float] = []
        mious: list[float] = []
        with audit:
            if sample:
                fresh = self._run(np.stack([chip_of[d.key].image for d in sample]))
                for d, f in zip(sample, fresh, strict=True):
                    c = cache.get(d.key)
                    v = chip_of[d.key].valid
                    a, m = pixel_agreement(c.argmax(0), f.argmax(0), v, self.num_classes)  # type: ignore[union-attr]
                    agreement.append(a)
                    mious.append(m)
                    outputs[d.key] = f
        acc.audit_seconds += audit.wall
        report = audit_report(sample, inc.audit, inc.chip, pix=np.asarray(agreement), miou=np.asarray(mious))
        stamp = run_stamp()
        out_windows: list[tuple[Chip, np.ndarray]] = []
        provenance = []
        new_cache: dict[str, np.ndarray] = {}
        new_meta: dict[str, dict[str, Any]] = {}
        for chip in windows:
            k = _key(chip)
            d: ChipDecision = by_key[k]
            if k in outputs:
                probs, reused, source_day = outputs[k], False, day
                meta = {"source_day": day, "source_date": item.datetime.isoformat(),
                        "model_version": self.model_version, "preproc_version": self.preproc, "computed_at": stamp,
                        "changed_frac": d.changed_frac}
            else:
                probs, reused = cache.get(k), True  # type: ignore[assignment]
                meta = {x: v for x, v in cache.meta[k].items() if x != "key"}
                source_day = int(meta["source_day"])
            out_windows.append((chip, probs))
            new_meta[k] = meta
            if k in outputs:
                new_cache[k] = probs
            provenance.append({
                "window_col": chip.window[0], "window_row": chip.window[1], "reused": reused,
                "reason": "audit" if k in sampled else d.reason, "age_days": day - source_day,
                "source_date": meta["source_date"], "change_score_id": cfg.change_score,
                "model_version": meta["model_version"], "changed_frac": d.changed_frac,
                "subchip": k in crop_keys,
            })
        if mode == "incremental":  # only an in-order, registered scene moves the tile forward
            ref.fold(scene, result.valid_now, day)
            ref.save(tile / "reference")
            for k, m in cache.meta.items():  # windows without data now keep their cache entry
                new_meta.setdefault(k, {x: v for x, v in m.items() if x != "key"})
            cache.save(new_cache, new_meta, stamp)
            log["last_day"] = day if last is None else max(last, day)
        log["items"][item.item_id] = {"day": day, "mode": mode, "model_version": self.model_version,
                                      "preproc_version": self.preproc}
        self.state.write_log(key, log)
        stats = {"tile": key, "shift_px": result.shift_px, "tau_pix": result.tau_pix,
                 "changed_pixel_frac": round(result.changed_pixel_frac, 6), "model_pixels": int(pixels),
                 "validity_source": validity.source}
        return SceneOutcome(out_windows, provenance, acc, report.to_dict(), mode, stats)


def _read_scl(item: ResolvedItem, grid: Any) -> np.ndarray | None:
    """The item's SCL raster on the scene grid (nearest), or ``None`` without one."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    if item.quality is None or item.quality.kind != "scl":
        return None
    out = np.zeros((grid.height, grid.width), np.uint8)
    with rasterio.open(item.quality.href) as src:
        reproject(rasterio.band(src, 1), out, dst_transform=grid.transform, dst_crs=CRS.from_epsg(grid.epsg),
                  resampling=Resampling.nearest)
    return out


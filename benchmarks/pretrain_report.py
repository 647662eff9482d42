"""Wall time per pretraining step with a ``ray.train.report`` every step (the old default) and without.

Ray Train V2 hands each report to the controller through a queue of size one that the controller empties on its
health-check poll (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s), so a job that reports every step cannot step faster
than one step per poll. This runs ``jobs/pretrain.py`` in the configuration of ``benchmarks/noisy_pretraining.py``
(the sample S2 L1C scene as 120 px chips, ``rsvheat_test``, batch 4, one CPU worker, a checkpoint at the end) for
``--objective ssl`` and ``--objective noisy-labels``, each with ``--report-every 1`` and with the default
(``--report-every 0``: metrics reported with checkpoints only), alternating, and reads ``metrics.csv``: the median
``wall_s`` (seconds from one step's end to the next, the report wait included) and ``step_s`` (the step alone) over
the steps after the first (the feed's start-up), plus the job's wall time. Writes
``benchmarks/out/pretrain_report-<stamp>.json`` and the ``pretrain-report`` section of ``benchmarks/RESULTS.md``.

    python benchmarks/pretrain_report.py                   # 4 runs of 30 steps, about 6 min on 2 shared cores
    python benchmarks/pretrain_report.py --steps 10 --no-results
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import noisy_pretraining as experiment
from benchmarks._common import OUT_DIR, load_average, run_header, utc_stamp, write_json, write_results_section

OBJECTIVES = {"ssl": ("--objective", "ssl"),
              "noisy-labels": ("--objective", "noisy-labels", "--labels", "bench-noisy", "--val-fraction", "0")}


def one_run(args: argparse.Namespace, data: str, out: Path, objective: str, report_every: int) -> dict[str, Any]:
    """One pretraining run; medians of ``wall_s`` and ``step_s`` over the steps after the first."""
    from jobs._pretrain_outputs import read_metrics_csv

    name = f"{objective}-report{report_every}"
    run = experiment.pretrain(args, data, out, name, *OBJECTIVES[objective], "--report-every", str(report_every))
    rows = [r for r in read_metrics_csv(out / name / "metrics.csv") if r["step"] > 1]
    return {"objective": objective, "report_every": report_every, "job_wall_s": run["wall_s"], "steps": run["steps"],
            "wall_s_median": statistics.median(r["wall_s"] for r in rows),
            "step_s_median": statistics.median(r["step_s"] for r in rows),
            "loop_s": round(sum(r["wall_s"] for r in rows), 1)}


def results_markdown(record: dict[str, Any]) -> str:
    """The ``pretrain-report`` section of RESULTS.md."""
    a, m = record["args"], record["machine"]
    lines = [
        f"**{record['date_utc'][:16].replace('T', ' ')} UTC, {m['cpu_model']} ({m['cpu_count']} cores, shared; load "
        f"{record['load_start']['1m']} at start, {record['load_end']['1m']} at the end), "
        f"`python benchmarks/pretrain_report.py --steps {a['steps']}`.** `jobs/pretrain.py` in the configuration of "
        "`benchmarks/noisy_pretraining.py` (sample S2 L1C scene, 120 px chips, `rsvheat_test`, batch 4, one CPU "
        f"worker, {a['steps']} steps, one checkpoint at the end); medians over steps 2 to {a['steps']} (step 1 "
        "holds the feed's start-up). `wall_s` is one step's end to the next (the report's wait included), "
        "`step_s` the step alone.",
        "",
        "| objective | `--report-every` | wall s/step (median) | step_s (median) | steps 2+ total s | job wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in record["runs"]:
        lines.append(f"| {r['objective']} | {r['report_every']} | {r['wall_s_median']:.3f} | {r['step_s_median']:.3f} "
                     f"| {r['loop_s']} | {r['job_wall_s']} |")
    runs = {(r["objective"], r["report_every"]): r for r in record["runs"]}
    ratios = ", ".join(f"{o} {runs[(o, 1)]['wall_s_median'] / runs[(o, 0)]['wall_s_median']:.1f}x"
                       for o in OBJECTIVES if (o, 1) in runs and (o, 0) in runs)
    lines += ["", "With a report every step, each step waits for the controller's 2 s health-check poll (Ray Train "
              "V2's result queue holds one report), whatever the step itself takes; reporting with checkpoints "
              f"only, the wall time per step is the step's own. Wall s/step, every step vs the default: {ratios}. "
              "The rest of the job's wall time is fixed: starting Ray Train's worker group and the feed (step 1), "
              "the final checkpoint and the export."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=OUT_DIR / "noisy_pretraining",
                        help="ingest (shared with benchmarks/noisy_pretraining.py) and this run's outputs")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-results", action="store_true", help="do not rewrite benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    # the experiment's equal-compute flags that experiment.pretrain reads
    args.model, args.batch_size, args.pretrain_lr, args.seed = "rsvheat_test", 4, 1e-3, 0
    args.pretrain_steps = args.steps
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from jobs._finetune_samples import build_sample_task
    from jobs._ray import init_ray

    record = run_header(sys.argv if argv is None else ["benchmarks/pretrain_report.py", *argv])
    record["args"] = {"steps": args.steps, "work": str(args.work)}
    init_ray()
    data, _ = build_sample_task("segmentation", experiment.SAMPLES, args.work / "data")
    experiment.prepare_labels(data, clean_fraction=0.1, seed=0)
    out = args.work / f"report-{utc_stamp()}"
    started = time.perf_counter()
    record["runs"] = [one_run(args, data, out, objective, every)
                      for objective in OBJECTIVES for every in (1, 0)]  # alternating old / new per objective
    record["total_wall_s"] = round(time.perf_counter() - started, 1)
    record["load_end"] = load_average()
    path = write_json(record, "pretrain_report")
    markdown = results_markdown(record)
    print(markdown)
    print(f"wrote {path}")
    if not args.no_results:
        write_results_section("pretrain-report", "## Pretraining step wall time and reports (`benchmarks/"
                              "pretrain_report.py`)\n\n" + markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

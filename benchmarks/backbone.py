"""Backbone efficiency benchmark: our HCO / Heracles backbones against timm Swin-B and ViT-B.

For every (image size, batch, dtype, model) it measures, each config in a fresh subprocess:

- **images/s**: inference (``torch.inference_mode``), one warm-up forward, then the median of timed forwards
  (at least one, more while the per-config time budget lasts);
- **peak memory**: peak RSS during the forwards minus RSS after model and input construction (Linux ``VmHWM``, reset
  through ``/proc/self/clear_refs`` right before the first forward); it covers activations, one-time caches (DCT
  matrices, fused decay, autocast weight copies) and allocator slack, not the weights or the input;
- **FLOPs** per image from ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (FLOPs = 2 × MAC; conv,
  linear, matmul and attention matmuls; elementwise ops and FFTs are not counted);
- **parameters** (classifier head removed: ``num_classes=0``),

then ratios against Swin-B and ViT-B. Configs predicted (from the previous size's measurements) to exceed the time cap
or the memory cap are skipped with the reason recorded. timm models are built with random weights, never pretrained.

Usage (the separate vision venv; see ``benchmarks/requirements-vision.txt``)::

    .venv-vision/bin/python benchmarks/backbone.py [--sizes 224 512 1024 2048] [--batch 1 8] [--dtypes fp32 bf16]
        [--models ...] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    load_average,
    meminfo_kib,
    read_peak_rss_bytes,
    read_rss_bytes,
    reset_peak_rss,
    run_header,
    time_repeats,
    wait_for_quiet,
    write_json,
    write_results_section,
)

Dtype = Literal["fp32", "bf16"]
SECTION = "backbone"
SWIN = "swin_base_patch4_window7_224"
VIT = "vit_base_patch16_224"
BASELINES = (SWIN, VIT)
DEFAULT_MODELS = ("vheat_base", "rsvheat_base", "heracles_base", SWIN, VIT)
LABELS = {SWIN: "Swin-B (timm, w7)", VIT: "ViT-B/16 (timm)"}
_RESULT_PREFIX = "@@RESULT "


@dataclass
class Config:
    """One measured point."""

    model: str
    img_size: int
    batch: int
    dtype: Dtype
    budget_s: float
    max_repeats: int
    threads: int
    count_flops: bool = False  # count on the warm-up forward (fallback when the meta-device count failed)


@dataclass
class Outcome:
    """What one config produced: a measurement or a recorded reason for skipping it."""

    config: Config
    status: Literal["ok", "skipped", "failed"]
    reason: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Model construction (shared by the parent's FLOP count and the child's measurement)
# ---------------------------------------------------------------------------------------------------------------------


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:key=value,key=value"`` into the model name and keyword overrides.

    Values are parsed as JSON where possible (``3``, ``1.5``, ``true``) and kept as strings otherwise, e.g.
    ``vheat_base:hco_core_dtype=autocast`` or ``vheat_base:dct_impl=auto,fft_threshold=256``.
    """
    name, _, options = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, options.split(",")):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"Bad model option {item!r} in {spec!r}; expected 'name:key=value,key=value'.")
        try:
            kwargs[key] = json.loads(raw)
        except json.JSONDecodeError:
            kwargs[key] = raw
    return name, kwargs


def is_ours(spec: str) -> bool:
    """Whether the model of ``spec`` is in the rsvheat registry (else it is a timm model)."""
    import rsvheat

    return rsvheat.is_model(parse_model_spec(spec)[0])


def build_model(spec: str, img_size: int, *, fused: bool = True) -> tuple[Any, list[str]]:
    """Build the model of ``spec`` at ``img_size`` in eval mode, in its best inference configuration, with notes.

    Ours: ``rsvheat.create_model(name, in_chans=3, num_classes=0, img_size=..., **overrides)``, then
    ``fuse_decay(drop_fve=True)`` when the model offers it and ``fused``. timm:
    ``timm.create_model(name, pretrained=False, num_classes=0, img_size=..., **overrides)``.
    """
    name, overrides = parse_model_spec(spec)
    notes: list[str] = []
    if is_ours(name):
        import rsvheat

        model = rsvheat.create_model(name, in_chans=3, num_classes=0, img_size=img_size, **overrides).eval()
        if fused and hasattr(model, "fuse_decay"):
            # Upstream's inference network: decay precomputed for this size, to_k and FVE deleted
            # (docs/hco.md §Inference mode).
            model.fuse_decay(drop_fve=True)
            defaults = {"dct_impl": "matmul", "hco_core_dtype": "fp32"} | overrides
            notes.append(f"vHeat family: fuse_decay(drop_fve=True), {defaults}")
        return model, notes
    import timm

    # Random init only: nothing may be fetched at run time (docs/environment.md §Network rules).
    model = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, **overrides).eval()
    if name.startswith("swin") and (img_size // 4) % 7:
        notes.append("Swin: timm pads each stage's map to a multiple of window 7 (no resize of the input)")
    return model, notes


def count_params(model: Any) -> int:
    """All parameters; a fused vHeat counts its frozen decays too, as upstream's inference-mode counts do."""
    if getattr(model, "is_fused", False):
        from rsvheat.models.vheat import count_parameters

        return count_parameters(model, "inference")
    return sum(p.numel() for p in model.parameters())


def _register_cpu_sdpa_flops() -> None:
    """``FlopCounterMode`` has no formula for the CPU flash-attention kernel; count it like the other SDPA kernels."""
    import torch
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops_meta(name: str, img_size: int, fused: bool = True) -> dict[str, Any]:
    """FLOPs (per image, batch 1) and parameters of ``name`` at ``img_size``, computed on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            model, notes = build_model(name, img_size, fused=fused)
    except (NotImplementedError, RuntimeError):
        # Some constructors read tensor values (e.g. ``linspace(...).tolist()``): build on CPU, then move to meta.
        model, notes = build_model(name, img_size, fused=fused)
        model = model.to("meta")
    x = torch.empty(1, 3, img_size, img_size, device="meta")
    # FlopCounterMode's module tracker registers grad hooks on module inputs that require grad, which fails under
    # no_grad/inference_mode when a Parameter (RS-vHeat's SCE) is passed straight into a block: freeze them all.
    model.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return {
        "flops": int(counter.get_total_flops()),
        "flops_by_op": by_op,
        "params": count_params(model),
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Child: one config, fresh process
# ---------------------------------------------------------------------------------------------------------------------


def measure(config: Config) -> dict[str, Any]:
    """Measure one config in this process (called in a fresh subprocess by the parent)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    tick = time.perf_counter()
    model, notes = build_model(config.model, config.img_size)
    x = torch.randn(config.batch, 3, config.img_size, config.img_size)
    build_s = time.perf_counter() - tick
    match config.dtype:
        case "fp32":

            def forward() -> Any:
                with torch.inference_mode():
                    return model(x)

        case "bf16":

            def forward() -> Any:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    return model(x)

        case _:
            raise ValueError(f"Unknown dtype {config.dtype!r}; expected 'fp32' or 'bf16'.")

    gc.collect()
    rss_base = read_rss_bytes()
    peak_reset = reset_peak_rss()
    result: dict[str, Any] = {"notes": notes, "build_s": round(build_s, 3), "params": count_params(model)}
    tick = time.perf_counter()
    if config.count_flops:
        _register_cpu_sdpa_flops()
        model.requires_grad_(False)  # see count_flops_meta
        counter = FlopCounterMode(display=False)
        with counter:
            out = forward()
        result["flops"] = int(counter.get_total_flops()) // config.batch
    else:
        out = forward()
    result["first_s"] = round(time.perf_counter() - tick, 4)
    result["out_shape"] = list(out.shape)
    result["out_finite"] = bool(torch.isfinite(out.float()).all())
    del out
    timing = time_repeats(forward, min_repeats=1, max_repeats=config.max_repeats, budget_s=config.budget_s)
    peak = read_peak_rss_bytes()
    result.update(timing)
    result["images_per_s"] = config.batch / timing["median_s"]
    result["images_per_s_best"] = config.batch / timing["min_s"]
    # Load-robust throughput: images per second of CPU time, times the thread count (what the threads would do
    # with the cores to themselves). Slightly optimistic for code with serial sections.
    result["images_per_s_cpu"] = config.batch * config.threads / timing["median_cpu_s"]
    # Below ~0.85 the threads were starved (other processes on the cores): the wall timing is pessimistic.
    result["cpu_util"] = round(sum(timing["cpu_times_s"]) / (sum(timing["times_s"]) * config.threads), 3)
    result["rss_base_mb"] = round(rss_base / 2**20, 1)
    result["peak_rss_mb"] = round(peak / 2**20, 1)
    # Without a resettable VmHWM the peak includes construction; still reported, but flagged.
    result["peak_mem_mb"] = round((peak - rss_base) / 2**20, 1)
    result["peak_method"] = "VmHWM reset after build" if peak_reset else "lifetime VmHWM (reset unsupported)"
    return result


def _child_main(payload: str) -> None:
    config = Config(**json.loads(payload))
    try:
        result = {"status": "ok", "result": measure(config)}
    except Exception as err:  # the parent records the failure and carries on with the next config
        result = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
    print(_RESULT_PREFIX + json.dumps(result), flush=True)


def run_config(config: Config, timeout_s: float) -> Outcome:
    """Run one config in a fresh interpreter and parse its result line."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(config))]
    try:
        # Waiting OpenMP threads sleep instead of spinning, so CPU time measures work, not contention.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
    except subprocess.TimeoutExpired:
        return Outcome(config, "failed", reason=f"timed out after {timeout_s:.0f} s")
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            payload = json.loads(line[len(_RESULT_PREFIX) :])
            return Outcome(config, payload["status"], reason=payload.get("reason"), result=payload.get("result", {}))
    tail = (proc.stderr or proc.stdout)[-400:].strip()
    signal_note = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
    return Outcome(config, "failed", reason=f"exit {proc.returncode}{signal_note}: {tail}")


# ---------------------------------------------------------------------------------------------------------------------
# Parent: schedule, predict, skip, collect
# ---------------------------------------------------------------------------------------------------------------------


def mem_available_mb() -> float:
    """``MemAvailable`` from /proc/meminfo, in MiB."""
    available_kib = meminfo_kib("MemAvailable")
    return float("inf") if available_kib is None else available_kib / 1024


def large_batch(base: int, img_size: int, base_size: int = 224) -> int:
    """The 'larger batch' at ``img_size``: ``base`` at 224², scaled by pixel count, at least 2 (1 disables it)."""
    if base <= 1:
        return 1
    return max(2, min(base, round(base * (base_size / img_size) ** 2)))


def schedule(sizes: list[int], batches: list[int]) -> list[tuple[int, int]]:
    """(size, batch) pairs, batch 1 at every size before the larger batches, small sizes first.

    This order means that when the global time budget runs out, what is lost is the large-batch points at large sizes.
    """
    sizes = sorted(sizes)
    pairs = [(size, 1) for size in sizes if 1 in batches]
    for base in sorted(b for b in batches if b > 1):
        pairs += [(size, large_batch(base, size)) for size in sizes if large_batch(base, size) > 1]
    seen: set[tuple[int, int]] = set()
    return [pair for pair in pairs if not (pair in seen or seen.add(pair))]


def _growth(points: list[tuple[float, float]], exponent_floor: float = 1.0) -> float:
    """Exponent e of y ∝ x^e fitted to the last two (x, y) points, at least ``exponent_floor``."""
    if len(points) < 2:
        return exponent_floor
    (x0, y0), (x1, y1) = points[-2], points[-1]
    if x1 == x0 or y0 <= 0 or y1 <= 0:
        return exponent_floor
    return max(exponent_floor, math.log(y1 / y0) / math.log(x1 / x0))


def predict(
    history: list[Outcome], model: str, dtype: Dtype, img_size: int, batch: int, flops: int | None
) -> dict[str, float] | None:
    """Predict seconds per forward and peak MB for a config from earlier measurements of the same model and dtype.

    Time per image: the largest earlier config's, scaled by the FLOPs ratio when both FLOP counts are known, else
    extrapolated over pixels with the growth exponent of the last two sizes (at least linear). Memory per image:
    extrapolated the same way. Both are then multiplied by the batch.
    """
    done = [
        o
        for o in history
        if o.status == "ok" and o.config.model == model and o.config.dtype == dtype and o.config.img_size <= img_size
    ]
    if not done:
        return None

    def per_image(key: str) -> list[tuple[float, float]]:
        by_size: dict[int, float] = {}
        for o in done:  # the worst per-image value at each size (batch 1 carries the fixed overheads)
            value = o.result[key] / o.config.batch
            by_size[o.config.img_size] = max(by_size.get(o.config.img_size, 0.0), value)
        return [(float(size * size), value) for size, value in sorted(by_size.items())]

    times, mems = per_image("median_cpu_s"), per_image("peak_mem_mb")
    pixels = float(img_size * img_size)
    last = max(done, key=lambda o: o.config.img_size)
    if flops and last.result.get("flops_meta"):
        per_image_s = times[-1][1] * flops / last.result["flops_meta"]
    else:
        per_image_s = times[-1][1] * (pixels / times[-1][0]) ** _growth(times)
    mem_exponent = _growth(mems)
    per_image_mb = mems[-1][1] * (pixels / mems[-1][0]) ** mem_exponent
    # CPU time over threads: the wall time on an unloaded machine (load only stretches the real wall time).
    forward_s = per_image_s * batch / max(1, last.config.threads)
    return {"forward_s": forward_s, "peak_mb": per_image_mb * batch, "mem_exponent": mem_exponent}


def run_all(args: argparse.Namespace, log: Any = print) -> tuple[list[Outcome], dict[str, Any]]:
    """Run the whole sweep; return the outcomes and per-(model, size) static facts (FLOPs, params)."""
    started = time.perf_counter()
    deadline = started + args.max_total_min * 60
    static: dict[str, dict[str, Any]] = {}
    for size in sorted(args.sizes):
        for model in args.models:
            key = f"{model}@{size}"
            try:
                static[key] = count_flops_meta(model, size)
            except Exception as err:
                static[key] = {"flops": None, "params": None, "error": f"{type(err).__name__}: {err}"}
            if is_ours(model) and size == min(args.sizes):
                try:
                    static[key]["flops_unfused"] = count_flops_meta(model, size, fused=False)["flops"]
                except Exception as err:
                    static[key]["flops_unfused_error"] = f"{type(err).__name__}: {err}"
            log(
                f"flops {key}: {static[key].get('flops')} params {static[key].get('params')} "
                f"{static[key].get('error', '')}"
            )

    history: list[Outcome] = []
    for size, batch in schedule(args.sizes, args.batch):
        for dtype in args.dtypes:
            for model in args.models:
                facts = static[f"{model}@{size}"]
                config = Config(
                    model=model,
                    img_size=size,
                    batch=batch,
                    dtype=dtype,
                    budget_s=args.budget_s,
                    max_repeats=args.max_repeats,
                    threads=args.threads,
                    count_flops=facts.get("flops") is None,
                )
                guess = predict(history, model, dtype, size, batch, facts.get("flops"))
                mem_cap = min(args.mem_cap_gb * 1024, 0.8 * mem_available_mb())
                reason = None
                if time.perf_counter() > deadline:
                    reason = f"global budget of {args.max_total_min} min spent"
                elif guess and guess["forward_s"] * 2 > args.cap_s:
                    reason = (
                        f"predicted {guess['forward_s']:.0f} s per forward; warm-up + 1 run > cap {args.cap_s:.0f} s"
                    )
                elif guess and guess["peak_mb"] > mem_cap:
                    reason = f"predicted peak {guess['peak_mb'] / 1024:.1f} GiB > memory cap {mem_cap / 1024:.1f} GiB"
                if reason:
                    outcome = Outcome(config, "skipped", reason=reason)
                else:
                    quiet = wait_for_quiet(args.max_busy, args.max_wait_s)
                    outcome = run_config(config, timeout_s=args.cap_s * 3 + 120)
                    outcome.result["others_busy_before"] = quiet
                    if outcome.status == "ok":
                        outcome.result["flops_meta"] = facts.get("flops")
                        outcome.result.setdefault("flops", facts.get("flops"))
                        outcome.result["load_1m"] = load_average()["1m"]
                    if guess:
                        outcome.result["predicted"] = guess
                history.append(outcome)
                log(_describe(outcome))
    return history, static


def _describe(outcome: Outcome) -> str:
    c = outcome.config
    head = f"{c.model:32s} {c.img_size:5d}px b{c.batch:<2d} {c.dtype}"
    if outcome.status != "ok":
        return f"{head}  {outcome.status}: {outcome.reason}"
    r = outcome.result
    return (
        f"{head}  {r['images_per_s']:8.3f} img/s  peak {r['peak_mem_mb']:8.1f} MB  first {r['first_s']:.2f} s  "
        f"x{r['repeats']}  cpu {r['cpu_util']:.2f}  others {r['others_busy_before']['busy']:.2f}"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def _rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Flat rows with ratios against the baselines measured in the same (size, batch, dtype)."""
    ok = {(o.config.model, o.config.img_size, o.config.batch, o.config.dtype): o for o in outcomes if o.status == "ok"}
    rows = []
    for o in outcomes:
        c = o.config
        row: dict[str, Any] = {"model": c.model, "img_size": c.img_size, "batch": c.batch, "dtype": c.dtype}
        row["status"], row["reason"] = o.status, o.reason
        if o.status == "ok":
            r = o.result
            row.update(
                params=r["params"],
                gflops=r["flops"] / 1e9 if r.get("flops") else None,
                images_per_s=r["images_per_s"],
                images_per_s_best=r["images_per_s_best"],
                images_per_s_cpu=r["images_per_s_cpu"],
                cpu_util=r["cpu_util"],
                peak_mem_mb=r["peak_mem_mb"],
            )
            for base in BASELINES:
                ref = ok.get((base, c.img_size, c.batch, c.dtype))
                if ref is None or base == c.model:
                    continue
                tag = "swin" if base == SWIN else "vit"
                row[f"mem_vs_{tag}"] = r["peak_mem_mb"] / ref.result["peak_mem_mb"]
                row[f"speed_vs_{tag}"] = r["images_per_s_cpu"] / ref.result["images_per_s_cpu"]
                row[f"speed_wall_vs_{tag}"] = r["images_per_s"] / ref.result["images_per_s"]
                if r.get("flops") and ref.result.get("flops"):
                    row[f"flops_vs_{tag}"] = r["flops"] / ref.result["flops"]
        rows.append(row)
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _ratio(row: dict[str, Any], tag: str) -> str:
    if f"speed_vs_{tag}" not in row:
        return "–"
    flops = row.get(f"flops_vs_{tag}")
    speed, wall = row[f"speed_vs_{tag}"], row[f"speed_wall_vs_{tag}"]
    return f"{row[f'mem_vs_{tag}']:.2f} / {_fmt(flops, '.2f')} / {speed:.2f}× ({wall:.2f}×)"


def markdown(record: dict[str, Any]) -> str:
    """The generated tables for the Backbones section of RESULTS.md."""
    machine, versions = record["machine"], record["versions"]
    lines = [
        "### Backbones: measured (generated by `benchmarks/backbone.py`)",
        "",
        f"`{record['command']}` — {record['date_utc']}; **CPU only** ({machine['cpu_model']}, {machine['cpu_count']} "
        f"cores, {machine['ram_gib']} GiB, ISA {', '.join(machine['cpu_isa'])}; torch {versions['torch']}, timm "
        f"{versions['timm']}, {record['settings']['threads']} threads); load average {record['load_start']['1m']} at "
        f"start, {record['load_end']['1m']} at end; wall {record['wall_min']:.1f} min. Absolute CPU times are "
        "indicative only; compare ratios.",
        "",
        "Memory = peak RSS during inference minus RSS after building model and input (activations + caches). "
        "GFLOPs per image from `FlopCounterMode` (2 × MAC). img/s wall = batch ÷ median wall time per forward; "
        "img/s CPU-time = batch × threads ÷ median process CPU time per forward (`OMP_WAIT_POLICY=PASSIVE`), the "
        "load-robust figure on a shared machine. Ratios are ours ÷ baseline at the same size, batch and dtype: "
        "memory / FLOPs / CPU-time throughput (wall-time throughput in brackets). `*` = the threads got < 85 % of "
        "their CPU time (other processes on the cores), so that wall img/s is pessimistic.",
        "",
    ]
    for dtype in record["settings"]["dtypes"]:
        lines += [
            f"**{dtype}**" + (" (`torch.autocast('cpu', torch.bfloat16)`)" if dtype == "bf16" else ""),
            "",
            "| size | batch | model | params M | GFLOPs/img | img/s wall | img/s CPU-time | peak MB | "
            "vs Swin-B: mem / FLOPs / speed (wall) | vs ViT-B: mem / FLOPs / speed (wall) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in record["rows"]:
            if row["dtype"] != dtype:
                continue
            label = LABELS.get(row["model"], f"`{row['model']}`")
            head = f"| {row['img_size']} | {row['batch']} | {label} |"
            if row["status"] != "ok":
                lines.append(f"{head} {row['status']}: {row['reason']} | | | | | | |")
                continue
            starved = "*" if row["cpu_util"] < 0.85 else ""
            lines.append(
                f"{head} {row['params'] / 1e6:.2f} | {_fmt(row['gflops'], '.1f')} | "
                f"{row['images_per_s']:.3g}{starved} | "
                f"{row['images_per_s_cpu']:.3g} | "
                f"{row['peak_mem_mb']:.0f} | {_ratio(row, 'swin')} | {_ratio(row, 'vit')} |"
            )
        lines.append("")
    notes = sorted({note for o in record["outcomes"] for note in o["result"].get("notes", [])})
    if notes:
        lines.append("Build notes: " + "; ".join(notes) + ".")
    for key, facts in sorted(record["static"].items()):
        if "flops_unfused" in facts and facts.get("flops"):
            lines.append(
                f"FLOPs check {key}: {facts['flops_unfused'] / 2e9:.2f} GMAC unfused (training-mode graph), "
                f"{facts['flops'] / 2e9:.2f} GMAC fused (inference mode)."
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 1024, 2048])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="1 and the larger batch at 224 px")
    parser.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--budget-s", type=float, default=8.0, help="timed-run budget per config (after warm-up)")
    parser.add_argument("--max-repeats", type=int, default=10)
    parser.add_argument("--cap-s", type=float, default=120.0, help="skip configs predicted to need longer")
    parser.add_argument("--mem-cap-gb", type=float, default=14.0, help="skip configs predicted to peak higher")
    parser.add_argument("--max-total-min", type=float, default=25.0, help="skip what is left after this wall time")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-busy", type=float, default=0.25, help="wait while others use more of the CPUs")
    parser.add_argument("--max-wait-s", type=float, default=45.0, help="longest wait for a quiet machine per config")
    parser.add_argument("--quick", action="store_true", help="224 and 512 px, batch 1, few repeats, no RESULTS.md")
    parser.add_argument("--no-results-md", action="store_true", help="write only the JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.budget_s, args.max_repeats = [224, 512], [1], 2.0, 3
        args.no_results_md = True
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write ``benchmarks/out/backbone-<stamp>.json`` and the Backbones tables in RESULTS.md."""
    args = parse_args(argv)
    record = run_header(sys.argv if argv is None else ["benchmarks/backbone.py", *argv])
    import torch

    torch.set_num_threads(args.threads)
    record["machine"]["bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    record["settings"] = {k: v for k, v in vars(args).items() if k != "child"}
    started = time.perf_counter()
    outcomes, static = run_all(args)
    record["wall_min"] = (time.perf_counter() - started) / 60
    record["load_end"] = load_average()
    record["static"] = static
    record["outcomes"] = [
        {"config": asdict(o.config), "status": o.status, "reason": o.reason, "result": o.result} for o in outcomes
    ]
    record["rows"] = _rows(outcomes)
    path = write_json(record, "backbone" + ("-quick" if args.quick else ""))
    print(f"wrote {path}")
    if not args.no_results_md:
        print(f"updated {write_results_section(SECTION, markdown(record))}")
    return record


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child_main(sys.argv[sys.argv.index("--child") + 1])
    else:
        main()

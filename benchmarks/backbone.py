"""Backbone efficiency benchmark: our HCO / Heracles backbones against timm Swin-B and ViT-B, eval and training.

For every (mode, image size, dtype, activation checkpointing) group it runs each model in its own fresh process,
one after the other (interleaved, so the models of a group share the machine's load), at the same batch and
thread count, and measures:

- **wall-clock throughput**: images per second of wall time, median over the timed steps after one warm-up step
  (eval: an ``inference_mode`` forward; train: forward, a scalar loss and backward, gradients kept);
- **peak memory**: peak RSS (Linux ``VmHWM``, reset right after the imports) minus the RSS at that point. It counts
  everything the model needs: weights, gradients, input, activations, DCT matrices, decays and other caches,
  allocator slack. Only the interpreter and the imported libraries are left out, equally for every model;
- **FLOPs** per image (eval, from ``FlopCounterMode`` on the meta device; 2 × MAC, conv/linear/matmul/attention);

then memory and speed ratios against Swin-B and ViT-B of the same group. Each child caps its own address space
(``RLIMIT_AS``: its size after the imports plus ``--mem-cap-gb``), so a config that needs more fails with
"OOM > N GiB" instead of taking the machine down; that is recorded as a result. A model that ran out of memory or
time at one size is not tried at larger sizes of the same group. timm models are built with random weights.

Settings shared by all models: ``num_classes=0`` (pooled features), drop path 0 in training (stochastic depth would
skip random blocks), the models' default options otherwise (ours: no ``fuse_decay``; the HCO's fp32 core).

Usage (the separate vision venv; see ``benchmarks/requirements-vision.txt``)::

    .venv-vision/bin/python benchmarks/backbone.py --mode train --sizes 512 1024 --dtypes fp32 bf16 --ckpt off on
    .venv-vision/bin/python benchmarks/backbone.py --mode eval --sizes 512 1024 2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS_MD,
    load_average,
    read_peak_rss_bytes,
    read_rss_bytes,
    reset_peak_rss,
    run_header,
    write_json,
    write_results_section,
)

Dtype = Literal["fp32", "bf16"]
Mode = Literal["eval", "train"]
Ckpt = bool | Literal["mlp"]  # False, True (every block) or "mlp" (the MLP branch of each block; ours only)
_CKPT_FLAGS: dict[str, Ckpt] = {"off": False, "on": True, "mlp": "mlp"}  # --ckpt values
MLP_POLICY_MODELS = ("vheat_", "rsvheat_")  # models whose set_grad_checkpointing takes "mlp"
# Swin-B with window 8: every stage map of a 512/1024/2048 px input tiles exactly (no padding), as a user would set it.
SWIN = "swin_base_patch4_window7_224:window_size=8"
VIT = "vit_base_patch16_224"
BASELINES = (SWIN, VIT)
DEFAULT_MODELS = ("vheat_base", "rsvheat_base", "heracles_base", SWIN, VIT)
LABELS = {SWIN: "Swin-B (timm, w8)", VIT: "ViT-B/16 (timm)"}
_RESULT_PREFIX = "@@RESULT "


@dataclass
class Config:
    """One measured point."""

    model: str
    img_size: int
    batch: int
    dtype: Dtype
    mode: Mode
    checkpointing: Ckpt
    threads: int
    steps: int = 2
    mem_cap_gb: float = 6.0


@dataclass
class Outcome:
    """What one config produced: a measurement, or the reason it has none (``oom``, ``timeout``, ``failed``,
    ``skipped``)."""

    config: Config
    status: Literal["ok", "oom", "timeout", "failed", "skipped"]
    reason: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------------------------------------------------


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:key=value,key=value"`` into the model name and keyword overrides.

    Values are parsed as JSON where possible (``3``, ``1.5``, ``true``) and kept as strings otherwise, e.g.
    ``vheat_base:hco_core_dtype=autocast`` or ``swin_base_patch4_window7_224:window_size=8``.
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


def build_model(spec: str, img_size: int, *, mode: Mode = "eval", fused: bool = False) -> Any:
    """Build the model of ``spec`` at ``img_size``: ``num_classes=0``, random weights, in ``mode``.

    Ours: ``rsvheat.create_model(name, in_chans=3, num_classes=0, img_size=..., **overrides)``; ``fused`` (eval only)
    applies ``fuse_decay(drop_fve=True)``, upstream's inference network. timm:
    ``timm.create_model(name, pretrained=False, num_classes=0, img_size=..., **overrides)``. Training builds use
    drop path 0 for every model.
    """
    name, overrides = parse_model_spec(spec)
    if mode == "train":
        overrides = {**overrides, "drop_path_rate": 0.0}
    if is_ours(name):
        import rsvheat

        model = rsvheat.create_model(name, in_chans=3, num_classes=0, img_size=img_size, **overrides)
        if fused and mode == "eval" and hasattr(model, "fuse_decay"):
            model.eval().fuse_decay(drop_fve=True)
    else:
        import timm

        # Random init only: nothing may be fetched at run time.
        model = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, **overrides)
    return model.train(mode == "train")


def count_params(model: Any) -> int:
    """Every parameter (a fused vHeat counts its frozen decays too, as upstream's inference-mode counts do)."""
    if getattr(model, "is_fused", False):
        from rsvheat.models.vheat import count_parameters

        return count_parameters(model, "inference")
    return sum(p.numel() for p in model.parameters())


def _register_cpu_sdpa_flops() -> None:
    """``FlopCounterMode`` has no formula for the CPU flash-attention kernel; count it like the other SDPA kernels."""
    import torch
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_counter.flop_registry or op.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops_meta(name: str, img_size: int, fused: bool = True) -> dict[str, Any]:
    """Inference FLOPs (per image, batch 1) and parameters of ``name`` at ``img_size``, on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_sdpa_flops()
    try:
        with torch.device("meta"):
            model = build_model(name, img_size, fused=fused)
    except (NotImplementedError, RuntimeError):
        # Some constructors read tensor values (e.g. ``linspace(...).tolist()``): build on CPU, then move to meta.
        model = build_model(name, img_size, fused=fused).to("meta")
    x = torch.empty(1, 3, img_size, img_size, device="meta")
    # The module tracker registers grad hooks on inputs that require grad (RS-vHeat's SCE): freeze everything.
    model.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return {"flops": int(counter.get_total_flops()), "params": count_params(model)}


# ---------------------------------------------------------------------------------------------------------------------
# Child: one config, fresh process
# ---------------------------------------------------------------------------------------------------------------------


def _vm_size_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmSize line; the address-space cap needs Linux procfs.")


def _cap_address_space(extra_gb: float) -> int:
    """Limit this process's address space to its current size plus ``extra_gb``; returns the limit in bytes."""
    limit = _vm_size_bytes() + int(extra_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit


def make_step(model: Any, x: Any, config: Config) -> Any:
    """The measured step: an inference forward (eval) or forward + loss + backward (train), in ``config.dtype``."""
    import contextlib

    import torch

    def precision() -> Any:
        if config.dtype == "bf16":
            return torch.autocast(x.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    if config.mode == "eval":

        def step() -> None:
            with torch.inference_mode(), precision():
                model(x)

        return step

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        with precision():
            out = model(x)
        out.float().square().mean().backward()  # backward outside autocast, as in a mixed-precision loop

    return train_step


def measure(config: Config) -> dict[str, Any]:
    """Measure one config in this process (called in a fresh subprocess by the parent)."""
    import torch

    torch.set_num_threads(config.threads)
    if not is_ours(config.model):
        import timm  # noqa: F401  (imported before the baseline RSS, like rsvheat)
    torch.manual_seed(0)
    limit = _cap_address_space(config.mem_cap_gb)
    reset_ok = reset_peak_rss()
    rss_base = read_rss_bytes()
    tick = time.perf_counter()
    model = build_model(config.model, config.img_size, mode=config.mode)
    if config.checkpointing:
        model.set_grad_checkpointing(config.checkpointing)
    x = torch.randn(config.batch, 3, config.img_size, config.img_size)
    params = count_params(model)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    build_s = time.perf_counter() - tick
    step = make_step(model, x, config)
    tick = time.perf_counter()
    step()  # warm-up: one-time caches (DCT matrices, decay grids, oneDNN primitives) are created here
    first_s = time.perf_counter() - tick
    times, cpu_times = [], []
    for _ in range(config.steps):
        cpu, tick = time.process_time(), time.perf_counter()
        step()
        times.append(time.perf_counter() - tick)
        cpu_times.append(time.process_time() - cpu)
    peak = read_peak_rss_bytes()
    median_s = statistics.median(times)
    return {
        "params": params,
        "weights_mb": round(weights_mb, 1),
        "build_s": round(build_s, 2),
        "first_s": round(first_s, 3),
        "times_s": [round(t, 4) for t in times],
        "median_s": median_s,
        "images_per_s": config.batch / median_s,
        # Below ~0.85 the threads were starved (other processes on the cores): the wall figure is pessimistic.
        "cpu_util": round(sum(cpu_times) / (sum(times) * config.threads), 3),
        "peak_mem_mb": round((peak - rss_base) / 2**20, 1),
        "rss_base_mb": round(rss_base / 2**20, 1),
        "peak_method": "VmHWM reset after imports" if reset_ok else "lifetime VmHWM (reset unsupported)",
        "address_space_limit_gb": round(limit / 2**30, 2),
    }


def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def _child_main(payload: str) -> None:
    config = Config(**json.loads(payload))
    try:
        result: dict[str, Any] = {"status": "ok", "result": measure(config)}
    except Exception as err:  # the parent records the failure and carries on with the next config
        if _is_oom(err):
            result = {"status": "oom", "reason": f"OOM > {config.mem_cap_gb:g} GiB"}
        else:
            result = {"status": "failed", "reason": f"{type(err).__name__}: {str(err)[:300]}"}
    print(_RESULT_PREFIX + json.dumps(result), flush=True)


def run_config(config: Config, timeout_s: float, mmap_threshold: int | None = None) -> Outcome:
    """Run one config in a fresh interpreter and parse its result line.

    ``mmap_threshold`` sets glibc's ``MALLOC_MMAP_THRESHOLD_`` in the child: blocks from that size up are mapped
    and unmapped on their own, so freed activations leave the RSS at once instead of staying in the heap.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(config))]
    env = None if mmap_threshold is None else {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
    except subprocess.TimeoutExpired:
        return Outcome(config, "timeout", reason=f"timeout > {timeout_s:.0f} s")
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            payload = json.loads(line[len(_RESULT_PREFIX) :])
            return Outcome(config, payload["status"], reason=payload.get("reason"), result=payload.get("result", {}))
    tail = (proc.stderr or proc.stdout)[-300:].strip()
    if proc.returncode in (-9, -6, 134, 137) or "alloc" in tail.lower():
        return Outcome(config, "oom", reason=f"OOM > {config.mem_cap_gb:g} GiB (exit {proc.returncode})")
    return Outcome(config, "failed", reason=f"exit {proc.returncode}: {tail}")


# ---------------------------------------------------------------------------------------------------------------------
# Parent: groups, interleaving, ratios
# ---------------------------------------------------------------------------------------------------------------------


def groups(args: argparse.Namespace) -> list[tuple[int, Dtype, Ckpt]]:
    """(size, dtype, checkpointing) groups, small sizes first; every model of a group runs back to back."""
    ckpts = [_CKPT_FLAGS[c] for c in args.ckpt]
    return [(size, dtype, ckpt) for size in sorted(args.sizes) for dtype in args.dtypes for ckpt in ckpts]


def run_all(args: argparse.Namespace, log: Any = print) -> list[Outcome]:
    """Run every group; a model that failed for memory or time at a size skips the larger sizes of its group."""
    outcomes: list[Outcome] = []
    deadline = time.perf_counter() + args.max_total_min * 60
    gave_up: dict[tuple[str, Dtype, Ckpt], str] = {}
    for size, dtype, ckpt in groups(args):
        for model in args.models:
            config = Config(model, size, args.batch, dtype, args.mode, ckpt, args.threads, args.steps, args.mem_cap_gb)
            key = (model, dtype, ckpt)
            if key in gave_up:
                outcome = Outcome(config, "skipped", reason=gave_up[key])
            elif ckpt == "mlp" and not model.startswith(MLP_POLICY_MODELS):
                outcome = Outcome(config, "skipped", reason="no 'mlp' checkpointing policy")
            elif time.perf_counter() > deadline:
                outcome = Outcome(config, "skipped", reason=f"global budget of {args.max_total_min:g} min spent")
            else:
                load = load_average()["1m"]
                outcome = run_config(config, timeout_s=args.timeout_s, mmap_threshold=args.malloc_mmap_threshold)
                outcome.result["load_1m"] = load
                if outcome.status in ("oom", "timeout"):
                    gave_up[key] = f"{outcome.reason} at {size} px"
            outcomes.append(outcome)
            log(_describe(outcome))
    return outcomes


def _describe(outcome: Outcome) -> str:
    c = outcome.config
    head = f"{c.mode} {c.model:44s} {c.img_size:5d}px b{c.batch} {c.dtype} ckpt={ckpt_label(c.checkpointing)}"
    if outcome.status != "ok":
        return f"{head}  {outcome.status}: {outcome.reason}"
    r = outcome.result
    return (
        f"{head}  {r['images_per_s']:8.4f} img/s  peak {r['peak_mem_mb']:8.1f} MB  first {r['first_s']:.1f} s  "
        f"cpu {r['cpu_util']:.2f}  load {r['load_1m']}"
    )


def ckpt_label(value: Ckpt) -> str:
    """``on`` / ``off`` / ``mlp`` as the tables print it (records before the ``mlp`` policy hold booleans)."""
    return value if isinstance(value, str) else ("on" if value else "off")


def rows(outcomes: list[Outcome], flops: dict[str, int | None] | None = None) -> list[dict[str, Any]]:
    """Flat rows with memory and wall-clock speed ratios against the baselines of the same group."""
    flops = flops or {}
    ok = {
        (o.config.model, o.config.img_size, o.config.dtype, o.config.checkpointing): o
        for o in outcomes
        if o.status == "ok"
    }
    out = []
    for o in outcomes:
        c = o.config
        row: dict[str, Any] = {
            "model": c.model,
            "img_size": c.img_size,
            "batch": c.batch,
            "dtype": c.dtype,
            "mode": c.mode,
            "checkpointing": c.checkpointing,
            "status": o.status,
            "reason": o.reason,
            "gflops": (flops.get(f"{c.model}@{c.img_size}") or 0) / 1e9 or None,
        }
        if o.status == "ok":
            r = o.result
            row.update(
                params=r["params"],
                images_per_s=r["images_per_s"],
                step_s=r["median_s"],
                peak_mem_mb=r["peak_mem_mb"],
                cpu_util=r["cpu_util"],
            )
            for base, tag in ((SWIN, "swin"), (VIT, "vit")):
                # NOTE: the 'mlp' policy is ours only: its rows compare with the baselines run without checkpointing.
                base_ckpt = False if c.checkpointing == "mlp" else c.checkpointing
                ref = ok.get((base, c.img_size, c.dtype, base_ckpt))
                if base == c.model:
                    continue
                if ref is None:
                    # A baseline that ran out of memory is beaten on memory by anything that ran.
                    failed = next(
                        (
                            b
                            for b in outcomes
                            if b.config.model == base
                            and (b.config.img_size, b.config.dtype, b.config.checkpointing)
                            == (c.img_size, c.dtype, base_ckpt)
                        ),
                        None,
                    )
                    if failed is not None and failed.status in ("oom", "timeout", "skipped"):
                        row[f"vs_{tag}"] = f"{tag} {failed.status}"
                    continue
                row[f"mem_vs_{tag}"] = r["peak_mem_mb"] / ref.result["peak_mem_mb"]
                row[f"speed_vs_{tag}"] = r["images_per_s"] / ref.result["images_per_s"]
        out.append(row)
    return out


def _ratio(row: dict[str, Any], tag: str) -> str:
    if f"mem_vs_{tag}" in row:
        return f"{row[f'mem_vs_{tag}']:.2f} / {row[f'speed_vs_{tag}']:.2f}×"
    return row.get(f"vs_{tag}", "–")


def markdown(record: dict[str, Any], json_name: str) -> str:
    """The generated table of one run, naming its JSON file."""
    machine, versions, settings = record["machine"], record["versions"], record["settings"]
    what = "training step (forward + loss + backward)" if settings["mode"] == "train" else "inference forward"
    lines = [
        f"### Backbones, {settings['mode']}: measured (generated by `benchmarks/backbone.py`)",
        "",
        f"`{record['command']}` — {record['date_utc']}; JSON `benchmarks/out/{json_name}`; **CPU only** "
        f"({machine['cpu_model']}, {machine['cpu_count']} cores, {machine['ram_gib']} GiB; torch {versions['torch']}, "
        f"timm {versions['timm']}); {settings['threads']} threads, batch {settings['batch']}, "
        f"{settings['steps']} timed steps after one warm-up; load average {record['load_start']['1m']} at start, "
        f"{record['load_end']['1m']} at end; wall {record['wall_min']:.1f} min.",
        "",
        f"Measured: one {what} per step, each model in its own process, the models of a group back to back. "
        "img/s = batch ÷ median wall-clock step time. Peak MB = peak RSS minus RSS after the imports: weights, "
        + ("gradients, " if settings["mode"] == "train" else "")
        + "input, activations, decays and caches. Ratios: ours ÷ baseline in the same group, memory / wall-clock "
        f"speed. `*`: the threads got < 85 % of their CPU time (shared machine). Address space capped at "
        f"+{settings['mem_cap_gb']:g} GiB per process."
        + _allocator_note(settings.get("malloc_mmap_threshold")),
        "",
        "| size | dtype | ckpt | model | GFLOPs/img | step s | img/s | peak MB | load | vs Swin-B: mem / speed | "
        "vs ViT-B: mem / speed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        label = LABELS.get(row["model"], f"`{row['model']}`")
        head = f"| {row['img_size']} | {row['dtype']} | {ckpt_label(row['checkpointing'])} | {label} |"
        gflops = "–" if not row.get("gflops") else f"{row['gflops']:.0f}"
        if row["status"] != "ok":
            lines.append(f"{head} {gflops} | {row['status']}: {row['reason']} | | | | | |")
            continue
        starved = "*" if row["cpu_util"] < 0.85 else ""
        load = next(
            (
                o["result"].get("load_1m")
                for o in record["outcomes"]
                if o["config"]["model"] == row["model"]
                and (o["config"]["img_size"], o["config"]["dtype"], o["config"]["checkpointing"])
                == (row["img_size"], row["dtype"], row["checkpointing"])
            ),
            None,
        )
        lines.append(
            f"{head} {gflops} | {row['step_s']:.2f} | {row['images_per_s']:.3g}{starved} | {row['peak_mem_mb']:.0f} | "
            f"{load} | {_ratio(row, 'swin')} | {_ratio(row, 'vit')} |"
        )
    return "\n".join(lines)


def _allocator_note(threshold: int | None) -> str:
    if threshold is None:
        return " glibc malloc with its default settings."
    return (f" glibc malloc with `MALLOC_MMAP_THRESHOLD_={threshold}` in every child alike (blocks from "
            f"{threshold / 2**20:g} MiB up are unmapped when freed).")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("eval", "train"), default="train")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=1, help="the same batch for every model")
    parser.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--ckpt", nargs="+", choices=tuple(_CKPT_FLAGS), default=["off", "on"],
                        help="activation checkpointing: off, on (every block), mlp (ours only: MLP branches)")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                        help="set glibc's MALLOC_MMAP_THRESHOLD_ in every child (default: glibc's own setting)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--mem-cap-gb", type=float, default=6.0, help="address space per child above its imports")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per child process")
    parser.add_argument("--max-total-min", type=float, default=90.0, help="skip what is left after this wall time")
    parser.add_argument("--no-flops", action="store_true", help="skip the meta-device FLOP count")
    parser.add_argument("--no-results-md", action="store_true", help="write only the JSON")
    parser.add_argument("--section", help="RESULTS.md section name (default backbone-<mode>)")
    parser.add_argument("--render", type=Path, help="only rewrite the RESULTS.md section from this saved JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def render(path: Path, section: str | None, results: Path = RESULTS_MD) -> Path:
    """Rewrite a RESULTS.md section from a saved run's JSON (same table as the run would have written)."""
    record = json.loads(path.read_text())
    name = section or f"backbone-{record['settings']['mode']}"
    return write_results_section(name, markdown(record, path.name), results)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write ``benchmarks/out/backbone-<mode>-<stamp>.json`` and its RESULTS.md section."""
    args = parse_args(argv)
    if args.render:
        print(f"updated {render(args.render, args.section)}")
        return json.loads(args.render.read_text())
    record = run_header(sys.argv if argv is None else ["benchmarks/backbone.py", *argv])
    record["settings"] = {k: v for k, v in vars(args).items() if k != "child"}
    import rsvheat

    record["rsvheat_source"] = str(Path(rsvheat.__file__).resolve().parent)  # which rsvheat was measured
    flops: dict[str, int | None] = {}
    if not args.no_flops:
        for size in sorted(args.sizes):
            for model in args.models:
                try:
                    flops[f"{model}@{size}"] = count_flops_meta(model, size, fused=False)["flops"]
                except Exception as err:  # noted, not fatal: the measurement does not need it
                    print(f"flops {model}@{size}: {type(err).__name__}: {err}")
                    flops[f"{model}@{size}"] = None
    record["flops"] = flops
    started = time.perf_counter()
    outcomes = run_all(args)
    record["wall_min"] = (time.perf_counter() - started) / 60
    record["load_end"] = load_average()
    record["outcomes"] = [
        {"config": asdict(o.config), "status": o.status, "reason": o.reason, "result": o.result} for o in outcomes
    ]
    record["rows"] = rows(outcomes, flops)
    path = write_json(record, f"backbone-{args.mode}")
    print(f"wrote {path}")
    if not args.no_results_md:
        section = args.section or f"backbone-{args.mode}"
        print(f"updated {write_results_section(section, markdown(record, path.name))}")
    return record


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child_main(sys.argv[sys.argv.index("--child") + 1])
    else:
        main()

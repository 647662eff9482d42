"""GPU backbone benchmark: images/s and peak memory at the largest batch that fits, inference and a training step.

For each model (its own process): for ``eval`` (inference forward) and ``train`` (forward + loss + backward) in bf16
autocast at ``--size`` px, the batch is doubled from 1 until a step runs out of memory (``torch.cuda.OutOfMemoryError``),
reaches ``--max-batch`` or would overrun the model's time share; the largest batch that fitted is then timed over
``--steps`` steps after a warm-up (CUDA-synchronised wall clock), with ``torch.cuda.max_memory_allocated`` reset just
before. One JSON goes to ``benchmarks/out/gpu-<stamp>.json``. The models and steps are those of
``benchmarks/backbone.py`` (same builds, same loss).

``--device cpu`` runs the same code path on the CPU (peak RSS instead of ``max_memory_allocated``, an address-space
cap instead of the GPU's memory); with ``--quick`` it is the dry run that tests exercise::

    .venv-vision/bin/python benchmarks/gpu.py                       # one GPU, 1024 px, five models, < 8 min
    .venv-vision/bin/python benchmarks/gpu.py --device cpu --quick --models vheat_test heracles_test
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import read_peak_rss_bytes, read_rss_bytes, reset_peak_rss, run_header, write_json
from backbone import DEFAULT_MODELS, Config, build_model, make_step

_RESULT_PREFIX = "@@GPU "


def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or "out of memory" in text or "can't allocate memory" in text


class _Meter:
    """Peak memory of the device: ``max_memory_allocated`` on CUDA, peak RSS above the start on CPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch, self.cuda = torch, device.startswith("cuda")
        # CPU: everything above the RSS at construction (made before the model is built) counts.
        self.base = 0 if self.cuda else read_rss_bytes()

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def peak_bytes(self) -> int:
        if self.cuda:
            return int(self.torch.cuda.max_memory_allocated())
        return read_peak_rss_bytes() - self.base

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def _trial(model: Any, config: Config, device: str, meter: _Meter, steps: int) -> dict[str, Any]:
    """Warm-up plus ``steps`` timed steps at ``config.batch``; raises on out-of-memory."""
    import torch

    x = torch.randn(config.batch, 3, config.img_size, config.img_size, device=device)
    step = make_step(model, x, config)
    meter.reset()
    step()
    meter.sync()
    times = []
    for _ in range(steps):
        tick = time.perf_counter()
        step()
        meter.sync()
        times.append(time.perf_counter() - tick)
    median = sorted(times)[len(times) // 2]
    return {"batch": config.batch, "step_s": median, "images_per_s": config.batch / median, "peak_bytes": meter.peak_bytes()}


def largest_batch(
    model: Any, config: Config, device: str, meter: _Meter, *, max_batch: int, steps: int, budget_s: float
) -> dict[str, Any]:
    """Double the batch from 1 until out of memory, ``max_batch`` or the time budget; time the largest that fitted."""
    started = time.perf_counter()
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    batch = 1
    while batch <= max_batch:
        trial_config = Config(**{**config.__dict__, "batch": batch})
        try:
            probe = _trial(model, trial_config, device, meter, steps=1)
        except (RuntimeError, MemoryError) as err:
            if not _is_oom(err):
                raise
            tried.append({"batch": batch, "status": "oom"})
            break
        finally:
            model.zero_grad(set_to_none=True)
            meter.free()
        tried.append({"batch": batch, "status": "ok", "step_s": probe["step_s"]})
        best = probe
        elapsed = time.perf_counter() - started
        # The next trial takes about twice this one (two steps at double the batch); the final timing `steps` more.
        if elapsed + probe["step_s"] * (4 + 2 * steps) > budget_s:
            break
        batch *= 2
    if best is None:
        return {"status": "oom", "reason": "batch 1 does not fit", "tried": tried}
    final = _trial(model, Config(**{**config.__dict__, "batch": best["batch"]}), device, meter, steps=steps)
    model.zero_grad(set_to_none=True)
    meter.free()
    return {"status": "ok", **final, "tried": tried, "search_s": round(time.perf_counter() - started, 1)}


def measure_model(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """Both modes of one model in this process."""
    import torch

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    out: dict[str, Any] = {"model": spec}
    for mode in ("eval", "train"):
        config = Config(spec, args.size, 1, "bf16", mode, False, torch.get_num_threads(), args.steps)  # type: ignore[arg-type]
        meter = _Meter(args.device)
        model = build_model(spec, args.size, mode=mode).to(args.device)  # type: ignore[arg-type]
        out[mode] = largest_batch(
            model, config, args.device, meter, max_batch=args.max_batch, steps=args.steps,
            budget_s=args.model_budget_s / 2,
        )
        out["params"] = sum(p.numel() for p in model.parameters())
        del model
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def _child_main(spec: str, argv: list[str]) -> None:
    args = parse_args(argv)
    if args.device == "cpu":
        import resource

        from backbone import _vm_size_bytes

        limit = _vm_size_bytes() + int(args.cpu_mem_cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        payload: dict[str, Any] = {"status": "ok", **measure_model(spec, args)}
    except Exception as err:  # recorded by the parent; the next model still runs
        payload = {"status": "failed", "model": spec, "reason": f"{type(err).__name__}: {str(err)[:300]}"}
    print(_RESULT_PREFIX + json.dumps(payload), flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps at the chosen batch")
    parser.add_argument("--model-budget-s", type=float, default=60.0, help="time share per model (both modes)")
    parser.add_argument("--max-total-s", type=float, default=420.0, help="skip the models left after this")
    parser.add_argument("--cpu-mem-cap-gb", type=float, default=4.0, help="--device cpu: address space per child")
    parser.add_argument("--quick", action="store_true", help="64 px, batch <= 4, 1 step: a dry run of the code path")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the JSON goes (default benchmarks/out)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps = 64, 1
        args.max_batch, args.model_budget_s = min(args.max_batch, 4), min(args.model_budget_s, 60.0)
    return args


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    """Run every model in its own process; write one JSON and return it with its path."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no GPU here; run on a GPU machine or use --device cpu --quick.")
    record = run_header(["benchmarks/gpu.py", *argv])
    if args.device.startswith("cuda"):
        import torch

        record["gpu"] = {"name": torch.cuda.get_device_name(0), "memory_gib": torch.cuda.mem_get_info()[1] / 2**30}
    record["settings"] = {k: v for k, v in vars(args).items() if k != "child"}
    record["results"] = []
    started = time.perf_counter()
    for spec in args.models:
        if time.perf_counter() - started > args.max_total_s:
            record["results"].append({"status": "skipped", "model": spec, "reason": f"> {args.max_total_s:g} s total"})
            continue
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", spec]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=args.model_budget_s * 2 + 60)
            lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT_PREFIX)]
            if lines:
                result = json.loads(lines[-1][len(_RESULT_PREFIX) :])
            else:
                result = {"status": "failed", "model": spec, "reason": f"exit {proc.returncode}: {proc.stderr[-300:]}"}
        except subprocess.TimeoutExpired:
            result = {"status": "timeout", "model": spec, "reason": f"> {args.model_budget_s * 2 + 60:.0f} s"}
        record["results"].append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "tried"}), flush=True)
    record["wall_s"] = round(time.perf_counter() - started, 1)
    name = "gpu" + ("-quick" if args.quick else "")
    path = write_json(record, name, args.out_dir) if args.out_dir else write_json(record, name)
    print(f"wrote {path}")
    return record, path


if __name__ == "__main__":
    if "--child" in sys.argv:
        index = sys.argv.index("--child")
        _child_main(sys.argv[index + 1], sys.argv[1:index] + sys.argv[index + 2 :])
    else:
        main()

"""Benchmark the HCO diffusion core alone: DCT2 → ⊙ decay → IDCT2, GEMM path against the exact FFT path.

Times ``idct2d(dct2d(x) * decay)`` on channels-last ``(B, H, W, C)`` float32 maps for each spatial size with
``impl="matmul"`` (cached DCT matrices, two GEMMs) and ``impl="fft"``, reports the max-abs difference between the two,
the crossover size where FFT wins on this machine, and a recommended ``fft_threshold`` for ``impl="auto"``.

Runs in either venv (needs only torch and rsvheat)::

    .venv-vision/bin/python benchmarks/hco_operator.py [--sizes 14 28 56 128 256 512 1024] [--channels 128]

(Not named ``operator.py``: as a script it would shadow the standard-library ``operator`` module.)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Before torch loads libgomp: waiting OpenMP threads sleep, so CPU time measures work even on a busy machine.
    # Only as a script: importing this module (tests) must not change the environment of other processes.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, run_header, time_repeats, write_json, write_results_section

from rsvheat.layers.dct import DEFAULT_FFT_THRESHOLD, dct2d, idct2d
from rsvheat.layers.heat2d import decay_from_conductivity

SECTION = "backbone-operator"


def _decay(height: int, width: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    """A realistic decay field ``exp(−k ⊙ Λ)`` of shape (H, W, C), k ≥ 0 (docs/hco.md §Decay and conductivity)."""
    k = torch.rand(height, width, channels, generator=generator) * 0.5
    return decay_from_conductivity(k, height, width)


def _alpha(n: int, ndim: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    alpha = torch.full((n,), math.sqrt(2.0 / n), dtype=dtype)
    alpha[0] = math.sqrt(1.0 / n)
    shape = [1] * ndim
    shape[dim] = n
    return alpha.reshape(shape)


def _twiddle(n: int, ndim: int, dim: int, sign: float, dtype: torch.dtype) -> torch.Tensor:
    k = torch.arange(n, dtype=dtype)
    shape = [1] * ndim
    shape[dim] = n
    return torch.polar(torch.ones(n, dtype=dtype), sign * math.pi * k / (2 * n)).reshape(shape)


def makhoul_dct(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Candidate (benchmark only): orthonormal DCT-II along ``dim`` from one N-point real FFT (Makhoul 1980).

    ``v = [x0, x2, x4, …, x5, x3, x1]``, ``V = FFT_N(v)``, ``X_k = α_k Re(e^{−iπk/2N} V_k)``; ``V`` for k > N/2 comes
    from Hermitian symmetry of ``rfft``. Half the length and a quarter of the work of the zero-padded 2N complex FFT.
    """
    n = x.shape[dim]
    v = torch.cat((x[_sl(x, dim, 0, None, 2)], x[_sl(x, dim, 1, None, 2)].flip(dim)), dim=dim)  # evens, reversed odds
    half = torch.fft.rfft(v, dim=dim)  # k = 0 … N/2
    rest = half.narrow(dim, 1, n - n // 2 - 1).flip(dim).conj()  # V_k = conj(V_{N−k}) for k > N/2
    spectrum = torch.cat((half, rest), dim=dim)
    return (spectrum * _twiddle(n, x.ndim, dim, -1.0, x.dtype)).real * _alpha(n, x.ndim, dim, x.dtype)


def makhoul_idct(coeffs: torch.Tensor, dim: int) -> torch.Tensor:
    """Candidate inverse (DCT-III): ``V_k = e^{iπk/2N}(Y_k − i Y_{N−k})``, ``Y = X/α``, then ``v = IRFFT_N(V)``."""
    n = coeffs.shape[dim]
    y = coeffs / _alpha(n, coeffs.ndim, dim, coeffs.dtype)
    m = n // 2 + 1
    y_head = y.narrow(dim, 0, m)  # Y_k, k = 0 … N/2
    # Y_{N−k} for k = 0 … N/2, with Y_N = 0.
    y_mirror = torch.cat((torch.zeros_like(y.narrow(dim, 0, 1)), y.narrow(dim, n - m + 1, m - 1).flip(dim)), dim=dim)
    spectrum = torch.complex(y_head, -y_mirror) * _twiddle(n, coeffs.ndim, dim, 1.0, coeffs.dtype).narrow(dim, 0, m)
    v = torch.fft.irfft(spectrum, n=n, dim=dim)
    out = torch.empty_like(v)
    evens = (n + 1) // 2
    out[_sl(out, dim, 0, None, 2)] = v.narrow(dim, 0, evens)
    out[_sl(out, dim, 1, None, 2)] = v.narrow(dim, evens, n - evens).flip(dim)
    return out


def _sl(x: torch.Tensor, dim: int, start: int, stop: int | None, step: int) -> tuple[slice, ...]:
    index = [slice(None)] * x.ndim
    index[dim] = slice(start, stop, step)
    return tuple(index)


def _core(x: torch.Tensor, decay: torch.Tensor, impl: str) -> torch.Tensor:
    if impl == "makhoul":
        spectrum = makhoul_dct(makhoul_dct(x, 1), 2)  # along H, then W of (B, H, W, C)
        return makhoul_idct(makhoul_idct(spectrum * decay, 1), 2)
    return idct2d(dct2d(x, layout="bhwc", impl=impl) * decay, layout="bhwc", impl=impl)


def bench_size(size: int, channels: int, batch: int, budget_s: float, max_repeats: int) -> dict[str, Any]:
    """Time both paths at one square size and compare their outputs."""
    generator = torch.Generator().manual_seed(size)
    x = torch.randn(batch, size, size, channels, generator=generator)  # (B, H, W, C)
    decay = _decay(size, size, channels, generator)
    row: dict[str, Any] = {"size": size, "channels": channels, "batch": batch}
    outputs = {}
    with torch.inference_mode():
        for impl in ("matmul", "fft", "makhoul"):
            tick = time.perf_counter()
            outputs[impl] = _core(x, decay, impl)  # warm-up: builds and caches the DCT matrices
            first = time.perf_counter() - tick
            timing = time_repeats(
                lambda impl=impl: _core(x, decay, impl),
                min_repeats=min(2, max_repeats),
                max_repeats=max_repeats,
                budget_s=budget_s,
            )
            row[impl] = {"first_s": round(first, 5), **timing}
        row["max_abs_diff"] = (outputs["matmul"] - outputs["fft"]).abs().max().item()
        row["max_abs_diff_makhoul"] = (outputs["matmul"] - outputs["makhoul"]).abs().max().item()
        # fp64 reference decides which path is closer to exact.
        reference = _core(x.double(), decay.double(), "matmul")
        for impl in ("matmul", "fft", "makhoul"):
            row[f"max_abs_err_{impl}"] = (outputs[impl].double() - reference).abs().max().item()
    # CPU-time ratio: robust to other processes on the cores (wall ratio kept in the JSON).
    row["fft_speedup"] = row["matmul"]["median_cpu_s"] / row["fft"]["median_cpu_s"]
    row["fft_speedup_wall"] = row["matmul"]["median_s"] / row["fft"]["median_s"]
    row["makhoul_speedup"] = row["matmul"]["median_cpu_s"] / row["makhoul"]["median_cpu_s"]
    return row


def recommend_threshold(rows: list[dict[str, Any]], key: str = "fft_speedup") -> tuple[int | None, int]:
    """Smallest size from which FFT stays faster at every larger measured size, and the matching ``fft_threshold``.

    ``impl="auto"`` uses FFT when ``max(H, W) > fft_threshold``, so the threshold is the largest measured size below the
    crossover (or the current default when FFT never wins).
    """
    ordered = sorted(rows, key=lambda row: row["size"])
    crossover = None
    for index, row in enumerate(ordered):
        if all(later[key] > 1.0 for later in ordered[index:]):
            crossover = row["size"]
            break
    if crossover is None:
        return None, max(DEFAULT_FFT_THRESHOLD, ordered[-1]["size"])
    below = [row["size"] for row in ordered if row["size"] < crossover]
    return crossover, below[-1] if below else 0


def markdown(record: dict[str, Any]) -> str:
    """The operator table for RESULTS.md."""
    machine = record["machine"]
    lines = [
        "### HCO core alone: GEMM vs FFT DCT path",
        "",
        f"`{record['command']}` — {record['date_utc']}, {machine['cpu_model']} ({machine['cpu_count']} cores, "
        f"{machine['ram_gib']} GiB, torch {record['versions']['torch']}, {machine.get('torch_threads')} threads, "
        f"fp32, no GPU), load {record['load_start']['1m']} → {record['load_end']['1m']}.",
        "Core = `idct2d(dct2d(x) * decay)` on (B, H, W, C) channels-last; medians of repeats after one warm-up. "
        "ms = process CPU time per call ÷ threads (`OMP_WAIT_POLICY=PASSIVE`; robust to other processes), wall ms "
        "in brackets.",
        "",
        "| H = W | C | GEMM ms (wall) | FFT ms (wall) | FFT speed-up | candidate rFFT ms (wall) | candidate speed-up | "
        "max abs diff GEMM−FFT / GEMM−candidate | max abs err vs fp64 (GEMM / FFT / candidate) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    threads = machine.get("torch_threads") or 1

    def cell(timing: dict[str, Any]) -> str:
        return f"{timing['median_cpu_s'] / threads * 1e3:.2f} ({timing['median_s'] * 1e3:.2f})"

    for row in record["results"]:
        lines.append(
            f"| {row['size']} | {row['channels']} | {cell(row['matmul'])} | {cell(row['fft'])} | "
            f"{row['fft_speedup']:.2f}× | {cell(row['makhoul'])} | {row['makhoul_speedup']:.2f}× | "
            f"{row['max_abs_diff']:.1e} / {row['max_abs_diff_makhoul']:.1e} | {row['max_abs_err_matmul']:.1e} / "
            f"{row['max_abs_err_fft']:.1e} / {row['max_abs_err_makhoul']:.1e} |"
        )
    lines.append("")
    lines.append(
        "Candidate = Makhoul's DCT from one N-point `rfft` after an even/odd reorder (benchmark-only code in "
        "`benchmarks/hco_operator.py`), instead of the library's zero-padded 2N-point complex FFT."
    )
    for label, crossover, threshold in (
        ("Library FFT path", record["crossover_size"], record["recommended_fft_threshold"]),
        ("Candidate rFFT path", record["crossover_size_makhoul"], record["recommended_threshold_makhoul"]),
    ):
        if crossover is None:
            lines.append(
                f"- {label}: never faster than GEMM up to {record['results'][-1]['size']} on this CPU; "
                f"an `fft_threshold` of at least {threshold} keeps `auto` on GEMM."
            )
        else:
            lines.append(
                f"- {label}: faster than GEMM from H = W = {crossover} on; `fft_threshold = {threshold}` "
                f"(`auto` uses FFT when max(H, W) > threshold; current default {DEFAULT_FFT_THRESHOLD})."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep, write JSON to ``benchmarks/out/`` and the operator section of RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[14, 28, 56, 128, 256, 512, 1024])
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=6.0, help="timing budget per size and path")
    parser.add_argument("--max-repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-results-md", action="store_true", help="write only the JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    record = run_header(sys.argv if argv is None else ["benchmarks/hco_operator.py", *argv])
    results = []
    for size in sorted(args.sizes):
        row = bench_size(size, args.channels, args.batch, args.budget_s, args.max_repeats)
        ms = {impl: row[impl]["median_cpu_s"] / torch.get_num_threads() * 1e3 for impl in ("matmul", "fft", "makhoul")}
        print(
            f"{size:5d}: cpu-ms gemm {ms['matmul']:9.2f}  fft {ms['fft']:9.2f}  rfft-cand {ms['makhoul']:9.2f}  "
            f"diff {row['max_abs_diff']:.1e}/{row['max_abs_diff_makhoul']:.1e}  "
            f"util {row['matmul']['median_cpu_s'] / row['matmul']['median_s'] / torch.get_num_threads():.2f}",
            flush=True,
        )
        results.append(row)
    crossover, threshold = recommend_threshold(results)
    crossover_m, threshold_m = recommend_threshold(results, key="makhoul_speedup")
    record.update(
        results=results,
        crossover_size=crossover,
        recommended_fft_threshold=threshold,
        crossover_size_makhoul=crossover_m,
        recommended_threshold_makhoul=threshold_m,
        load_end=load_average(),
    )
    path = write_json(record, "hco-operator")
    print(f"wrote {path}")
    if not args.no_results_md:
        print(f"updated {write_results_section(SECTION, markdown(record))}")
    return record


if __name__ == "__main__":
    main()

"""Benchmark what the frequency pretraining objective adds to a backbone step (docs/pretraining.md §3).

For each backbone and chip size, one process times side by side, on the same inputs:

- ``mask``: the frequency masking alone (pad → DCT → K masks → IDCT → crop) of a batch of B chips;
- ``backbone``: a plain forward + backward of the backbone on the K·B views (what the encoder must do anyway);
- ``step``: the full pretraining forward + backward (masking, encoder on K·B views, fusion, decoder, the three losses).

It reports ``mask/step`` (the masking's share) and ``step/backbone`` (the objective's total overhead over the encoder
work it requires), from CPU time so that a loaded machine stretches both sides alike::

    .venv/bin/python benchmarks/ssl_objective.py [--backbones rsvheat_base heracles_base] [--sizes 224 256] [--batch 2]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Before torch loads libgomp: waiting OpenMP threads sleep, so CPU time measures work even on a busy machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, read_peak_rss_bytes, run_header, time_repeats, write_json, write_results_section

from rsvheat.ssl import build_pretrainer

SECTION = "ssl-objective"
BANDS = 13  # a Sentinel-2 L1C chip


def measure(backbone: str, size: int, batch: int, budget_s: float) -> dict[str, Any]:
    """Median CPU and wall seconds of ``mask``, ``backbone`` and ``step`` for one configuration."""
    torch.manual_seed(0)
    pretrainer = build_pretrainer(backbone, {"optical": BANDS}, backbone_kwargs={"img_size": size})
    x = torch.randn(batch, BANDS, size, size)
    gen = torch.Generator().manual_seed(0)
    views, _ = pretrainer.make_views({"optical": x}, generator=gen)
    stacked = views["optical"].reshape(-1, BANDS, size, size)  # (K, B, C, H, W) -> (K·B, C, H, W)

    def mask() -> None:
        with torch.no_grad():
            pretrainer.make_views({"optical": x}, generator=gen)

    def backbone_step() -> None:
        pretrainer.zero_grad(set_to_none=True)
        features = pretrainer.encoder.forward_features(stacked, modality="optical")
        sum(f.float().mean() for f in features).backward()

    def step() -> None:
        pretrainer.zero_grad(set_to_none=True)
        pretrainer({"optical": x}, generator=gen)["loss"].backward()

    timings = {}
    for name, fn in (("mask", mask), ("backbone", backbone_step), ("step", step)):
        fn()  # warm-up: DCT matrices, allocator
        timings[name] = time_repeats(fn, min_repeats=3, max_repeats=20, budget_s=budget_s)
    cpu = {name: t["median_cpu_s"] for name, t in timings.items()}
    return {
        "backbone": backbone,
        "size": size,
        "batch": batch,
        "views": pretrainer.masking.num_views,
        "timings": timings,
        "mask_over_step": cpu["mask"] / cpu["step"],
        "step_over_backbone": cpu["step"] / cpu["backbone"],
    }


def markdown(record: dict[str, Any]) -> str:
    """The RESULTS.md section for one run."""
    load, load_end = record["load_start"], record.get("load_end", {})
    lines = [
        "## Pretraining objective overhead (`benchmarks/ssl_objective.py`)",
        "",
        f"{record['date_utc']}, {record['machine'].get('cpu_model', 'CPU')}, {torch.get_num_threads()} threads, load "
        f"{load.get('1m', '?')} at start and {load_end.get('1m', '?')} at the end; `{record['command']}`. One "
        "13-band chip batch, K = 2 views, default decoder and projection widths, fp32. Median CPU seconds per call "
        "(wall in brackets); `mask/step` is the "
        "masking's share of a pretraining step, `step/backbone` the whole objective against the plain backbone "
        f"forward + backward on the same K·B views. Peak RSS {record['peak_rss_gib']} GiB.",
        "",
        "| backbone | size | B | mask s | backbone s | step s | mask/step | step/backbone |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in record["results"]:
        t = row["timings"]

        def cell(name: str, t: dict[str, Any] = t) -> str:
            return f"{t[name]['median_cpu_s']:.3f} ({t[name]['median_s']:.3f})"

        lines.append(
            f"| {row['backbone']} | {row['size']} | {row['batch']} | {cell('mask')} | {cell('backbone')} | "
            f"{cell('step')} | {row['mask_over_step']:.3f} | {row['step_over_backbone']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep, write the JSON record and the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["rsvheat_base", "heracles_base"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 256])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=15.0, help="time budget per measurement")
    parser.add_argument("--no-results-md", action="store_true", help="only write the JSON")
    args = parser.parse_args(argv)
    record = run_header(argv if argv is not None else sys.argv)
    record["results"] = []
    for backbone in args.backbones:
        for size in args.sizes:
            row = measure(backbone, size, args.batch, args.budget_s)
            record["results"].append(row)
            print(
                f"{backbone} {size}: mask/step {row['mask_over_step']:.3f}, step/backbone "
                f"{row['step_over_backbone']:.2f}",
                flush=True,
            )
    record["load_end"] = load_average()
    record["peak_rss_gib"] = round(read_peak_rss_bytes() / 2**30, 2)
    print(write_json(record, SECTION))
    if not args.no_results_md:
        write_results_section(SECTION, markdown(record))
    return record


if __name__ == "__main__":
    main()

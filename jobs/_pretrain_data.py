"""The pretraining feed: the stems and streams of the ingest outputs, optical-SAR pairs, the per-step stream pick.

Read by ``jobs/pretrain.py``; the rules are written down in ``docs/pretrain-job.md`` ("Data").

- **Stems.** One stem per sensor (``dataset.json`` ``collections[c].sensor.sensor``), named by that id made into an
  identifier (``bigearthnet-s2`` -> ``bigearthnet_s2``). Every collection of one stem must have the same bands and the
  same normalisation stats (``stats_hash``); two ingests of one sensor with different stats are an error, since an
  encoder records one set of stats per stem.
- **Pairs.** An optical and a SAR chip are a pair when they cover the same place within ``window`` of each other: the
  same ``grid_cell`` in ``index.parquet`` (same UTM zone, origin, size and pixel size, so the same footprint), or, for
  chips on different grids, WGS84 bounding boxes with IoU >= ``min_iou`` and the same chip shape. Each chip is in at
  most one pair (closest in time first).
- **Streams.** A stream is what one batch is drawn from, so a batch never mixes sensors: one stream per stem of its
  unpaired chips, one per (optical stem, SAR stem) of its pairs. Every step picks one stream with probability
  proportional to its chip count, from ``(seed, step, micro_step)`` alone, so every rank picks the same stream (DDP and
  the cross-rank L_con need equal shapes) and a resumed run picks what the first would have.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs._native_feed import FeedNormalize, consumer_collate
from pipeline.dataset import load_chips, read_dataset, read_dataset_json, read_index
from pipeline.feed import Normalize, normalize_numpy, stats_vector
from pipeline.manifest import OutputStore

if TYPE_CHECKING:
    import ray.data
    import torch

__all__ = [
    "FeedPlan",
    "PairJoiner",
    "StemInfo",
    "StreamFeed",
    "StreamInfo",
    "build_datasets",
    "pair_chips",
    "pick_stream",
    "plan_feed",
    "stem_name",
    "stream_collates",
    "stream_nbytes",
]

_INDEX_COLUMNS = ["chip_id", "chip_key", "grid_cell", "collection", "datetime", "bbox", "window", "status"]


def stem_name(sensor: str) -> str:
    """A sensor id as a stem name: lower case, ``[a-z0-9_]`` only (``"bigearthnet-s2"`` -> ``"bigearthnet_s2"``)."""
    name = re.sub(r"[^a-z0-9_]+", "_", sensor.lower()).strip("_")
    return name or "stem"


@dataclass(frozen=True)
class StemInfo:
    """One stem of the encoder: its band order, normalisation stats and where its chips come from."""

    name: str
    modality: str  # "optical" | "sar" | ... from the sensor config
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stats_hash: str
    sources: tuple[tuple[str, str], ...]  # (dataset dir, collection)
    chip_shape: tuple[int, int, int]


@dataclass(frozen=True)
class StreamInfo:
    """One source of batches: a stem's unpaired chips, or pairs of an optical and a SAR stem."""

    name: str
    stems: tuple[str, ...]
    rows: int
    pairs: tuple[tuple[str, str], ...] = ()  # (optical chip id, SAR chip id) for a pair stream
    sources: tuple[tuple[str, str], ...] = ()  # (dataset dir, collection) per stem, in `stems` order


@dataclass(frozen=True)
class FeedPlan:
    """Everything the workers need to build and read the streams (plain data; travels in ``train_loop_config``)."""

    stems: dict[str, StemInfo]
    streams: dict[str, StreamInfo]
    lineage: dict[str, Any] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)  # stream -> why it was left out

    @property
    def in_chans(self) -> dict[str, int]:
        """Band count per stem, the backbone's ``in_chans``."""
        return {name: len(stem.bands) for name, stem in self.stems.items()}

    @property
    def weights(self) -> dict[str, float]:
        """Probability of each stream per step: its share of all rows."""
        total = sum(s.rows for s in self.streams.values())
        return {name: s.rows / total for name, s in self.streams.items()}


def _index(dataset_dir: str, s3_endpoint: str | None) -> pa.Table:
    return read_index(OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint), None).select(_INDEX_COLUMNS)


def _iou(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    w = min(a["xmax"], b["xmax"]) - max(a["xmin"], b["xmin"])
    h = min(a["ymax"], b["ymax"]) - max(a["ymin"], b["ymin"])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a["xmax"] - a["xmin"]) * (a["ymax"] - a["ymin"]) + (b["xmax"] - b["xmin"]) * (b["ymax"] - b["ymin"])
    return inter / (union - inter)


def pair_chips(
    left: pa.Table, right: pa.Table, *, window: timedelta, min_iou: float = 0.8
) -> list[tuple[str, str]]:
    """One-to-one pairs ``(left chip id, right chip id)`` of chips of the same place within ``window`` in time.

    Candidates share a ``grid_cell``, or (on different grids) have WGS84 bbox IoU >= ``min_iou`` and the same window
    size; each chip joins at most one pair, the closest in time first (ties by chip id, so the result is deterministic).

    Args:
        left, right: ``index.parquet`` rows (``chip_id``, ``grid_cell``, ``datetime``, ``bbox``, ``window``).
        window: the largest time difference of a pair.
        min_iou: footprint overlap needed when the grid cells differ.
    """
    import shapely

    lrows, rrows = left.to_pylist(), right.to_pylist()
    candidates: list[tuple[float, str, str]] = []
    by_cell: dict[str, list[int]] = {}
    for j, row in enumerate(rrows):
        by_cell.setdefault(row["grid_cell"], []).append(j)
    boxes = [shapely.box(r["bbox"]["xmin"], r["bbox"]["ymin"], r["bbox"]["xmax"], r["bbox"]["ymax"]) for r in rrows]
    tree = shapely.STRtree(boxes) if boxes else None
    for row in lrows:
        same_cell = by_cell.get(row["grid_cell"], [])
        near = set(same_cell)
        if tree is not None:
            b = row["bbox"]
            for j in tree.query(shapely.box(b["xmin"], b["ymin"], b["xmax"], b["ymax"])):
                other = rrows[int(j)]
                size = (row["window"][2], row["window"][3]) == (other["window"][2], other["window"][3])
                if size and _iou(b, other["bbox"]) >= min_iou:
                    near.add(int(j))
        for j in near:
            other = rrows[j]
            if row["datetime"] is None or other["datetime"] is None:
                continue
            gap = abs(row["datetime"] - other["datetime"])
            if gap <= window:
                candidates.append((gap.total_seconds(), row["chip_id"], other["chip_id"]))
    candidates.sort()
    used_left: set[str] = set()
    used_right: set[str] = set()
    pairs = []
    for _, a, b in candidates:
        if a not in used_left and b not in used_right:
            used_left.add(a)
            used_right.add(b)
            pairs.append((a, b))
    return sorted(pairs)


def plan_feed(
    data: Sequence[str],
    *,
    collections: Sequence[str] = (),
    pairing: bool = True,
    pair_window: timedelta = timedelta(days=3),
    min_iou: float = 0.8,
    s3_endpoint: str | None = None,
) -> FeedPlan:
    """Stems, streams and pairs of one or more ingest outputs (see the module docstring for the rules).

    Raises:
        FileNotFoundError: a directory is not a finished ingest output.
        ValueError: a requested collection is missing, one stem gets two band orders or two sets of stats, or
            nothing is left to train on.
    """
    stems: dict[str, dict[str, Any]] = {}
    found: set[str] = set()
    lineage: dict[str, Any] = {"datasets": []}
    for dataset_dir in data:
        meta = read_dataset_json(dataset_dir, s3_endpoint=s3_endpoint)
        entries = {}
        for collection, entry in sorted((meta.get("collections") or {}).items()):
            if collections and collection not in collections:
                continue
            stats = entry.get("stats")
            if not entry.get("shards") or not stats:
                continue
            found.add(collection)
            sensor = entry.get("sensor") or {}
            name = stem_name(str(sensor.get("sensor") or collection))
            shape = tuple(int(v) for v in (entry.get("pixel_encoding") or {}).get("chip_shape", (0, 0, 0)))
            info = {
                "modality": str(sensor.get("modality") or "optical"),
                "bands": tuple(entry["bands"]),
                "mean": tuple(float(v) for v in stats["mean"]),
                "std": tuple(float(v) for v in stats["std"]),
                "stats_hash": str(stats["stats_hash"]),
                "chip_shape": shape,
            }
            if name in stems:
                old = stems[name]
                for key in ("bands", "stats_hash"):
                    if old[key] != info[key]:
                        raise ValueError(
                            f"Stem {name!r} gets {key} {old[key]} from {old['sources'][0]} but {info[key]} from "
                            f"{(dataset_dir, collection)}; one stem has one band order and one set of normalisation "
                            "stats. Ingest both into one --output (its stats cover all chips), or pass --collections "
                            "to train on one of them."
                        )
                old["sources"].append((dataset_dir, collection))
            else:
                stems[name] = {**info, "sources": [(dataset_dir, collection)]}
            entries[collection] = {"stats_hash": info["stats_hash"], "chips": int(entry["counts"]["chips_written"])}
        lineage["datasets"].append(
            {
                "uri": dataset_dir,
                "dataset_version": meta.get("dataset_version"),
                "processing_versions": sorted(
                    {pv for e in (meta.get("collections") or {}).values() for pv in e.get("processing_versions", [])}
                ),
                "collections": entries,
            }
        )
    missing = sorted(set(collections) - found)
    if missing:
        raise ValueError(
            f"--collections {missing} have no written chips in --data {list(data)}; the datasets hold "
            f"{sorted({c for d in lineage['datasets'] for c in d['collections']} | found) or 'nothing'}."
        )
    if not stems:
        raise ValueError(f"--data {list(data)} holds no written chips; run jobs/ingest.py first.")

    # Chips per source from the index: all of them, minus those that end up in a pair.
    indexes: dict[str, pa.Table] = {d: _index(d, s3_endpoint) for d in dict.fromkeys(data)}
    chips: dict[tuple[str, str], pa.Table] = {}
    for stem in stems.values():
        for source in stem["sources"]:
            table = indexes[source[0]]
            chips[source] = table.filter(pc.equal(table["collection"], source[1]))
    paired_ids: set[str] = set()
    streams: dict[str, StreamInfo] = {}
    if pairing:
        optical = [n for n, s in stems.items() if s["modality"] == "optical"]
        sar = [n for n, s in stems.items() if s["modality"] == "sar"]
        for a in optical:
            for b in sar:
                for sa in stems[a]["sources"]:
                    for sb in stems[b]["sources"]:
                        pairs = pair_chips(chips[sa], chips[sb], window=pair_window, min_iou=min_iou)
                        if not pairs:
                            continue
                        name = f"{a}+{b}" if len(stems[a]["sources"]) == len(stems[b]["sources"]) == 1 else (
                            f"{a}+{b}@{len(streams)}"
                        )
                        streams[name] = StreamInfo(name, (a, b), len(pairs), tuple(pairs), (sa, sb))
                        paired_ids.update(p for pair in pairs for p in pair)
    for name, stem in stems.items():
        for i, source in enumerate(stem["sources"]):
            ids = [c for c in chips[source]["chip_id"].to_pylist() if c not in paired_ids]
            if ids:
                key = name if len(stem["sources"]) == 1 else f"{name}@{i}"
                streams[key] = StreamInfo(key, (name,), len(ids), (), (source,))
    lineage["pairing"] = {
        "enabled": pairing,
        "window_hours": pair_window.total_seconds() / 3600,
        "min_iou": min_iou,
        "pairs": {n: s.rows for n, s in streams.items() if len(s.stems) == 2},
    }
    lineage["stems"] = {n: {"stats_hash": s["stats_hash"], "sources": s["sources"]} for n, s in stems.items()}
    infos = {
        n: StemInfo(n, s["modality"], s["bands"], s["mean"], s["std"], s["stats_hash"], tuple(s["sources"]),
                    s["chip_shape"])
        for n, s in stems.items()
    }
    return FeedPlan(infos, streams, lineage)


def drop_small_streams(plan: FeedPlan, *, world_size: int, batch_size: int) -> FeedPlan:
    """Leave out streams that cannot fill one batch per worker per epoch (each worker gets rows // world_size).

    Raises:
        ValueError: no stream is left; the message names each stream's size.
    """
    keep, excluded = {}, dict(plan.excluded)
    for name, stream in plan.streams.items():
        per_worker = stream.rows // world_size
        if per_worker >= batch_size:
            keep[name] = stream
        else:
            excluded[name] = (
                f"{stream.rows} rows give {per_worker} per worker over {world_size} workers, fewer than "
                f"--batch-size {batch_size}"
            )
    if not keep:
        raise ValueError(
            f"No stream can fill a batch: {excluded}. Lower --batch-size or --num-workers, or add data."
        )
    return FeedPlan(plan.stems, keep, plan.lineage, excluded)


class _KeepKeys:
    """Ray Data batch UDF: keep the rows whose ``chip_key`` is in a set."""

    def __init__(self, keys: Sequence[int]) -> None:
        self.keys = np.asarray(sorted(keys), dtype=np.int64)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = np.isin(batch["chip_key"], self.keys)
        return {k: v[keep] for k, v in batch.items()}


class PairJoiner:
    """Ray Data batch UDF: add each optical chip's SAR partner (normalised with the SAR stats) as ``partner``.

    The anchor rows come from :func:`pipeline.read_dataset`; the partners are read with :func:`pipeline.load_chips`
    (one read per needed row group) and normalised with the feed's own arithmetic
    (:func:`pipeline.feed.normalize_numpy`: ``(x - mean) / std``, invalid pixels 0). Rows without a partner are
    dropped.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], dataset_dir: str, collection: str,
                 mean: Sequence[float], std: Sequence[float], s3_endpoint: str | None = None) -> None:
        from pipeline.manifest import chip_key

        self.partner = {chip_key(a): b for a, b in pairs}
        self.dataset_dir, self.collection, self.s3_endpoint = dataset_dir, collection, s3_endpoint
        self.mean, self.std = stats_vector(mean, 0.0, positive=False), stats_vector(std, 1.0, positive=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = np.asarray([int(k) in self.partner for k in batch["chip_key"]], dtype=bool)
        out = {k: v[keep] for k, v in batch.items()}
        ids = [self.partner[int(k)] for k in out["chip_key"]]
        chips = list(load_chips(self.dataset_dir, ids, collection=self.collection, s3_endpoint=self.s3_endpoint))
        if not chips:
            shape = (0, self.mean.shape[0], *out["image"].shape[2:])
            out["partner"] = np.zeros(shape, np.float32)
            out["partner_valid"] = np.zeros((0, *shape[2:]), bool)
            return out
        raw = np.stack([c["image"] for c in chips])  # (B, C, H, W), native dtype
        valid = np.stack([c["valid"] for c in chips])  # (B, H, W)
        out["partner"] = normalize_numpy(raw, valid, self.mean, self.std)  # the feed's own arithmetic
        out["partner_valid"] = valid
        return out


def build_datasets(plan: FeedPlan, *, s3_endpoint: str | None = None, shuffle: bool = True,
                   cache_bytes: int | Mapping[str, int] | None = None, normalize: Normalize = "device",
                   ) -> dict[str, ray.data.Dataset]:
    """One Ray Dataset per stream, read with :func:`pipeline.read_dataset` (one collection, one sensor each).

    ``shuffle`` shuffles the row-group and chip order anew every epoch (the feed's own shuffle). ``cache_bytes``
    (one budget, shared by the streams in proportion to their rows, or one per stream name): each stream decodes
    that many bytes of its chips once into the object store and serves them from there every epoch (docs/feed.md);
    the rest streams from the shards. ``normalize="device"`` (the default) ships native pixels, to be normalised by
    the consumer's :func:`jobs._native_feed.consumer_collate` (:meth:`StreamFeed` ``collates``); ``"worker"``
    normalises in the read tasks. The SAR partner of a pair stream is normalised by :class:`PairJoiner` either way.
    """
    from pipeline.manifest import chip_key

    out = {}
    total_rows = sum(s.rows for s in plan.streams.values()) or 1
    for name, stream in plan.streams.items():
        dataset_dir, collection = stream.sources[0]
        if isinstance(cache_bytes, Mapping):
            share = cache_bytes.get(name) or None
        else:
            share = int(cache_bytes * stream.rows / total_rows) if cache_bytes else None
        ds = read_dataset(dataset_dir, collection=collection, s3_endpoint=s3_endpoint, shuffle=shuffle,
                          cache_bytes=share, normalize=normalize)
        if len(stream.stems) == 2:
            sar = plan.stems[stream.stems[1]]
            joiner = PairJoiner(stream.pairs, stream.sources[1][0], stream.sources[1][1], sar.mean, sar.std,
                                s3_endpoint=s3_endpoint)
            ds = ds.map_batches(joiner, batch_format="numpy")  # an instance: stateless tasks, no actor pool
        else:
            paired = {chip_key(c) for s in plan.streams.values() for pair in s.pairs for c in pair}
            index = _index(dataset_dir, s3_endpoint)
            index = index.filter(pc.equal(index["collection"], collection))
            keys = [k for k in index["chip_key"].to_pylist() if k not in paired]
            if len(keys) < index.num_rows:
                ds = ds.map_batches(_KeepKeys(keys), batch_format="numpy")
        out[name] = ds
    return out


def stream_nbytes(plan: FeedPlan, *, normalize: Normalize = "device", s3_endpoint: str | None = None
                  ) -> dict[str, int]:
    """Bytes of the decoded blocks each stream's dataset would cache: all chips of its anchor collection (a stream's
    filter runs after the cache), in the served dtype, as :func:`pipeline.read_dataset` counts them."""
    from pipeline.feed import open_feed
    from pipeline.ray_feed import ChipDatasource

    out = {}
    for name, stream in plan.streams.items():
        dataset_dir, collection = stream.sources[0]
        feed = open_feed(dataset_dir, collection=collection, s3_endpoint=s3_endpoint)
        out[name] = feed.n_chips * ChipDatasource(feed, normalize=normalize).row_nbytes()
    return out


def pick_stream(names: Sequence[str], weights: Sequence[float], seed: int, step: int, micro: int) -> str:
    """The stream of micro-batch ``micro`` of optimiser step ``step``: a pure function of its arguments."""
    rng = np.random.default_rng([seed, step, micro])
    return str(names[int(rng.choice(len(names), p=np.asarray(weights) / np.sum(weights)))])


def stream_collates(plan: FeedPlan, device: torch.device | str, where: FeedNormalize = "consumer"
                    ) -> dict[str, Any]:
    """Per stream, the ``collate_fn`` that normalises its anchor chips with their stem's stats on ``device``
    (:func:`jobs._native_feed.consumer_collate`); empty for ``where="read"`` (the read tasks normalised them)."""
    out = {}
    for name, stream in plan.streams.items():
        stem = plan.stems[stream.stems[0]]
        collate = consumer_collate(stem.mean, stem.std, device, where)
        if collate is not None:
            out[name] = collate
    return out


class StreamFeed:
    """Endless batches per stream from Ray Train dataset shards, read ahead in a thread, with a resumable position.

    One daemon thread per stream iterates ``iter_torch_batches`` epoch after epoch into a bounded queue
    (``prefetch_batches`` deep), so the start of the next epoch (a new Ray Data execution) overlaps the training
    steps instead of stalling one. The position of a stream is ``[epoch, batches consumed in that epoch]``, counted
    when the training loop takes a batch, not when the thread reads it. Resuming re-opens that epoch and skips that
    many batches (read, not trained on), so the step count and the per-stream epoch continue; which rows a worker
    sees can still differ, because Ray Data assigns blocks to workers dynamically and the feed reshuffles.

    ``collates`` (stream name -> ``collate_fn``, from :func:`stream_collates`) normalise the native chips of
    datasets built with ``normalize="device"`` in ``iter_torch_batches``' own thread; a stream without one gets
    Ray's default collate.
    """

    def __init__(self, shards: Mapping[str, Any], *, batch_size: int, seed: int, shuffle_buffer: int,
                 prefetch_batches: int, position: Mapping[str, Sequence[int]] | None = None,
                 device: torch.device | str = "cpu", collates: Mapping[str, Any] | None = None) -> None:
        self.shards = dict(shards)
        self.collates = dict(collates or {})
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.prefetch_batches, self.device = max(1, prefetch_batches), device
        self.position = {name: list((position or {}).get(name, (0, 0))) for name in self.shards}
        self._queues: dict[str, queue.Queue[Any]] = {}
        self._stop = threading.Event()

    def _batches(self, name: str, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.shards[name].iter_torch_batches(
            batch_size=self.batch_size,
            prefetch_batches=self.prefetch_batches,
            drop_last=True,  # equal batch shapes on every rank: the cross-rank L_con gathers them
            local_shuffle_buffer_size=self.shuffle_buffer or None,
            local_shuffle_seed=None if not self.shuffle_buffer else self.seed * 100_003 + epoch,
            device=self.device,
            collate_fn=self.collates.get(name),
        ))

    def _put(self, q: queue.Queue[Any], item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, name: str, q: queue.Queue[Any], epoch: int, skip: int) -> None:
        try:
            while not self._stop.is_set():
                produced = 0
                batches = self._batches(name, epoch)
                try:
                    for i, batch in enumerate(batches):
                        produced += 1
                        if i >= skip and not self._put(q, (epoch, i + 1, batch)):
                            return
                finally:
                    close = getattr(batches, "close", None)
                    if close is not None:  # ends the epoch's Ray Data execution when stopped mid-epoch
                        close()
                if produced == 0:
                    raise RuntimeError(
                        f"Stream {name!r} produced no batch of {self.batch_size} in epoch {epoch} on this worker; "
                        "lower --batch-size (every worker needs at least one full batch per epoch)."
                    )
                epoch, skip = epoch + 1, 0
        except BaseException as err:  # handed to the training loop, which re-raises it
            self._put(q, err)

    def next(self, name: str) -> dict[str, torch.Tensor]:
        """The next batch of stream ``name`` (a new epoch starts when one ends)."""
        if name not in self._queues:
            self._queues[name] = q = queue.Queue(maxsize=self.prefetch_batches)
            epoch, skip = self.position[name]
            threading.Thread(target=self._produce, args=(name, q, epoch, skip), name=f"feed-{name}",
                             daemon=True).start()
        item = self._queues[name].get()
        if isinstance(item, BaseException):
            raise item
        epoch, consumed, batch = item
        self.position[name] = [epoch, consumed]
        return batch

    def close(self) -> None:
        """Stop the read-ahead threads (they exit at their next queue operation)."""
        self._stop.set()


def plan_to_dict(plan: FeedPlan, *, with_pairs: bool = False) -> dict[str, Any]:
    """The plan as plain data for ``train_loop_config`` and checkpoints (pairs left out unless asked for)."""
    from dataclasses import asdict, replace

    streams = {n: asdict(s if with_pairs else replace(s, pairs=())) for n, s in plan.streams.items()}
    return {
        "stems": {n: asdict(s) for n, s in plan.stems.items()},
        "streams": streams,
        "lineage": plan.lineage,
        "excluded": dict(plan.excluded),
    }


def plan_from_dict(data: Mapping[str, Any]) -> FeedPlan:
    """Inverse of :func:`plan_to_dict` (lists back to tuples)."""

    def tup(value: Any) -> Any:
        return tuple(tup(v) for v in value) if isinstance(value, list | tuple) else value

    stems = {n: StemInfo(**{k: tup(v) for k, v in s.items()}) for n, s in data["stems"].items()}
    streams = {n: StreamInfo(**{k: tup(v) for k, v in s.items()}) for n, s in data["streams"].items()}
    return FeedPlan(stems, streams, dict(data.get("lineage") or {}), dict(data.get("excluded") or {}))

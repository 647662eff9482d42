"""Read an ingested dataset back: plain numpy chips for people, the training feed as a Ray Dataset for Ray Train.

Both readers go through ``dataset.json`` and ``index.parquet`` (never a directory listing), so superseded shards
and orphans from crashed runs are never read. The dataset root may be a local directory or ``s3://bucket/prefix``.

``read_dataset`` returns one collection (one sensor, one band count) per dataset: a batch never mixes sensors with
different band counts. When the dataset holds several collections, ``collection=`` is required and the error lists
them; build one dataset per collection and interleave them in the training loop
(docs/architecture.md §Reading for training).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.feed import Normalize, normalize_numpy, open_feed
from pipeline.manifest import OutputStore
from pipeline.shards import METADATA_KEY, decode_band_valid, decode_images, decode_valid
from pipeline.stats import normalization_constants

if TYPE_CHECKING:
    import ray.data

__all__ = ["ChipSample", "Normalizer", "load_chips", "read_dataset", "read_dataset_json", "read_index"]

_PIXEL_COLUMNS = ("image", "dtype", "shape", "valid")
_SHARD_COLUMNS = ("chip_id", "item_id", "collection", "crs_epsg", "transform", "window", "datetime", *_PIXEL_COLUMNS)


class ChipSample(TypedDict):
    """One chip as plain data (see :func:`load_chips`)."""

    image: np.ndarray
    valid: np.ndarray
    band_valid: np.ndarray
    chip_id: str
    item_id: str
    collection: str
    bands: list[str]
    crs: str
    transform: tuple[float, float, float, float, float, float]
    window: tuple[int, int, int, int]


def read_dataset_json(dataset_dir: str, *, s3_endpoint: str | None = None) -> dict[str, Any]:
    """The dataset's ``dataset.json`` (sensors, band order, stats, counts, shard list).

    Raises:
        FileNotFoundError: ``dataset_dir`` holds no ``dataset.json`` (not an ingest output, or never finished).
    """
    store = OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint)
    if not store.exists("dataset.json"):
        raise FileNotFoundError(
            f"{store.uri} has no dataset.json; point at the --output of a finished `jobs/ingest.py` run "
            "(re-run the ingest to rebuild it from the manifests)."
        )
    data: dict[str, Any] = json.loads(store.read_bytes("dataset.json"))
    return data


def read_index(store: OutputStore, collection: str | None) -> pa.Table:
    """The rows of ``index.parquet`` whose chips are written (optionally of one collection)."""
    with store.filesystem.open_input_file(store.path("index.parquet")) as handle:
        table = pq.read_table(handle)
    table = table.filter(pc.equal(table["status"], "written"))
    if collection is not None:
        table = table.filter(pc.equal(table["collection"], collection))
    return table


def load_chips(
    dataset_dir: str,
    chip_ids: Iterable[str] | None = None,
    *,
    collection: str | None = None,
    s3_endpoint: str | None = None,
) -> Iterator[ChipSample]:
    """Yield written chips as plain dicts: pixels in the native dtype, validity mask, ids, bands, CRS, transform.

    ``image`` is ``(C, H, W)``; ``valid`` is ``(H, W)``, True where every band has data; ``band_valid`` is
    ``(C, H, W)``, True where each band has data (a band keeps its pixels where another band has none).

    Each needed row group is read once. Without ``chip_ids`` chips come in index order; with them, in the given order.

    Args:
        dataset_dir: the ingest output (local path or ``s3://``).
        chip_ids: the chips to load; all written chips when ``None``.
        collection: only chips of this collection.
        s3_endpoint: S3 endpoint URL for a local S3 (default: ``AWS_ENDPOINT_URL``).

    Raises:
        KeyError: a requested chip id is not a written chip of the dataset.
    """
    store = OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint)
    index = read_index(store, collection)
    wanted = None if chip_ids is None else list(chip_ids)
    if wanted is not None:
        index = index.filter(pc.is_in(index["chip_id"], pa.array(wanted, pa.string())))
        missing = sorted(set(wanted) - set(index["chip_id"].to_pylist()))
        if missing:
            raise KeyError(
                f"{len(missing)} chip id(s) are not written chips of {store.uri}"
                f"{f' (collection {collection!r})' if collection else ''}, e.g. {missing[:3]}; "
                "see index.parquet (status == 'written')."
            )
    rows = index.select(["chip_id", "shard_path", "row_group", "row_index"]).to_pylist()
    groups: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for row in rows:
        groups.setdefault((row["shard_path"], row["row_group"]), []).append((row["chip_id"], row["row_index"]))
    loaded: dict[str, ChipSample] = {}
    band_order: dict[str, list[str]] = {}  # per shard: its footer JSON is parsed once, not once per row group
    for (shard_path, row_group), members in groups.items():
        with store.filesystem.open_input_file(store.path(shard_path)) as handle:
            parquet = pq.ParquetFile(handle)
            if shard_path not in band_order:
                meta = json.loads((parquet.schema_arrow.metadata or {})[METADATA_KEY.encode()])
                band_order[shard_path] = list(meta["band_order"])
            per_band = ["band_valid"] if "band_valid" in parquet.schema_arrow.names else []  # shard schema >= 3
            table = parquet.read_row_group(row_group, columns=[*_SHARD_COLUMNS, *per_band])
        images = decode_images(table)  # (N, C, H, W)
        valid = decode_valid(table)  # (N, H, W)
        band_valid = decode_band_valid(table)  # (N, C, H, W)
        scalars = table.select([c for c in _SHARD_COLUMNS if c not in _PIXEL_COLUMNS]).to_pylist()
        for chip_id, row_index in members:
            row = scalars[row_index]
            if row["chip_id"] != chip_id:
                raise ValueError(
                    f"index.parquet points chip {chip_id!r} at {shard_path} row group {row_group} row {row_index}, "
                    f"which holds {row['chip_id']!r}; the index is stale: re-run the ingest to rebuild it."
                )
            sample = ChipSample(
                image=np.array(images[row_index]),
                valid=np.array(valid[row_index]),
                band_valid=np.array(band_valid[row_index]),
                chip_id=chip_id,
                item_id=row["item_id"],
                collection=row["collection"],
                bands=list(band_order[shard_path]),
                crs=f"EPSG:{row['crs_epsg']}",
                transform=tuple(row["transform"]),  # type: ignore[typeddict-item]
                window=tuple(row["window"]),  # type: ignore[typeddict-item]
            )
            if wanted is None:
                yield sample
            else:
                loaded[chip_id] = sample
    if wanted is not None:
        for chip_id in wanted:
            yield loaded[chip_id]


class Normalizer:
    """Ray Data batch UDF: ``image`` → float32 ``(x - mean) / std`` per band with nodata set to 0, plus ``chip_key``.

    For pipelines that map over shard rows themselves (e.g. batch embedding); training reads :func:`read_dataset`.
    The arithmetic is the feed's (:func:`pipeline.feed.normalize_numpy`).

    Args:
        mean, std: per-band statistics from ``dataset.json`` (NaN or zero std → 1, NaN mean → 0, with a warning).
    """

    def __init__(self, mean: Sequence[float | None], std: Sequence[float | None]) -> None:
        safe_mean, safe_std = normalization_constants(mean, std)  # warns for a NaN mean or a zero std
        self.mean = np.asarray(safe_mean, np.float32)  # (C,)
        self.std = np.asarray(safe_std, np.float32)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        """Normalise one batch (a pyarrow table with ``image``, ``dtype``, ``shape``, ``valid``, ``chip_id``)."""
        from pipeline.manifest import chip_key

        raw = decode_images(batch)  # (B, C, H, W), native dtype
        if raw.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"Shard chips have {raw.shape[1]} bands but the dataset stats have {self.mean.shape[0]}; "
                "read one collection (one band set) per dataset."
            )
        out = normalize_numpy(raw, decode_valid(batch), self.mean, self.std)
        keys = np.asarray([chip_key(c) for c in batch.column("chip_id").to_pylist()], dtype=np.int64)
        return {"image": out, "chip_key": keys}


def read_dataset(
    dataset_dir: str,
    *,
    collection: str | None = None,
    s3_endpoint: str | None = None,
    normalize: Normalize = "worker",
    shuffle: bool = False,
    seed: int | None = None,
    rows_per_block: int | None = None,
    override_num_blocks: int | None = None,
    cache_bytes: int | None = None,
) -> ray.data.Dataset:
    """A Ray Dataset of one collection's chips for Ray Train workers (docs/feed.md).

    In the worker: ``ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=..., prefetch_batches=2)``.
    One read task per shard row group decodes straight into the output block (no ``map_batches`` stage, no string
    column, no per-row Python). Columns:

    - ``image``: ``(C, H, W)`` float32, normalised with the collection's ``dataset.json`` stats, invalid pixels 0
      (``normalize="worker"``); or the native dtype (``"device"``), normalised on the GPU with
      :func:`pipeline.torch_normalize` or on the consumer's CPU with ``iter_torch_batches(collate_fn=
      pipeline.ray_feed.ChipCollate(plan.mean, plan.std))`` (half the bytes through the object store for uint16).
    - ``valid``: ``(H, W)`` bool, True where every band has data.
    - ``chip_key``: int64; ``index.parquet``'s ``chip_key`` column maps it back to ``chip_id``.
    - pass-through shard columns when present: ``label*`` and per-band validity (``valid_*``).

    Args:
        dataset_dir: the ingest output (local path or ``s3://``).
        collection: which collection; required when the dataset holds several (a batch never mixes sensors).
        s3_endpoint: S3 endpoint URL for a local S3 (default: ``AWS_ENDPOINT_URL``).
        normalize: ``"worker"`` or ``"device"`` (see ``image``).
        shuffle: shuffle the row-group order and the chip order within each block (row groups are streamed in
            blocks), anew on every execution (each epoch) unless ``seed`` is set; add
            ``local_shuffle_buffer_size=`` in ``iter_torch_batches`` to mix blocks within batches as well.
        seed: fixes the shuffle (the same order every epoch).
        rows_per_block: chips per output block; default: as many as fit in ``pipeline.ray_feed.BLOCK_BYTES``.
        override_num_blocks: at most this many read tasks (row groups are grouped); default one per row group.
        cache_bytes: decode the row groups that fit in this many bytes (of decoded blocks: ``normalize="device"``
            halves them for uint16 sources) once, now, into the object store, and serve them from there every epoch;
            the rest streams from the shards each epoch. ``None``: stream everything.

    Raises:
        ValueError: several collections and none chosen, or an unknown one; the message lists them.
        LookupError: the collection has no written chip (no stats, no shards).
        ShardFormatError: a shard lacks the feed's columns or holds another chip shape (e.g. an older ingest).
    """
    from pipeline.ray_feed import chip_dataset

    plan = open_feed(dataset_dir, collection=collection, s3_endpoint=s3_endpoint)
    runtime_env = None
    if dataset_dir.startswith("s3://"):
        from pipeline.ray_ingest import forwarded_env

        # Read tasks run in worker processes that did not inherit this driver's S3 endpoint and credentials.
        runtime_env = {"env_vars": forwarded_env()}
    return chip_dataset(plan, normalize=normalize, shuffle=shuffle, seed=seed, rows_per_block=rows_per_block,
                        override_num_blocks=override_num_blocks, cache_bytes=cache_bytes, runtime_env=runtime_env)

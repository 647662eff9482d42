"""Read an ingested dataset back: plain numpy chips for people, a normalised Ray Dataset for Ray Train workers.

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

from pipeline.manifest import OutputStore
from pipeline.shards import METADATA_KEY, decode_images, decode_valid

if TYPE_CHECKING:
    import ray.data

__all__ = ["ChipSample", "Normalizer", "load_chips", "read_dataset", "read_dataset_json"]

_PIXEL_COLUMNS = ("image", "dtype", "shape", "valid")
_SHARD_COLUMNS = ("chip_id", "item_id", "collection", "crs_epsg", "transform", "window", "datetime", *_PIXEL_COLUMNS)


class ChipSample(TypedDict):
    """One chip as plain data (see :func:`load_chips`)."""

    image: np.ndarray
    valid: np.ndarray
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


def _read_index(store: OutputStore, collection: str | None) -> pa.Table:
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

    ``image`` is ``(C, H, W)``; ``valid`` is ``(H, W)``, True where every band has data.

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
    index = _read_index(store, collection)
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
            table = parquet.read_row_group(row_group, columns=list(_SHARD_COLUMNS))
        images = decode_images(table)  # (N, C, H, W)
        valid = decode_valid(table)  # (N, H, W)
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

    Args:
        mean, std: per-band statistics from ``dataset.json`` (NaN or zero std → 1, NaN mean → 0).
    """

    def __init__(self, mean: Sequence[float | None], std: Sequence[float | None]) -> None:
        m = np.asarray([np.nan if v is None else v for v in mean], dtype=np.float32)
        s = np.asarray([np.nan if v is None else v for v in std], dtype=np.float32)
        self.mean = np.where(np.isfinite(m), m, 0.0).astype(np.float32)[None, :, None, None]  # (C,) -> (1, C, 1, 1)
        self.std = np.where(np.isfinite(s) & (s > 0), s, 1.0).astype(np.float32)[None, :, None, None]
        self.inv_std = (1.0 / self.std).astype(np.float32)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        """Normalise one batch (a pyarrow table with ``image``, ``valid`` and ``chip_id`` columns)."""
        from pipeline.manifest import chip_key

        raw = decode_images(batch)  # (B, C, H, W), native dtype
        valid = decode_valid(batch)[:, None, :, :]  # (B, H, W) -> (B, 1, H, W)
        if raw.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"Shard chips have {raw.shape[1]} bands but the dataset stats have {self.mean.shape[1]}; "
                "read one collection (one band set) per dataset."
            )
        out = raw.astype(np.float32)  # one copy, then in place
        out -= self.mean
        out *= self.inv_std
        out *= valid
        if np.issubdtype(raw.dtype, np.floating):  # float sources could hold NaN/inf at invalid pixels
            out[~np.isfinite(out)] = 0.0
        keys = np.asarray([chip_key(c) for c in batch.column("chip_id").to_pylist()], dtype=np.int64)
        return {"image": out, "chip_key": keys}


def read_dataset(
    dataset_dir: str,
    *,
    collection: str | None = None,
    s3_endpoint: str | None = None,
    override_num_blocks: int | None = None,
) -> ray.data.Dataset:
    """A Ray Dataset of normalised chips of one collection for Ray Train (``iter_torch_batches``-ready).

    Columns: ``image`` float32 ``(C, H, W)`` normalised with the collection's ``dataset.json`` stats (nodata → 0 after
    normalising) and ``chip_key`` int64, which maps back to ``chip_id`` through the ``chip_key`` column of
    ``index.parquet`` (:func:`pipeline.manifest.chip_key`). String columns are left out on purpose: Ray 2.60's
    ``iter_torch_batches`` raises ``TypeError`` on them.

    Args:
        dataset_dir: the ingest output (local path or ``s3://``).
        collection: which collection; required when the dataset holds several.
        s3_endpoint: S3 endpoint URL for a local S3 (default: ``AWS_ENDPOINT_URL``).
        override_num_blocks: passed to ``ray.data.read_parquet``.

    Raises:
        ValueError: several collections and none chosen, or an unknown one; the message lists them.
        LookupError: the collection has no written chip (no stats, no shards).
    """
    import ray.data

    meta = read_dataset_json(dataset_dir, s3_endpoint=s3_endpoint)
    collections = meta.get("collections") or {}
    if collection is None:
        if len(collections) != 1:
            raise ValueError(
                f"{dataset_dir} holds {len(collections)} collections {sorted(collections)}; pass "
                "collection=... (one dataset per collection keeps band counts equal within a batch)."
            )
        collection = next(iter(collections))
    if collection not in collections:
        raise ValueError(f"Collection {collection!r} is not in {dataset_dir}; it holds {sorted(collections)}.")
    entry = collections[collection]
    stats = entry.get("stats")
    if not entry.get("shards") or not stats:
        raise LookupError(f"Collection {collection!r} of {dataset_dir} has no written chips (no shards, no stats).")
    store = OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint)
    paths = [store.path(p) for p in entry["shards"]]
    ds = ray.data.read_parquet(
        paths,
        filesystem=store.filesystem,
        override_num_blocks=override_num_blocks,
    ).select_columns(["chip_id", *_PIXEL_COLUMNS])  # pushed down into the Parquet read
    return ds.map_batches(Normalizer(stats["mean"], stats["std"]), batch_format="pyarrow")

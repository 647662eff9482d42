"""The training feed's decode path: shard row groups → batch arrays, with no per-row Python (docs/feed.md).

Both consumers of a dataset, :func:`pipeline.read_dataset` (Ray Data, for Ray Train workers) and
:func:`pipeline.torch_dataset` (a plain ``torch.utils.data.IterableDataset``), sit on this module:

- :func:`open_feed` resolves one collection of an ingest output into a :class:`FeedPlan`: its units of work (one
  row group of one shard each, taken from ``index.parquet``, never from a directory listing), its band order,
  pixel dtype and shape, normalisation stats and the extra columns to pass through.
- :class:`ChipDecoder` reads a unit and writes chips straight into caller-owned batch buffers: a copy of the native
  pixels (``normalize="device"``), or the normalised float32 values in one fused pass (``normalize="worker"``).

Normalisation is ``(x - mean) * (1 / std)`` per band in float32, times the validity mask (invalid pixels → 0; NaN or
inf → 0 for float sources), exactly as :func:`normalize_numpy` computes it; :func:`pipeline.torch_normalize`
does the same on a torch device for batches shipped in the native dtype.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import ShardFormatError
from pipeline.manifest import OutputStore
from pipeline.shards import METADATA_KEY, decode_images, decode_valid

__all__ = [
    "BASE_COLUMNS",
    "ChipDecoder",
    "FeedPlan",
    "FeedUnit",
    "Normalize",
    "normalize_into",
    "normalize_numpy",
    "open_feed",
    "passthrough_columns",
    "split_range",
    "stats_vector",
]

Normalize = Literal["worker", "device"]
# Shard columns the feed always needs; everything else in a shard is provenance, except the pass-through extras.
BASE_COLUMNS = ("image", "dtype", "shape", "valid")
# Extra shard columns served as they are when present: labels, and per-band validity (``valid_bands``, ...).
_PASSTHROUGH_PREFIXES = ("label", "valid_")


@dataclass(frozen=True)
class FeedUnit:
    """One row group of one shard: the unit a read task or a DataLoader worker decodes.

    Attributes:
        shard: shard path relative to the dataset root.
        row_group: row group number in the shard.
        chip_keys: ``chip_key`` of each row in row order (int64, from ``index.parquet``).
    """

    shard: str
    row_group: int
    chip_keys: np.ndarray

    @property
    def n_rows(self) -> int:
        """Chips in this row group."""
        return int(self.chip_keys.shape[0])


@dataclass(frozen=True)
class FeedPlan:
    """What a feed serves: one collection of one dataset (one sensor, one band set, one chip shape).

    Attributes:
        dataset_dir: the dataset root as given (local path or ``s3://``).
        s3_endpoint: S3 endpoint URL, if any.
        collection: the collection served.
        bands: band order of the ``C`` axis.
        dtype: native pixel dtype (``uint16`` for S2 DN, ``float32`` for S1 dB).
        shape: chip shape ``(C, H, W)``.
        mean, std: per-band float32 statistics from ``dataset.json`` (NaN mean → 0, NaN or zero std → 1).
        stats_hash: the stats' hash, for checkpoints (docs/feed.md).
        units: the row groups, in index order.
        extras: pass-through column names (labels, per-band validity) present in every shard.
    """

    dataset_dir: str
    s3_endpoint: str | None
    collection: str
    bands: tuple[str, ...]
    dtype: np.dtype
    shape: tuple[int, int, int]
    mean: np.ndarray
    std: np.ndarray
    stats_hash: str | None
    units: tuple[FeedUnit, ...]
    extras: tuple[str, ...] = field(default=())

    @property
    def n_chips(self) -> int:
        """Written chips of the collection."""
        return sum(u.n_rows for u in self.units)

    @property
    def chip_nbytes(self) -> int:
        """Bytes of one chip in the native dtype."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def store(self) -> OutputStore:
        """The dataset root, opened (cheap; done once per process)."""
        return OutputStore.open(self.dataset_dir, s3_endpoint=self.s3_endpoint)


def stats_vector(values: Sequence[float | None], fallback: float, positive: bool) -> np.ndarray:
    """Per-band stats as float32, non-finite (or, with ``positive``, non-positive) values replaced by ``fallback``."""
    raw = np.asarray([np.nan if v is None else v for v in values], dtype=np.float32)
    ok = np.isfinite(raw) & (raw > 0) if positive else np.isfinite(raw)
    return np.where(ok, raw, np.float32(fallback)).astype(np.float32)


def _choose_collection(dataset_dir: str, collections: Mapping[str, Any], collection: str | None) -> str:
    if collection is None:
        if len(collections) != 1:
            raise ValueError(
                f"{dataset_dir} holds {len(collections)} collections {sorted(collections)}; pass "
                "collection=... (one dataset per collection keeps band counts equal within a batch)."
            )
        return next(iter(collections))
    if collection not in collections:
        raise ValueError(f"Collection {collection!r} is not in {dataset_dir}; it holds {sorted(collections)}.")
    return collection


def passthrough_columns(schema: pa.Schema) -> tuple[str, ...]:
    """The extra columns of a shard schema the feed serves as they are (``label*``, ``valid_*``), in schema order."""
    return tuple(n for n in schema.names if n.startswith(_PASSTHROUGH_PREFIXES) and n not in BASE_COLUMNS)


def _check_shard(store: OutputStore, rel: str, plan_shape: tuple[int, int, int], dtype: np.dtype) -> pa.Schema:
    """The shard's schema after checking it carries what the feed needs; a clear error names the shard otherwise."""
    try:
        with store.filesystem.open_input_file(store.path(rel)) as handle:
            schema = pq.ParquetFile(handle).schema_arrow
    except FileNotFoundError as exc:
        raise ShardFormatError(
            f"index.parquet of {store.uri} points at {rel}, which does not exist; the dataset was moved or "
            "pruned: re-run the ingest to rebuild the index."
        ) from exc
    raw = (schema.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise ShardFormatError(f"{rel} in {store.uri} has no {METADATA_KEY!r} metadata; it was not written by ingest.")
    meta = json.loads(raw)
    missing = [c for c in BASE_COLUMNS if c not in schema.names]
    legacy = "image" in schema.names and isinstance(schema.field("image").type, pa.FixedShapeTensorType)
    if missing and not (legacy and set(missing) <= {"dtype", "shape"}):
        raise ShardFormatError(
            f"{rel} in {store.uri} (shard schema {meta.get('shard_schema_version', '?')}, processing version "
            f"{meta.get('processing_version', '?')}) lacks column(s) {missing} that the training feed needs "
            f"({list(BASE_COLUMNS)}); re-ingest it with the current code (a new --dataset-version)."
        )
    shard_shape = tuple(int(v) for v in meta.get("chip_shape", plan_shape))
    shard_dtype = np.dtype(meta.get("pixel_encoding", {}).get("dtype", dtype.name))
    if shard_shape != plan_shape or shard_dtype != dtype:
        raise ShardFormatError(
            f"{rel} in {store.uri} holds {shard_dtype.name} chips of shape {list(shard_shape)} (processing version "
            f"{meta.get('processing_version', '?')}), but the collection's first shard holds {dtype.name} "
            f"{list(plan_shape)}; one feed serves one chip shape: re-ingest the old shards with the same settings."
        )
    return schema


def open_feed(dataset_dir: str, *, collection: str | None = None, s3_endpoint: str | None = None) -> FeedPlan:
    """The :class:`FeedPlan` of one collection of an ingest output.

    Reads ``dataset.json``, ``index.parquet`` (written chips only) and each shard's footer (to check the schema and
    find pass-through columns); no pixels.

    Raises:
        FileNotFoundError: no ``dataset.json`` (not an ingest output).
        ValueError: several collections and none chosen, or an unknown one; the message lists them.
        LookupError: the collection has no written chip.
        ShardFormatError: a shard lacks the feed's columns or holds another chip shape (e.g. an older ingest).
    """
    from pipeline.dataset import read_dataset_json, read_index

    meta = read_dataset_json(dataset_dir, s3_endpoint=s3_endpoint)
    collections = meta.get("collections") or {}
    collection = _choose_collection(dataset_dir, collections, collection)
    entry = collections[collection]
    stats = entry.get("stats")
    if not entry.get("shards") or not stats:
        raise LookupError(f"Collection {collection!r} of {dataset_dir} has no written chips (no shards, no stats).")
    store = OutputStore.open(dataset_dir, s3_endpoint=s3_endpoint)
    index = read_index(store, collection).select(["chip_key", "shard_path", "row_group", "row_index"])
    if index.num_rows == 0:
        raise LookupError(f"Collection {collection!r} of {dataset_dir} has no written chip in index.parquet.")
    index = index.sort_by([("shard_path", "ascending"), ("row_group", "ascending"), ("row_index", "ascending")])
    shards = [str(s) for s in pc.unique(index["shard_path"]).to_pylist()]
    first = _first_shard_meta(store, shards[0])
    shape = tuple(int(v) for v in first["chip_shape"])
    dtype = np.dtype(first["pixel_encoding"]["dtype"] if "pixel_encoding" in first else first.get("dtype", "uint16"))
    extras: tuple[str, ...] | None = None
    for rel in shards:
        found = passthrough_columns(_check_shard(store, rel, shape, dtype))  # type: ignore[arg-type]
        extras = found if extras is None else tuple(c for c in extras if c in found)
    units = _units(index)
    bands = tuple(str(b) for b in first.get("band_order", stats.get("bands", [])))
    return FeedPlan(
        dataset_dir=dataset_dir,
        s3_endpoint=s3_endpoint,
        collection=collection,
        bands=bands,
        dtype=dtype,
        shape=shape,  # type: ignore[arg-type]
        mean=stats_vector(stats["mean"], 0.0, positive=False),
        std=stats_vector(stats["std"], 1.0, positive=True),
        stats_hash=stats.get("stats_hash"),
        units=units,
        extras=extras or (),
    )


def _first_shard_meta(store: OutputStore, rel: str) -> dict[str, Any]:
    with store.filesystem.open_input_file(store.path(rel)) as handle:
        schema = pq.ParquetFile(handle).schema_arrow
    raw = (schema.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise ShardFormatError(f"{rel} in {store.uri} has no {METADATA_KEY!r} metadata; it was not written by ingest.")
    meta: dict[str, Any] = json.loads(raw)
    if "chip_shape" not in meta:
        raise ShardFormatError(
            f"{rel} in {store.uri} (processing version {meta.get('processing_version', '?')}) records no chip_shape; "
            "it predates the training feed: re-ingest it with the current code (a new --dataset-version)."
        )
    return meta


def _units(index: pa.Table) -> tuple[FeedUnit, ...]:
    """Group the sorted index by (shard, row group), checking every row group is numbered densely from 0."""
    shard = index["shard_path"].to_numpy(zero_copy_only=False)
    group = index["row_group"].to_numpy()
    row = index["row_index"].to_numpy()
    keys = index["chip_key"].to_numpy()
    starts = np.flatnonzero(np.r_[True, (shard[1:] != shard[:-1]) | (group[1:] != group[:-1])])
    ends = np.r_[starts[1:], len(shard)]
    units = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if not np.array_equal(row[s:e], np.arange(e - s)):
            raise ShardFormatError(
                f"index.parquet lists rows {row[s:e][:5].tolist()}... of {shard[s]} row group {group[s]}; the feed "
                "expects every row of a row group written (rows 0..n-1): the index is stale, re-run the ingest."
            )
        units.append(FeedUnit(shard=str(shard[s]), row_group=int(group[s]), chip_keys=keys[s:e].copy()))
    return tuple(units)


def split_range(n: int, parts: int, part: int) -> tuple[int, int]:
    """``[start, stop)`` of ``part`` when ``n`` items are cut into ``parts`` contiguous ranges differing by <= 1."""
    if not 0 <= part < parts:
        raise ValueError(f"part must be in [0, {parts}), got {part}.")
    return n * part // parts, n * (part + 1) // parts


def normalize_numpy(image: np.ndarray, valid: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Reference normalisation of ``(N, C, H, W)`` chips with ``(N, H, W)`` masks → float32 (the feed's definition)."""
    out = np.empty(image.shape, dtype=np.float32)
    inv = (np.float32(1.0) / std.astype(np.float32)).astype(np.float32)
    normalize_into(image, valid, mean.astype(np.float32), inv, out)
    return out


def normalize_into(
    image: np.ndarray, valid: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, out: np.ndarray
) -> None:
    """``out = (image - mean) * inv_std * valid`` in float32, in place; NaN/inf → 0 for float sources.

    One chip at a time: the three passes then run over one chip's output while it is in cache, not over a whole
    batch from memory (1.5-2x faster for S2 chips, measured in docs/feed.md); the values are the same.
    """
    mean_b, inv_b = mean[:, None, None], inv_std[:, None, None]  # (C,) -> (C, 1, 1)
    floating = np.issubdtype(image.dtype, np.floating)  # float sources could hold NaN/inf at invalid pixels
    for i in range(image.shape[0]):
        chip = out[i]
        np.subtract(image[i], mean_b, out=chip, dtype=np.float32)  # casts in the same pass
        np.multiply(chip, inv_b, out=chip)
        np.multiply(chip, valid[i][None], out=chip)  # (H, W) -> (1, H, W)
        if floating:
            chip[~np.isfinite(chip)] = 0.0


class ChipDecoder:
    """Reads a plan's row groups and writes their chips into batch buffers (one per process; not thread-safe).

    Args:
        plan: the feed plan.
        normalize: ``"worker"`` writes normalised float32; ``"device"`` copies the native pixels, to be normalised
            on the accelerator with :func:`pipeline.torch_normalize` (half the bytes for uint16 sources).
    """

    def __init__(self, plan: FeedPlan, normalize: Normalize = "worker") -> None:
        if normalize not in ("worker", "device"):
            raise ValueError(f"normalize must be 'worker' or 'device', got {normalize!r}.")
        self.plan = plan
        self.normalize = normalize
        self._store: OutputStore | None = None
        self._inv_std = (np.float32(1.0) / plan.std).astype(np.float32)
        self._columns = [*BASE_COLUMNS, *plan.extras]

    @property
    def image_dtype(self) -> np.dtype:
        """The dtype of the ``image`` arrays this decoder writes."""
        return np.dtype(np.float32) if self.normalize == "worker" else self.plan.dtype

    def read(self, unit: FeedUnit) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """One row group decoded: native ``(N, C, H, W)`` pixels (a zero-copy view), ``(N, H, W)`` mask, extras.

        Raises:
            ShardFormatError: the row group's size disagrees with the index (a stale index).
        """
        with self._open(unit) as parquet:
            self._check_rows(unit, parquet.metadata.row_group(unit.row_group).num_rows)
            names = parquet.schema_arrow.names  # schema-1 shards have no dtype/shape columns
            table = parquet.read_row_group(unit.row_group, columns=[c for c in self._columns if c in names])
        return self._decode(unit, table)

    def read_pieces(
        self, unit: FeedUnit, rows: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
        """One row group decoded ``rows`` chips at a time: ``(first row, pixels, mask, extras)`` per piece.

        The first piece is ready after ``rows`` chips are decompressed, not the whole row group (a shorter first
        batch, and a peak memory of one piece). Parquet pages are read in order, so no chip is decompressed twice.

        Raises:
            ShardFormatError: the row group's size disagrees with the index (a stale index).
        """
        with self._open(unit) as parquet:
            self._check_rows(unit, parquet.metadata.row_group(unit.row_group).num_rows)
            names = parquet.schema_arrow.names
            columns = [c for c in self._columns if c in names]
            done = 0
            for record in parquet.iter_batches(batch_size=rows, row_groups=[unit.row_group], columns=columns):
                image, valid, extras = self._decode(unit, pa.Table.from_batches([record]))
                yield done, image, valid, extras
                done += record.num_rows

    @contextlib.contextmanager
    def _open(self, unit: FeedUnit) -> Iterator[pq.ParquetFile]:
        if self._store is None:
            self._store = self.plan.store()
        with self._store.filesystem.open_input_file(self._store.path(unit.shard)) as handle:
            yield pq.ParquetFile(handle)

    @staticmethod
    def _check_rows(unit: FeedUnit, found: int) -> None:
        if found != unit.n_rows:
            raise ShardFormatError(
                f"{unit.shard} row group {unit.row_group} has {found} rows but index.parquet lists "
                f"{unit.n_rows}; the index is stale: re-run the ingest to rebuild it."
            )

    def _decode(self, unit: FeedUnit, table: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        extras = {name: _extra_array(table.column(name), name, unit) for name in self.plan.extras}
        image, valid = decode_images(table), decode_valid(table)
        if image.shape[1:] != self.plan.shape or image.dtype != self.plan.dtype.newbyteorder("<"):
            raise ShardFormatError(
                f"{unit.shard} row group {unit.row_group} holds {image.dtype} chips of shape {list(image.shape[1:])}"
                f", but its footer and the feed say {self.plan.dtype} {list(self.plan.shape)}; the shard is corrupt "
                "or was edited: re-ingest it."
            )
        return image, valid, extras

    def write(
        self,
        image: np.ndarray,
        valid: np.ndarray,
        rows: np.ndarray | slice,
        out_image: np.ndarray,
        out_valid: np.ndarray,
    ) -> None:
        """Write chips ``rows`` of a decoded row group into ``out_image``/``out_valid`` (same leading length).

        A slice is one vectorised pass; an index array (a shuffled order) is one pass per chip, each over a whole
        chip, so the Python overhead stays below a percent of the work.
        """
        if isinstance(rows, slice):
            self._write_block(image[rows], valid[rows], out_image, out_valid)
            return
        for j, r in enumerate(rows.tolist()):
            self._write_block(image[r : r + 1], valid[r : r + 1], out_image[j : j + 1], out_valid[j : j + 1])

    def _write_block(self, image: np.ndarray, valid: np.ndarray, out_image: np.ndarray, out_valid: np.ndarray) -> None:
        np.copyto(out_valid, valid)
        if self.normalize == "worker":
            normalize_into(image, valid, self.plan.mean, self._inv_std, out_image)
        else:
            np.copyto(out_image, image)


def _extra_array(column: pa.ChunkedArray, name: str, unit: FeedUnit) -> np.ndarray:
    """A pass-through column as a numpy array: numbers as they are, fixed-size lists as rows, binary as uint8 rows."""
    array = column.combine_chunks()
    kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return array.to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(kind):
        flat = array.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(array), kind.list_size)  # (N * k,) -> (N, k)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        lengths = pc.binary_length(array).to_numpy()
        if len(lengths) and not np.all(lengths == lengths[0]):
            raise ShardFormatError(f"Column {name!r} of {unit.shard} has rows of unequal length; it cannot batch.")
        width = int(lengths[0]) if len(lengths) else 0
        data = np.frombuffer(b"".join(array.to_pylist()), dtype=np.uint8) if width else np.empty(0, np.uint8)
        return data.reshape(len(array), width)  # (N * width,) -> (N, width)
    raise ShardFormatError(
        f"Column {name!r} of {unit.shard} is {kind}; pass-through columns must be numeric, fixed-size lists or "
        "fixed-length binary (strings do not batch into tensors: map them to integer ids at ingest)."
    )

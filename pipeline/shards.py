"""Training shards: one Parquet file per item, pixels as raw little-endian bytes, self-describing metadata.

Layout (docs/data-format.md §Shards): one row per chip with the per-row georeferencing a training step needs
(``chip_id``, ``grid_cell``, ``datetime``, ``crs_epsg``, ``transform``, ``window``, quality, a pixel ``checksum``),
the pixels as ``image``, a ``binary`` value holding the chip's C-contiguous ``(C, H, W)`` array in the native dtype,
little-endian, with its ``dtype`` (dictionary-encoded string) and ``shape`` (3 x int32) in per-row columns, and
``valid``, the ``(H, W)`` mask packed 8 pixels a byte (``np.packbits(..., bitorder="little")``, 1 where every band
has data), and ``band_valid``, the ``(C, H, W)`` per-band masks packed the same way, or null where every band's mask
equals ``valid`` (each band keeps its own pixels wherever it has data; docs/ingest-inputs.md, "Lossless pixels").
Raw bytes instead of an Arrow ``fixed_shape_tensor``: Parquet stores a list column with repetition and
definition levels for every element, which made encoding and decoding several times slower than the reads
(benchmarks/RESULTS.md). Decoding is one zero-copy ``np.frombuffer`` over the column's data buffer.
One shard holds one item, hence one sensor and one shape.
Everything constant per file (band order, band physics, lineage) is JSON under the key-value metadata key
``rs:dataset``. Row groups hold 1-256 chips and at most 256 MiB of pixels; compression is zstd.

Writes are atomic: local files are written to a temporary name in the target directory and renamed; on S3 a single
completed PUT is atomic, so the object is written directly.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from itertools import chain
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.records import Chip, ResolvedItem
from pipeline.uri import atomic_output, redact_href, resolve

__all__ = [
    "MAX_ROW_GROUP_BYTES",
    "MAX_ROW_GROUP_CHIPS",
    "METADATA_KEY",
    "PIXEL_ENCODING",
    "SHARD_SCHEMA_VERSION",
    "Compression",
    "ShardInfo",
    "chip_checksum",
    "content_checksum",
    "dataset_metadata",
    "decode_band_valid",
    "decode_images",
    "decode_valid",
    "read_shard",
    "row_group_size_for",
    "shard_metadata",
    "shard_schema",
    "write_shard",
]

METADATA_KEY = "rs:dataset"
# "3": the nullable per-band validity column `band_valid`.
SHARD_SCHEMA_VERSION = "3"
MAX_ROW_GROUP_CHIPS = 256
MAX_ROW_GROUP_BYTES = 256 * 1024 * 1024
_SCALAR_COLUMNS = ("chip_id", "item_id", "collection", "grid_cell", "datetime", "crs_epsg", "nodata_pct", "cloud_pct")
# How the pixel columns are stored (shard footer and dataset.json ``pixel_encoding``).
PIXEL_ENCODING: Mapping[str, str] = {
    "column": "image",
    "type": "raw",
    "storage": "parquet binary, one C-contiguous (C, H, W) array per row",
    "dtype_column": "dtype",
    "shape_column": "shape",
    "layout": "CHW",
    "byte_order": "little",
    "valid_column": "valid",
    "valid_encoding": "np.packbits(valid.reshape(-1), bitorder='little') of the (H, W) mask, 1 = every band has data",
    "band_valid_column": "band_valid",
    "band_valid_encoding": (
        "np.packbits(band_valid.reshape(-1), bitorder='little') of the (C, H, W) per-band masks in band order, "
        "1 = this band has data; null where every band's mask equals `valid`. Each band's pixels are its source "
        "values wherever it has data, even where another band has none; elsewhere they hold the band's nodata"
    ),
    "checksum": "CRC-32 (zlib.crc32) of the row's image bytes as stored (C-contiguous, little-endian), 8 hex digits",
}
# zstd level for every column; level 1 measured fastest at near-equal size on S2 uint16 chips (benchmarks/RESULTS.md).
ZSTD_LEVEL = 1
# Rows the Parquet writer encodes between page-size checks. pyarrow's default (1024) exceeds a row group, which made
# each row group's image column one data page that a reader must decompress whole before its first chip; with 1,
# a page closes once it passes 1 MiB, i.e. after every chip of the image column (docs/feed.md, "The first batch").
WRITE_BATCH_ROWS = 1
Compression = Literal["zstd", "lz4", "none"]


@dataclass(frozen=True)
class ShardInfo:
    """A written shard.

    Attributes:
        path: the shard's path on the filesystem it was written through.
        n_rows, n_bytes: chips written and file size.
        checksum: blake2b-128 hex digest of the per-row chip checksums in file order (:func:`content_checksum`):
            identifies the shard's pixels. There is no hash of the file's bytes (it cost 0.07 s per S2 item): files
            are written atomically, and each row's pixels carry their own CRC-32 to verify after decoding.
        row_group_size: chips per row group (row ``k`` lives in row group ``k // row_group_size``).
        chip_ids, chip_checksums: per row, in file order: the chip id and its :func:`chip_checksum`.
    """

    path: str
    n_rows: int
    n_bytes: int
    checksum: str
    row_group_size: int
    chip_ids: tuple[str, ...] = ()
    chip_checksums: tuple[str, ...] = ()


def chip_checksum(image: np.ndarray) -> str:
    """CRC-32 of a chip's pixel bytes as stored (C-contiguous, little-endian), 8 hex digits (the ``checksum`` column).

    It detects changed pixels (verify with ``chip_checksum(decode_images(table)[k]) == table["checksum"][k]``); it is
    not a defence against deliberate tampering. CRC-32 runs at 2.4 GB/s on the benchmark machine, blake2b at
    0.9 GB/s (0.045 vs 0.12 s per S2 item; benchmarks/RESULTS.md).
    """
    little = np.ascontiguousarray(image, dtype=np.dtype(image.dtype).newbyteorder("<"))
    return f"{zlib.crc32(little.data) & 0xFFFFFFFF:08x}"


def content_checksum(chip_checksums: Iterable[str]) -> str:
    """blake2b-128 hex digest of chip checksums in row order (:attr:`ShardInfo.checksum`)."""
    return hashlib.blake2b("\n".join(chip_checksums).encode(), digest_size=16).hexdigest()


def row_group_size_for(chip_nbytes: int) -> int:
    """Chips per row group: as many as fit in 256 MiB, at most 256 (a 1.5 MiB S2 chip gives 170, S1 gives 256)."""
    return int(max(1, min(MAX_ROW_GROUP_CHIPS, MAX_ROW_GROUP_BYTES // max(1, chip_nbytes))))


def shard_schema(dtype: np.dtype, shape: tuple[int, int, int], metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    """The Arrow schema of a shard whose chips are ``shape`` ``(C, H, W)`` of ``dtype``.

    Args:
        dtype: numpy dtype of the pixels (native: uint16 for S2 DN, float32 for dB SAR).
        shape: ``(C, H, W)`` of every chip.
        metadata: the ``rs:dataset`` JSON object to attach, if any.
    """
    pixels = {b"dtype": np.dtype(dtype).name.encode(), b"shape": json.dumps([int(v) for v in shape]).encode()}
    fields = [
        pa.field("chip_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("collection", pa.string(), nullable=False),
        pa.field("grid_cell", pa.string(), nullable=False),
        pa.field("datetime", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("crs_epsg", pa.int32(), nullable=False),
        pa.field("transform", pa.list_(pa.float64(), 6), nullable=False),
        pa.field("window", pa.list_(pa.int32(), 4), nullable=False),
        pa.field("nodata_pct", pa.float32(), nullable=False),
        pa.field("cloud_pct", pa.float32(), nullable=True),
        pa.field("checksum", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False, metadata=pixels),  # also in the dtype/shape columns
        pa.field("dtype", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("shape", pa.list_(pa.int32(), 3), nullable=False),
        pa.field("valid", pa.binary(), nullable=False),
        pa.field("band_valid", pa.binary(), nullable=True),
    ]
    schema = pa.schema(fields)
    if metadata is not None:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return schema


def _band_metadata(item: ResolvedItem) -> list[dict[str, Any]]:
    return [
        {
            "name": b.name,
            "common_name": b.common_name,
            "center_wavelength_um": b.center_wavelength_um,
            "gsd_m": b.gsd_m,
            "nodata": b.nodata,
            "scale": b.scale,
            "offset": b.offset,
            "dn_offset": b.dn_offset,
            "units": b.units,
            "to_db": b.to_db,
            "resampling": b.resampling,
            "asset_key": b.asset_key,
        }
        for b in item.bands
    ]


def dataset_metadata(
    item: ResolvedItem,
    first: Chip,
    *,
    dataset_version: str,
    processing_version: str,
    sensor_metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``rs:dataset`` JSON object of a shard (hrefs without query strings or credentials)."""
    channels, height, width = first.image.shape
    return {
        "shard_schema_version": SHARD_SCHEMA_VERSION,
        "dataset_version": dataset_version,
        "processing_version": processing_version,
        "collection": item.collection,
        "sensor": item.sensor,
        "modality": item.modality,
        "chip_px": int(width),
        "chip_shape": [int(channels), int(height), int(width)],
        "grid": {"type": "item_pixel_grid", "epsg": int(first.epsg), "gsd_m": float(first.transform[0])},
        "band_order": [b.name for b in item.bands],
        "bands": _band_metadata(item),
        "pixel_encoding": {
            **PIXEL_ENCODING,
            "dtype": np.dtype(first.image.dtype).name,
            "shape": [int(channels), int(height), int(width)],
        },
        "quality": None if item.quality is None else {
            "kind": item.quality.kind,
            "asset_key": item.quality.asset_key,
            "cloud": list(item.quality.cloud),
            "nodata": list(item.quality.nodata),
            "resampling": "nearest",
        },
        "sensor_metadata": dict(sensor_metadata),
        "lineage": {
            "item_id": item.item_id,
            "collection": item.collection,
            "datetime": item.datetime.astimezone(UTC).isoformat(),
            "updated": item.updated,
            "assets": {b.name: redact_href(b.href) for b in item.bands},
            "quality_asset": None if item.quality is None else redact_href(item.quality.href),
            "processing_version": processing_version,
            # scalar provenance: platform, s2:processing_baseline, rs:dn_offset and its reason, orbit, ...
            "properties": dict(item.properties),
        },
    }


def _raw_binary(rows: np.ndarray) -> pa.Array:
    """A ``binary`` array with one value per leading-axis row of ``rows``, sharing its memory (no copy)."""
    n = rows.shape[0]
    per_row = rows.nbytes // max(1, n)
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(per_row)  # int32: a row group stays under 256 MiB
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(rows.reshape(-1))])


_SCRATCH = threading.local()


def _row_group_buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array for one row group's pixels, reusing this thread's buffer from the last row group.

    A row group is up to 256 MiB: a fresh allocation that size is a fresh ``mmap`` whose page faults cost as much
    as Parquet's zstd pass (measured 0.22-0.24 s for 64 S2 chips). The buffer is safe to reuse once
    ``ParquetWriter.write_table`` returns, which copies the values into encoded pages.
    """
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffer: np.ndarray | None = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = np.empty(nbytes, dtype=np.uint8)
        _SCRATCH.buffer = buffer
    return buffer[:nbytes].view(dtype).reshape(shape)


def _chips_table(chips: Sequence[Chip], item: ResolvedItem, schema: pa.Schema) -> tuple[pa.Table, list[str]]:
    n = len(chips)
    first = chips[0].image
    little = np.dtype(first.dtype).newbyteorder("<")
    images = _row_group_buffer((n, *first.shape), little)  # (N, C, H, W)
    np.stack([c.image for c in chips], out=images)  # N x (C, H, W) -> (N, C, H, W), little-endian
    flat_valid = np.stack([c.valid for c in chips]).reshape(n, -1)  # N x (H, W) -> (N, H*W)
    valid = np.packbits(flat_valid, axis=1, bitorder="little")  # (N, H*W) -> (N, ceil(H*W / 8))
    band_valid = [  # (C, H, W) -> (C*H*W,) -> (ceil(C*H*W / 8),) bytes, or None where the bands agree
        None if c.band_valid is None else np.packbits(c.band_valid.reshape(-1), bitorder="little").tobytes()
        for c in chips
    ]
    checksums = [chip_checksum(image) for image in images]
    when = item.datetime.astimezone(UTC).replace(tzinfo=None)
    columns = {
        "chip_id": pa.array([c.chip_id for c in chips], pa.string()),
        "item_id": pa.array([c.item_id for c in chips], pa.string()),
        "collection": pa.array([item.collection] * n, pa.string()),
        "grid_cell": pa.array([c.grid_cell for c in chips], pa.string()),
        "datetime": pa.array([when] * n, pa.timestamp("us", tz="UTC")),
        "crs_epsg": pa.array([c.epsg for c in chips], pa.int32()),
        "transform": pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray([c.transform for c in chips], dtype=np.float64).reshape(-1)), 6
        ),
        "window": pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray([c.window for c in chips], dtype=np.int32).reshape(-1)), 4
        ),
        "nodata_pct": pa.array([c.nodata_pct for c in chips], pa.float32()),
        "cloud_pct": pa.array([c.cloud_pct for c in chips], pa.float32()),
        "checksum": pa.array(checksums, pa.string()),
        "image": _raw_binary(images),
        "dtype": pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, dtype=np.int8)), pa.array([np.dtype(first.dtype).name], pa.string())
        ),
        "shape": pa.FixedSizeListArray.from_arrays(pa.array(np.tile(np.asarray(first.shape, np.int32), n)), 3),
        "valid": _raw_binary(valid),
        "band_valid": pa.array(band_valid, pa.binary()),
    }
    return pa.Table.from_arrays(list(columns.values()), schema=schema), checksums


def write_shard(
    uri: str,
    chips: Iterable[Chip],
    item: ResolvedItem,
    *,
    dataset_version: str,
    processing_version: str,
    sensor_metadata: Mapping[str, Any],
    filesystem: pafs.FileSystem | None = None,
    row_group_size: int | None = None,
    compression: Compression = "zstd",
) -> ShardInfo:
    """Write one item's chips to a Parquet shard, streaming them one row group at a time.

    Args:
        uri: target local path, ``file://`` or ``s3://`` URI (or a path on ``filesystem``).
        chips: the chips to write, all of one ``(C, H, W)`` shape and dtype; consumed lazily.
        item: the item the chips come from (band metadata and lineage).
        dataset_version, processing_version: recorded in the ``rs:dataset`` metadata.
        sensor_metadata: the sensor's configuration block (``sensors.yaml`` entry), recorded as is.
        filesystem: a pyarrow filesystem to write through; inferred from ``uri`` when ``None``.
        row_group_size: chips per row group; :func:`row_group_size_for` of the first chip when ``None``.
        compression: ``"zstd"`` (level :data:`ZSTD_LEVEL`, the default), ``"lz4"`` (faster to write, ~35 % larger
            on S2) or ``"none"``.

    Returns:
        The shard's :class:`ShardInfo`.

    Raises:
        ValueError: no chips, or chips of differing shape/dtype.
    """
    iterator = iter(chips)
    first = next(iterator, None)
    if first is None:
        raise ValueError(f"write_shard({uri!r}) got no chips for item {item.item_id!r}; write no shard instead.")
    shape = tuple(int(v) for v in first.image.shape)
    if len(shape) != 3:
        raise ValueError(f"Chip images must be (C, H, W); chip {first.chip_id!r} has shape {shape}.")
    dtype = first.image.dtype
    if row_group_size is not None and row_group_size < 1:
        raise ValueError(f"row_group_size must be >= 1 chips or None, got {row_group_size}.")
    rows_per_group = row_group_size or row_group_size_for(first.image.nbytes)
    match compression:
        case "zstd":
            codec: dict[str, Any] = {"compression": "zstd", "compression_level": ZSTD_LEVEL}
        case "lz4" | "none":
            codec = {"compression": compression}
        case _:
            raise ValueError(f"compression must be 'zstd', 'lz4' or 'none', got {compression!r}.")
    metadata = dataset_metadata(
        item,
        first,
        dataset_version=dataset_version,
        processing_version=processing_version,
        sensor_metadata=sensor_metadata,
    )
    schema = shard_schema(dtype, shape, metadata)  # type: ignore[arg-type]
    fs, path = resolve(uri, filesystem)
    chip_ids: list[str] = []
    chip_checksums: list[str] = []
    # Durable before visible (pipeline/uri.py): a committed manifest never points at unflushed or torn bytes.
    with atomic_output(fs, path) as sink:  # C++ stream: no Python call per write
        writer = pq.ParquetWriter(
            sink,
            schema,
            **codec,
            use_dictionary=["chip_id", "item_id", "collection", "grid_cell", "dtype"],
            write_statistics=list(_SCALAR_COLUMNS),
            write_page_index=False,
            write_batch_size=WRITE_BATCH_ROWS,
            # no page CRCs (write_page_checksum): measured +0.05 s per S2 item; the pixels carry their own
            # CRC-32 (`checksum`) and files are written atomically
        )

        def flush(batch: list[Chip]) -> None:
            table, checksums = _chips_table(batch, item, schema)
            writer.write_table(table, row_group_size=rows_per_group)
            chip_ids.extend(c.chip_id for c in batch)
            chip_checksums.extend(checksums)

        try:
            batch: list[Chip] = []
            for chip in chain([first], iterator):
                if chip.image.shape != shape or chip.image.dtype != dtype:
                    raise ValueError(
                        f"Chip {chip.chip_id!r} has shape {chip.image.shape} {chip.image.dtype}, but this shard "
                        f"holds {shape} {dtype}; one shard takes one item of one sensor."
                    )
                batch.append(chip)
                if len(batch) == rows_per_group:
                    flush(batch)
                    batch = []
            if batch:
                flush(batch)
        finally:
            writer.close()
        n_bytes = sink.tell()
    return ShardInfo(
        path=path,
        n_rows=len(chip_ids),
        n_bytes=n_bytes,
        checksum=content_checksum(chip_checksums),
        row_group_size=rows_per_group,
        chip_ids=tuple(chip_ids),
        chip_checksums=tuple(chip_checksums),
    )


def read_shard(
    uri: str, columns: Sequence[str] | None = None, filesystem: pafs.FileSystem | None = None, *,
    s3_endpoint: str | None = None,
) -> pa.Table:
    """Read a shard (or some of its columns) as an Arrow table; decode pixels with :func:`decode_images`.

    ``s3_endpoint`` (default ``AWS_ENDPOINT_URL``) is the S3 endpoint for ``s3://`` URIs, as for the ingest output.
    """
    fs, path = resolve(uri, filesystem, endpoint=s3_endpoint)
    return pq.read_table(path, columns=None if columns is None else list(columns), filesystem=fs)


def shard_metadata(
    uri: str, filesystem: pafs.FileSystem | None = None, *, s3_endpoint: str | None = None
) -> dict[str, Any]:
    """The ``rs:dataset`` JSON object of a shard, from its footer only (``s3_endpoint`` as for :func:`read_shard`)."""
    fs, path = resolve(uri, filesystem, endpoint=s3_endpoint)
    schema = pq.read_schema(path, filesystem=fs)
    raw = (schema.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise ValueError(f"{redact_href(uri)!r} has no {METADATA_KEY!r} metadata; it was not written by write_shard.")
    result: dict[str, Any] = json.loads(raw)
    return result


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise KeyError(
            f"Table has no {name!r} column (it has {table.column_names}); read the shard with columns including "
            f"{name!r} (pixels need 'image', 'dtype' and 'shape'; the mask needs 'valid' and 'shape')."
        )
    return table.column(name)


def _uniform(table: pa.Table, name: str) -> Any:
    """The single value every row of column ``name`` holds (dtype name or shape list)."""
    array = _column(table, name).combine_chunks()
    if pa.types.is_fixed_size_list(array.type):  # shape: (N * 3,) -> (N, 3) rows, unique rows
        flat = array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), array.type.list_size)
        values = np.unique(flat, axis=0).tolist()
    else:
        values = pc.unique(array).to_pylist()
    if len(values) != 1:
        raise ValueError(
            f"Column {name!r} holds {len(values)} distinct values {values[:4]}; decode_images stacks chips of one "
            "dtype and shape only: read one shard (one item, one sensor) at a time."
        )
    return values[0]


def _raw_rows(column: pa.ChunkedArray, row_nbytes: int, name: str) -> np.ndarray:
    """The rows of a binary column as a ``(N, row_nbytes)`` uint8 array: a view for one chunk of equal-length rows."""
    parts = []
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            raise ValueError(f"Column {name!r} has {chunk.null_count} null values; shards never hold null pixels.")
        offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        offsets = np.frombuffer(chunk.buffers()[1], dtype=offset_type)[chunk.offset : chunk.offset + len(chunk) + 1]
        if not np.all(np.diff(offsets) == row_nbytes):
            raise ValueError(
                f"Column {name!r} has rows of {sorted(set(np.diff(offsets).tolist()))[:4]} bytes, expected "
                f"{row_nbytes} from its dtype and shape; the shard is corrupt or was not written by write_shard."
            )
        data = chunk.buffers()[2]
        parts.append(np.frombuffer(data, dtype=np.uint8, count=len(chunk) * row_nbytes, offset=int(offsets[0])))
    if not parts:
        return np.empty((0, row_nbytes), dtype=np.uint8)
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return flat.reshape(-1, row_nbytes)  # (N * row_nbytes,) -> (N, row_nbytes)


def decode_images(table: pa.Table) -> np.ndarray:
    """The ``image`` column as ``(N, C, H, W)`` in the native dtype: zero-copy for a single-chunk column.

    Needs the ``image``, ``dtype`` and ``shape`` columns (shards of schema version 1, with an Arrow
    ``fixed_shape_tensor`` ``image``, decode too).
    """
    column = _column(table, "image")
    if isinstance(column.type, pa.FixedShapeTensorType):  # schema version 1
        legacy: np.ndarray = column.combine_chunks().to_numpy_ndarray()
        return legacy
    if table.num_rows == 0:
        return np.empty((0, 0, 0, 0), dtype=np.uint8)
    dtype = np.dtype(_uniform(table, "dtype")).newbyteorder("<")
    shape = tuple(int(v) for v in _uniform(table, "shape"))
    rows = _raw_rows(column, int(np.prod(shape)) * dtype.itemsize, "image")
    images: np.ndarray = rows.view(dtype).reshape((-1, *shape))  # (N, bytes) -> (N, C, H, W)
    return images


def decode_valid(table: pa.Table) -> np.ndarray:
    """The ``valid`` column as a ``(N, H, W)`` bool array (needs the ``valid`` and ``shape`` columns)."""
    column = _column(table, "valid")
    if isinstance(column.type, pa.FixedShapeTensorType):  # schema version 1
        legacy: np.ndarray = column.combine_chunks().to_numpy_ndarray().view(np.bool_)
        return legacy
    if table.num_rows == 0:
        return np.empty((0, 0, 0), dtype=np.bool_)
    _, height, width = (int(v) for v in _uniform(table, "shape"))
    packed = _raw_rows(column, (height * width + 7) // 8, "valid")  # (N, ceil(H*W / 8))
    bits = np.unpackbits(packed, axis=1, count=height * width, bitorder="little")  # -> (N, H*W)
    return bits.view(np.bool_).reshape(-1, height, width)  # (N, H*W) -> (N, H, W)


def decode_band_valid(table: pa.Table) -> np.ndarray:
    """The per-band masks as a ``(N, C, H, W)`` bool array: ``band_valid`` where stored, else ``valid`` for every band.

    Needs the ``valid`` and ``shape`` columns, and ``band_valid`` when the shard has it (schema version 3; older
    shards stored one mask for all bands, which this returns per band).
    """
    valid = decode_valid(table)  # (N, H, W)
    if table.num_rows == 0:
        return np.empty((0, 0, 0, 0), dtype=np.bool_)
    channels, height, width = (int(v) for v in _uniform(table, "shape"))
    out = np.repeat(valid[:, None, :, :], channels, axis=1)  # (N, H, W) -> (N, C, H, W)
    if "band_valid" not in table.column_names:
        return out
    count = channels * height * width
    for row, packed in enumerate(table.column("band_valid").to_pylist()):
        if packed is None:
            continue
        bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=count, bitorder="little")
        out[row] = bits.view(np.bool_).reshape(channels, height, width)  # (C*H*W,) -> (C, H, W)
    return out

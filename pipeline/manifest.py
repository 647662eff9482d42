"""The ingest commit protocol and the dataset-level outputs rebuilt from it.

Layout of an ingest output (a local directory or ``s3://bucket/prefix``)::

    shards/{dataset_version}/{collection}/utm={epsg}/{safe_id}-{fingerprint}.parquet   pixels (pipeline.shards)
    manifests/{dataset_version}/{collection}/{key}.json          one committed item: its chips, counts, stats partial
    manifests/{dataset_version}/{collection}/{key}.failed.json   the last failure of an item not (re)committed yet
    snapshots/{run_id}.ndjson                                   the search results one run worked from
    state/lease/ingest/{generation}.json                       the output's lease (pipeline/lease.py)
    state/processing_version/{dataset_version}.json             the processing version a dataset version is pinned to
    state/schedule/{dataset_version}/{slot}.json                a finished schedule slot (pipeline/schedule.py)
    index.parquet  failures.parquet  dataset.json               rebuilt from the manifests at the end of every run

**Commit protocol.** A shard exists only once its manifest is written: the actor writes the shard (atomically), then
the item's manifest (atomically: a temporary name and ``os.replace`` locally, a single PUT on S3, whose completion is
atomic). A crash between the two leaves an orphan shard that nothing references; the re-run rewrites it at the same
deterministic path. The unit of work is ``(item_id, processing_version, updated)``: a re-run skips items whose
committed manifest matches all three, and a changed ``updated`` writes a new shard (a new fingerprint) and replaces
the manifest, so the old shard is superseded (kept on disk, append-only, but no longer indexed). ``index.parquet``,
``failures.parquet`` and ``dataset.json`` are pure functions of the manifests (in manifest path order, no wall-clock
fields), so an idempotent re-run reproduces them byte for byte. They are rebuilt by streaming the manifests (one in
memory at a time); planning reads only :class:`ManifestSummary` records. Concurrency (the lease) and the
processing-version pin are described in docs/ingest-lease.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import ProcessingVersionError
from pipeline.ids import safe_id
from pipeline.records import FailureRecord
from pipeline.shards import PIXEL_ENCODING
from pipeline.stats import BandStats, warn_degenerate
from pipeline.times import parse_datetime
from pipeline.uri import TMP_MARKER, atomic_output, create_exclusive, resolve, write_atomic
from pipeline.uri import s3_endpoint as endpoint_url
from pipeline.warnings import InvalidTimestampWarning

__all__ = [
    "FAILURE_SCHEMA",
    "INDEX_SCHEMA",
    "ChipStatus",
    "ItemManifest",
    "ManifestSummary",
    "OutputStore",
    "build_dataset_json",
    "build_failures_table",
    "build_index_table",
    "check_processing_version",
    "chip_key",
    "item_key",
    "iter_manifests",
    "load_manifests",
    "load_summaries",
    "pin_processing_version",
    "pinned_processing_version",
    "watermarks",
    "write_outputs",
]

ChipStatus = Literal["written", "dropped_nodata", "dropped_cloud"]
MANIFEST_VERSION = 1
INDEX_ROWS_PER_GROUP = 16384
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_LIST_ATTEMPTS = 5  # listings retried when a directory appears or vanishes under them (OutputStore.list_files)

INDEX_SCHEMA = pa.schema(
    [
        pa.field("chip_id", pa.string(), nullable=False),
        pa.field("chip_key", pa.int64(), nullable=False),
        pa.field("grid_cell", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("collection", pa.string(), nullable=False),
        pa.field("datetime", pa.timestamp("us", tz="UTC")),
        pa.field("geometry", pa.binary(), nullable=False),
        pa.field(
            "bbox",
            pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())]),
        ),
        pa.field("utm_epsg", pa.int32(), nullable=False),
        pa.field("window", pa.list_(pa.int32(), 4), nullable=False),
        pa.field("cloud_pct", pa.float32()),
        pa.field("nodata_pct", pa.float32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("shard_path", pa.string()),
        pa.field("row_group", pa.int32()),
        pa.field("row_index", pa.int32()),
        pa.field("checksum", pa.string()),
        pa.field("processing_version", pa.string(), nullable=False),
        pa.field("mgrs_tile", pa.string()),
        pa.field("processing_baseline", pa.string()),
        pa.field("orbit_state", pa.string()),
        pa.field("relative_orbit", pa.int32()),
        pa.field("polarizations", pa.string()),
    ]
)

FAILURE_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("collection", pa.string()),
        pa.field("asset", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_class", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("processing_version", pa.string()),
        pa.field("attempt", pa.int32()),
    ]
)

# Index columns filled from ResolvedItem.properties (sensor extras, docs/data-format.md §Chip index).
EXTRA_PROPERTIES: Mapping[str, str] = {
    "mgrs_tile": "s2:mgrs_tile",
    "processing_baseline": "s2:processing_baseline",
    "orbit_state": "sat:orbit_state",
    "relative_orbit": "sat:relative_orbit",
    "polarizations": "sar:polarizations",
}


def chip_key(chip_id: str) -> int:
    """A stable non-negative int64 for a chip id (the numeric column that survives ``iter_torch_batches``)."""
    return int.from_bytes(hashlib.blake2b(chip_id.encode(), digest_size=8).digest(), "big") & 0x7FFF_FFFF_FFFF_FFFF


def item_key(collection: str, item_id: str) -> str:
    """A path-safe, deterministic, collision-free manifest name for ``(collection, item_id)``.

    Item ids are untrusted text (they may contain ``/`` or ``..``); the readable prefix is sanitised and the suffix
    hashes the exact pair, so two ids that sanitise alike never share a manifest.
    """
    readable = _UNSAFE.sub("_", item_id).strip("._")[:80] or "item"
    digest = hashlib.blake2b(f"{collection}\x00{item_id}".encode(), digest_size=6).hexdigest()
    return f"{readable}-{digest}"


# ------------------------------------------------------------------------------------------------------- file access


@dataclass(frozen=True)
class OutputStore:
    """A dataset root on a local disk or S3, with atomic writes.

    Attributes:
        uri: the root as given (``/data/out`` or ``s3://bucket/prefix``); never holds credentials.
        filesystem: the pyarrow filesystem (credentials come from the environment, as boto3/pyarrow read them).
        root: the root as a path inside ``filesystem`` (``bucket/prefix`` on S3).
        endpoint: the S3 endpoint URL used (``None``: AWS or a local path), for conditional writes.
    """

    uri: str
    filesystem: pafs.FileSystem
    root: str
    endpoint: str | None = None

    @classmethod
    def open(cls, uri: str, *, s3_endpoint: str | None = None) -> OutputStore:
        """Open ``uri`` (a local path or ``s3://``); the S3 endpoint comes from ``s3_endpoint`` or ``AWS_ENDPOINT_URL``.

        Raises:
            ValueError: an unsupported URI scheme.
        """
        scheme = urlsplit(uri).scheme.lower()
        if scheme not in ("", "file", "s3") and len(scheme) > 1:
            raise ValueError(f"Output {uri!r} has unsupported scheme {scheme!r}; use a local path or s3://.")
        filesystem, root = resolve(uri, endpoint=s3_endpoint)
        if scheme == "s3":
            return cls(uri=uri.rstrip("/"), filesystem=filesystem, root=root, endpoint=endpoint_url(s3_endpoint))
        return cls(uri=root, filesystem=filesystem, root=root)

    @property
    def is_local(self) -> bool:
        """True for a local directory (atomic rename available)."""
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, rel: str) -> str:
        """The filesystem path of ``rel`` (relative to the root)."""
        return f"{self.root}/{rel}" if rel else self.root

    def full_uri(self, rel: str) -> str:
        """A URI a person (or rasterio, pyarrow) can open: ``/abs/path`` or ``s3://bucket/key``."""
        return self.path(rel) if self.is_local else f"s3://{self.path(rel)}"

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` atomically (:func:`pipeline.uri.write_atomic`): readers never see a torn file."""
        write_atomic(self.filesystem, self.path(rel), data)

    def create(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` only if absent (:func:`pipeline.uri.create_exclusive`); ``True`` when this call did."""
        return create_exclusive(self.filesystem, self.path(rel), data, endpoint=self.endpoint)

    def write_table(self, rel: str, table: pa.Table) -> None:
        """Write a Parquet file atomically (zstd)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def read_bytes(self, rel: str) -> bytes:
        """Read a whole file."""
        with self.filesystem.open_input_stream(self.path(rel)) as stream:
            return bytes(stream.read())

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists as a file."""
        return self.filesystem.get_file_info(self.path(rel)).type == pafs.FileType.File

    def list_files(self, rel_dir: str, suffix: str = "") -> list[str]:
        """Relative paths of the files under ``rel_dir`` ending with ``suffix``, sorted; ``[]`` if it does not exist.

        A directory another process creates (or a temporary one it removes) while this lists it makes Arrow's local
        listing fail with "not found" even with ``allow_not_found`` (it lists, fails, then finds the directory
        there); such a listing is taken again, a few times, before the error is raised.
        """
        selector = pafs.FileSelector(self.path(rel_dir), recursive=True, allow_not_found=True)
        prefix = self.root + "/"
        for attempt in range(_LIST_ATTEMPTS):
            try:
                infos = self.filesystem.get_file_info(selector)
                break
            except FileNotFoundError:
                if attempt == _LIST_ATTEMPTS - 1:
                    raise
        out = [
            info.path[len(prefix) :]
            for info in infos
            if info.type == pafs.FileType.File and info.path.endswith(suffix) and TMP_MARKER not in info.path
        ]
        return sorted(out)

    def delete(self, rel: str) -> None:
        """Delete a file if it exists."""
        try:
            self.filesystem.delete_file(self.path(rel))
        except FileNotFoundError:
            pass


# -------------------------------------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class ItemManifest:
    """What one item contributed to the dataset: the record that commits its shard.

    Attributes:
        item_id, collection: the item, exactly as the catalog gives it.
        processing_version, dataset_version: the unit of work together with ``updated``.
        updated: the item's ``updated`` property (or ``None``); a change triggers re-ingest.
        datetime: acquisition time (ISO 8601, UTC); feeds the watermark.
        status: ``"committed"`` or ``"failed"``.
        shard: ``{"path", "n_rows", "n_bytes", "checksum"}`` relative to the root, or ``None`` (no written chip).
        counts: ``{"written", "dropped_nodata", "dropped_cloud"}``.
        chips: index rows (see :data:`INDEX_SCHEMA`, geometry as hex WKB, datetime as ISO text).
        stats: the item's ``BandStats.to_dict()`` over written chips, nodata excluded, or ``None``.
        sensor: ``SensorSpec.to_metadata()`` of the item's sensor (band order, wavelengths, GSD, nodata).
        lineage: ``{"item_href", "assets": {band: href}}`` with credentials redacted.
        failure: the failure (``FailureRecord`` fields) when ``status == "failed"``.
        attempt: how many times this item has been tried in this dataset version.
    """

    item_id: str
    collection: str
    processing_version: str
    dataset_version: str
    updated: str | None
    datetime: str | None
    status: Literal["committed", "failed"]
    shard: dict[str, Any] | None = None
    counts: dict[str, int] | None = None
    chips: tuple[dict[str, Any], ...] = ()
    stats: dict[str, Any] | None = None
    sensor: dict[str, Any] | None = None
    lineage: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    attempt: int = 1

    @property
    def rel_path(self) -> str:
        """Where this manifest lives, relative to the dataset root."""
        base = f"manifests/{safe_id(self.dataset_version)}/{safe_id(self.collection)}"
        suffix = ".json" if self.status == "committed" else ".failed.json"
        return f"{base}/{item_key(self.collection, self.item_id)}{suffix}"

    def to_json(self) -> str:
        """Serialise (sorted keys) with the manifest format version."""
        data = asdict(self)
        data["chips"] = list(self.chips)
        data["manifest_version"] = MANIFEST_VERSION
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ItemManifest:
        """Parse a manifest written by :meth:`to_json`."""
        data = json.loads(text)
        version = data.pop("manifest_version", None)
        if version != MANIFEST_VERSION:
            raise ValueError(f"Manifest format version {version!r} is not supported (expected {MANIFEST_VERSION}).")
        data["chips"] = tuple(data.get("chips") or ())
        return cls(**data)

    def matches(self, processing_version: str, updated: str | None) -> bool:
        """True when this committed manifest already covers that unit of work."""
        return self.status == "committed" and self.processing_version == processing_version and self.updated == updated

    def commit(self, store: OutputStore) -> str:
        """Write the manifest atomically (this is the commit point); a success also clears the item's old failure."""
        store.write_bytes(self.rel_path, self.to_json().encode())
        if self.status == "committed":
            store.delete(self.rel_path[: -len(".json")] + ".failed.json")
        return self.rel_path


def iter_manifests(
    store: OutputStore, dataset_version: str, status: Literal["committed", "failed"] | None = None
) -> Iterator[ItemManifest]:
    """The manifests of a dataset version one at a time, in path order (callers never need them all in memory).

    Args:
        store: the output root.
        dataset_version: which dataset version.
        status: only committed or only failed manifests; both when ``None``.
    """
    for rel in store.list_files(f"manifests/{safe_id(dataset_version)}", ".json"):
        failed = rel.endswith(".failed.json")
        if status is None or (status == "failed") == failed:
            yield ItemManifest.from_json(store.read_bytes(rel))


@dataclass(frozen=True)
class ManifestSummary:
    """The few fields of a manifest that planning a run needs (a few hundred bytes instead of ~70 KB per item)."""

    item_id: str
    collection: str
    processing_version: str
    updated: str | None
    datetime: str | None
    status: Literal["committed", "failed"]
    attempt: int

    @classmethod
    def of(cls, m: ItemManifest) -> ManifestSummary:
        """The summary of a full manifest."""
        return cls(m.item_id, m.collection, m.processing_version, m.updated, m.datetime, m.status, m.attempt)

    def matches(self, processing_version: str, updated: str | None) -> bool:
        """True when this committed manifest already covers that unit of work (as :meth:`ItemManifest.matches`)."""
        return self.status == "committed" and self.processing_version == processing_version and self.updated == updated


def _unit(m: ItemManifest | ManifestSummary) -> tuple[str, str, str, str | None]:
    return (m.collection, m.item_id, m.processing_version, m.updated)


def load_summaries(store: OutputStore, dataset_version: str) -> dict[str, dict[tuple[str, str], ManifestSummary]]:
    """``{"committed": {(collection, item_id): summary}, "failed": {...}}``, streaming the manifests.

    This is what a run plans from (skip committed units, count attempts): the chips and stats of each manifest are
    parsed and dropped at once, so planning a large archive holds one summary per item, not one manifest.
    """
    out: dict[str, dict[tuple[str, str], ManifestSummary]] = {"committed": {}, "failed": {}}
    for m in iter_manifests(store, dataset_version):
        out[m.status][(m.collection, m.item_id)] = ManifestSummary.of(m)
    return out


def load_manifests(store: OutputStore, dataset_version: str) -> dict[str, list[ItemManifest]]:
    """All manifests of a dataset version, as ``{"committed": [...], "failed": [...]}`` sorted by collection, item.

    A failure for an item whose committed manifest has the same processing version and ``updated`` is stale (a crash
    between commit and clean-up) and is dropped. This holds every manifest in memory; the ingest job streams them
    instead (:func:`iter_manifests`, :func:`load_summaries`, :func:`write_outputs`).
    """
    committed: list[ItemManifest] = []
    failed: list[ItemManifest] = []
    for manifest in iter_manifests(store, dataset_version):
        (committed if manifest.status == "committed" else failed).append(manifest)
    done = {_unit(m) for m in committed}
    failed = [m for m in failed if _unit(m) not in done]
    order = lambda m: (m.collection, m.item_id)  # noqa: E731
    return {"committed": sorted(committed, key=order), "failed": sorted(failed, key=order)}


def _time_or_none(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_datetime(value, what)
    except ValueError as err:
        warnings.warn(InvalidTimestampWarning(f"{err} It is left out of the watermark; re-ingest the item with "
                                              "a valid value to replace it."), stacklevel=3)
        return None


def _pin_rel(dataset_version: str) -> str:
    return f"state/processing_version/{safe_id(dataset_version)}.json"


def pinned_processing_version(store: OutputStore, dataset_version: str) -> dict[str, Any] | None:
    """The processing version a dataset version is pinned to (``{"processing_version", "settings"}``) or ``None``."""
    if not store.exists(_pin_rel(dataset_version)):
        return None
    data: dict[str, Any] = json.loads(store.read_bytes(_pin_rel(dataset_version)))
    return data


def pin_processing_version(
    store: OutputStore, dataset_version: str, processing_version: str, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Pin ``dataset_version`` to ``processing_version`` (create-if-absent: the first run wins) and return the pin.

    One dataset version never mixes processing versions (chip sizes, code versions): every run pins before it works
    and every commit re-checks the pin (:func:`check_processing_version`).

    Raises:
        ProcessingVersionError: the dataset version is pinned to another processing version.
    """
    record = {"dataset_version": dataset_version, "processing_version": processing_version,
              "settings": dict(settings)}
    if not store.create(_pin_rel(dataset_version), (json.dumps(record, sort_keys=True) + "\n").encode()):
        record = pinned_processing_version(store, dataset_version) or record
    check_processing_version(store, dataset_version, processing_version, pinned=record)
    return record


def check_processing_version(
    store: OutputStore, dataset_version: str, processing_version: str, *, pinned: Mapping[str, Any] | None = None
) -> None:
    """Raise :class:`~pipeline.errors.ProcessingVersionError` when the pin names another processing version.

    A dataset version without a pin (written before pins existed) passes; :func:`pin_processing_version` adds one.
    """
    pin = pinned if pinned is not None else pinned_processing_version(store, dataset_version)
    if pin is None or pin.get("processing_version") == processing_version:
        return
    theirs = pin.get("processing_version")
    settings = ", ".join(f"{k}={v}" for k, v in sorted((pin.get("settings") or {}).items()))
    raise ProcessingVersionError(
        f"Dataset version {dataset_version!r} in {store.uri} was built with processing_version {theirs!r}"
        f"{f' ({settings})' if settings else ''}, but this run gives {processing_version!r} (it changes with chip "
        "size, stride, drop limits, nodata overrides, the sensor config and the ingest code version). Shards are "
        "append-only and never mixed across processing versions, so either pass a new --dataset-version (e.g. "
        f"--dataset-version {dataset_version}-{processing_version}) to build a new dataset next to the old one in "
        "the same --output, or use a new --output; or re-run with the settings and code that built the old one."
    )


class _Watermarks:
    """Per collection, the largest item ``datetime`` and ``updated`` seen so far (unparseable values are skipped)."""

    def __init__(self) -> None:
        self.marks: dict[str, dict[str, tuple[datetime, str] | None]] = {}

    def add(self, m: ItemManifest | ManifestSummary) -> None:
        mark = self.marks.setdefault(m.collection, {"datetime": None, "updated": None})
        for key, value in (("datetime", m.datetime), ("updated", m.updated)):
            parsed = _time_or_none(value, f"manifest of item {m.item_id!r} (collection {m.collection!r}), `{key}`")
            current = mark[key]
            if parsed is not None and value is not None and (current is None or parsed > current[0]):
                mark[key] = (parsed, value)

    def result(self) -> dict[str, dict[str, str | None]]:
        return {
            name: {key: None if found is None else found[1] for key, found in mark.items()}
            for name, mark in sorted(self.marks.items())
        }


def watermarks(committed: Iterable[ItemManifest | ManifestSummary]) -> dict[str, dict[str, str | None]]:
    """Per collection: the largest item ``datetime`` and ``updated`` among committed items (ISO text as stored).

    A value that does not parse (a provider's ``updated: "yesterday"`` committed by an older version) is skipped with
    an :class:`InvalidTimestampWarning`; it never breaks the rebuild.
    """
    marks = _Watermarks()
    for m in committed:
        marks.add(m)
    return marks.result()


# ------------------------------------------------------------------------------------------------- dataset outputs


def _index_rows(m: ItemManifest) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for chip in sorted(m.chips, key=lambda c: c["chip_id"]):
        row = dict(chip)
        row["geometry"] = bytes.fromhex(row["geometry"])
        row["datetime"] = _time_or_none(row.get("datetime"), f"chip {row['chip_id']!r} `datetime`")
        row["window"] = list(row["window"])
        rows.append(row)
    if rows:
        import shapely  # here, not at the top: the training feed's read tasks import this module and need no shapely

        bounds = shapely.bounds(shapely.from_wkb([r["geometry"] for r in rows]))
        for row, (x0, y0, x1, y1) in zip(rows, bounds.tolist(), strict=True):
            row["bbox"] = {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}
    return rows


def _index_batch(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    return pa.table({f.name: [r.get(f.name) for r in rows] for f in INDEX_SCHEMA}, schema=INDEX_SCHEMA)


def build_index_table(committed: Iterable[ItemManifest]) -> pa.Table:
    """The GeoParquet 1.1 chip index of committed manifests, in the given order, chips sorted by id."""
    rows = [row for m in committed for row in _index_rows(m)]
    table = _index_batch(rows)
    return table.replace_schema_metadata({b"geo": json.dumps(_geo_metadata(table)).encode()})


class _IndexWriter:
    """Streams index rows into ``index.parquet``: row groups of :data:`INDEX_ROWS_PER_GROUP` rows are spooled to a
    local temporary file, then copied into the atomic output once the GeoParquet bbox (schema metadata, which must
    be known before the first row is written) is known. Index rows are small (~0.3 KB a chip); manifests are not
    kept.
    """

    def __init__(self, store: OutputStore, rel: str) -> None:
        self._store, self._rel = store, rel
        self._spool = tempfile.TemporaryDirectory(prefix="rsvheat-index-")
        self._spool_path = os.path.join(self._spool.name, "index.parquet")
        self._writer = pq.ParquetWriter(self._spool_path, INDEX_SCHEMA, compression="zstd")
        self._batches: list[pa.Table] = []
        self._pending = 0
        self._bbox: list[float] | None = None

    def add(self, m: ItemManifest) -> None:
        rows = _index_rows(m)
        if not rows:
            return
        batch = _index_batch(rows)  # columnar at once: ~0.3 KB a chip instead of a Python dict per chip
        box = batch.column("bbox").combine_chunks()
        edges = [pc.min(box.field("xmin")).as_py(), pc.min(box.field("ymin")).as_py(),
                 pc.max(box.field("xmax")).as_py(), pc.max(box.field("ymax")).as_py()]
        self._bbox = edges if self._bbox is None else [
            *map(min, self._bbox[:2], edges[:2]), *map(max, self._bbox[2:], edges[2:])
        ]
        self._batches.append(batch)
        self._pending += batch.num_rows
        if self._pending >= INDEX_ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._batches:
            self._writer.write_table(pa.concat_tables(self._batches))
        self._batches, self._pending = [], 0

    def close(self) -> None:
        """Write ``index.parquet`` atomically from the spool."""
        try:
            self._flush()
            self._writer.close()
            schema = INDEX_SCHEMA.with_metadata({b"geo": json.dumps(_geo_metadata(None, self._bbox)).encode()})
            spooled = pq.ParquetFile(self._spool_path)
            with atomic_output(self._store.filesystem, self._store.path(self._rel)) as sink:
                with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
                    if spooled.num_row_groups == 0:
                        writer.write_table(schema.empty_table())
                    for group in range(spooled.num_row_groups):
                        writer.write_table(spooled.read_row_group(group).replace_schema_metadata(schema.metadata))
        finally:
            self._spool.cleanup()

    def abort(self) -> None:
        """Drop the spool; ``index.parquet`` is left as it was."""
        self._writer.close()
        self._spool.cleanup()


def _geo_metadata(table: pa.Table | None, bbox: Sequence[float] | None = None) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata: WKB polygons in OGC:CRS84 with a bbox covering column."""
    column: dict[str, Any] = {
        "encoding": "WKB", "geometry_types": ["Polygon", "MultiPolygon"], "crs": _crs84_projjson()
    }
    if table is not None and table.num_rows:
        box = table.column("bbox").combine_chunks()
        bbox = [
            min(box.field("xmin").to_pylist()),
            min(box.field("ymin").to_pylist()),
            max(box.field("xmax").to_pylist()),
            max(box.field("ymax").to_pylist()),
        ]
    if bbox is not None:
        column["bbox"] = list(bbox)
    column["covering"] = {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def _crs84_projjson() -> dict[str, Any]:
    from pyproj import CRS

    return dict(CRS("OGC:CRS84").to_json_dict())


def build_failures_table(
    failed: Sequence[ItemManifest], search_failures: Sequence[FailureRecord] = ()
) -> pa.Table:
    """``failures.parquet``: failed items (last attempt) plus this run's search-stage failures; empty if none."""
    rows: list[dict[str, Any]] = []
    for f in search_failures:
        rows.append({**asdict(f), "collection": None, "processing_version": None, "attempt": 1})
    for m in failed:
        rows.append({**(m.failure or {}), "collection": m.collection, "processing_version": m.processing_version,
                     "attempt": m.attempt})
    rows.sort(key=lambda r: (r["stage"] != "search", r.get("collection") or "", r["item_id"], r["asset"]))
    return pa.table({f.name: [r.get(f.name) for r in rows] for f in FAILURE_SCHEMA}, schema=FAILURE_SCHEMA)


class _Group:
    """One band set of one collection: merged stats, counts and shard/item lists of its committed items."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.stats: BandStats | None = None
        self.strides: set[int] = set()
        self.sensor: dict[str, Any] | None = None
        self.shard_info: dict[str, Any] | None = None
        self.shards: list[str] = []

    def add(self, m: ItemManifest) -> None:
        self.items.append(m.item_id)
        if m.stats:
            part = BandStats.from_dict(m.stats)
            self.stats = part if self.stats is None else self.stats.merge(part)
            self.strides.add(int(m.stats.get("pixel_stride", 1)))
        if self.sensor is None and m.sensor:
            self.sensor = m.sensor
        if m.shard:
            self.shards.append(m.shard["path"])
            if self.shard_info is None:
                self.shard_info = m.shard


class _DatasetBuilder:
    """Folds committed manifests in one at a time and builds ``dataset.json`` at the end (streaming rebuild)."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[tuple[str, ...], _Group]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.pvs: dict[str, set[str]] = {}
        self.marks = _Watermarks()
        self.shards: list[str] = []
        self.manifests: list[str] = []
        self.committed = 0

    def add(self, m: ItemManifest) -> None:
        self.committed += 1
        self.groups.setdefault(m.collection, {}).setdefault(_item_bands(m), _Group()).add(m)
        totals = self.counts.setdefault(m.collection, {"written": 0, "dropped_nodata": 0, "dropped_cloud": 0})
        for key in totals:
            totals[key] += int((m.counts or {}).get(key, 0))
        self.pvs.setdefault(m.collection, set()).add(m.processing_version)
        self.marks.add(m)
        if m.shard:
            self.shards.append(m.shard["path"])
        self.manifests.append(m.rel_path)

    def result(
        self, *, dataset_version: str, source: Mapping[str, Any], items_failed: int, search_failures: int
    ) -> dict[str, Any]:
        marks = self.marks.result()
        collections: dict[str, dict[str, Any]] = {}
        for name, groups in sorted(self.groups.items()):
            # NOTE: one band set per collection keeps batches rectangular; items with another set (a missing
            # optional band) stay in the index but are listed as excluded and left out of the stats and of
            # read_dataset.
            bands, main = max(groups.items(), key=lambda kv: (len(kv[1].items), kv[0]))
            shard_info = main.shard_info or {}
            collections[name] = {
                "sensor": main.sensor or {},
                "bands": list(bands),
                "pixel_encoding": {k: shard_info[k] for k in ("dtype", "chip_shape") if k in shard_info},
                "stats": _stats_block(main.stats, sorted(main.strides) or [1], collection=name),
                "counts": {
                    **{f"chips_{k}": v for k, v in self.counts[name].items()},
                    "items": sum(len(g.items) for g in groups.values()),
                },
                "processing_versions": sorted(self.pvs[name]),
                "watermark": marks.get(name),
                "shards": sorted(main.shards),
                "excluded_items": sorted(
                    ({"item_id": item, "bands": list(b)} for b, g in groups.items() if b != bands for item in g.items),
                    key=lambda entry: entry["item_id"],
                ),
            }
        totals = {"chips_written": 0, "chips_dropped_nodata": 0, "chips_dropped_cloud": 0}
        for counts in self.counts.values():
            for key, value in counts.items():
                totals[f"chips_{key}"] += value
        return {
            "format": "rsvheat-dataset",
            "format_version": 1,
            "dataset_version": dataset_version,
            "pixel_encoding": dict(PIXEL_ENCODING),
            "collections": collections,
            "counts": {
                **totals,
                "items_committed": self.committed,
                "items_failed": items_failed,
                "search_failures": search_failures,
            },
            "watermark": marks,
            "source": dict(source),
            "shards": sorted(self.shards),
            "manifests": sorted(self.manifests),
            "index": "index.parquet",
            "failures": "failures.parquet",
            # collections whose sensor no sensor config entry gave: how it was inferred and the YAML that pins it
            # (docs/ingest-inputs.md, "Unknown collections")
            "inferred_sensors": {
                name: {"sensor": entry["sensor"].get("sensor"), **entry["sensor"]["inferred"]}
                for name, entry in collections.items()
                if (entry.get("sensor") or {}).get("inferred")
            },
        }


def build_dataset_json(
    committed: Iterable[ItemManifest],
    failed: Sequence[ItemManifest],
    *,
    dataset_version: str,
    source: Mapping[str, Any],
    search_failures: int = 0,
) -> dict[str, Any]:
    """``dataset.json``: sensors, band order, merged normalisation stats, counts, watermark, source and shard list.

    The stats of a collection merge the committed items' partials (written chips only, nodata excluded).
    """
    builder = _DatasetBuilder()
    for m in committed:
        builder.add(m)
    return builder.result(dataset_version=dataset_version, source=source, items_failed=len(failed),
                          search_failures=search_failures)


def _item_bands(manifest: ItemManifest) -> tuple[str, ...]:
    """The band order of an item's chips (its stats' bands; the sensor's bands when no chip was written)."""
    if manifest.stats and manifest.stats.get("bands"):
        return tuple(manifest.stats["bands"])
    return tuple(b["name"] for b in (manifest.sensor or {}).get("bands") or [] if isinstance(b, Mapping))


def _stats_block(
    stats: BandStats | None, strides: Sequence[int] = (1,), *, collection: str = ""
) -> dict[str, Any] | None:
    if stats is None:
        return None
    warn_degenerate(stats, f"collection {collection!r}" if collection else "the dataset")
    data = stats.to_dict()
    sampling = "every pixel" if list(strides) == [1] else f"every {'/'.join(map(str, strides))}th row and column"
    return {
        "mean": [float(v) for v in stats.mean],
        "std": [float(v) for v in stats.std],
        "count": [int(v) for v in data["count"]] if "count" in data else None,
        "stats_hash": stats.stats_hash,
        "stats_version": data.get("stats_version"),
        "m2": data.get("m2"),
        "pixels": f"{sampling} of each written chip, nodata and non-finite values excluded",
    }


def write_outputs(
    store: OutputStore,
    *,
    dataset_version: str,
    source: Mapping[str, Any],
    search_failures: Sequence[FailureRecord] = (),
    uncommitted: Sequence[ItemManifest] = (),
) -> dict[str, Any]:
    """Rebuild ``index.parquet``, ``failures.parquet`` and ``dataset.json`` from the manifests, each atomically.

    Committed manifests are streamed (one in memory at a time, plus the per-collection aggregates), so the rebuild
    of a large archive does not hold every manifest.

    Args:
        store: the output root.
        dataset_version: which dataset version.
        source: the ``source`` block of ``dataset.json``.
        search_failures: this run's search-stage failures.
        uncommitted: this run's failed items whose failure manifest could not be written (e.g. the commit itself
            failed); they are in ``failures.parquet`` all the same.

    Returns:
        The ``dataset.json`` content.
    """
    builder = _DatasetBuilder()
    done: set[tuple[str, str, str, str | None]] = set()
    index = _IndexWriter(store, "index.parquet")
    try:
        for m in iter_manifests(store, dataset_version, "committed"):
            index.add(m)
            builder.add(m)
            done.add(_unit(m))
    except BaseException:
        index.abort()
        raise
    index.close()
    failed = {(m.collection, m.item_id): m for m in iter_manifests(store, dataset_version, "failed")
              if _unit(m) not in done}
    for m in uncommitted:
        failed.setdefault((m.collection, m.item_id), m)
    ordered = [failed[k] for k in sorted(failed)]
    store.write_table("failures.parquet", build_failures_table(ordered, search_failures))
    dataset = builder.result(dataset_version=dataset_version, source=source, items_failed=len(ordered),
                             search_failures=len(search_failures))
    store.write_bytes("dataset.json", (json.dumps(dataset, indent=2, sort_keys=True) + "\n").encode())
    return dataset

"""The ingest commit protocol and the dataset-level outputs rebuilt from it.

Layout of an ingest output (a local directory or ``s3://bucket/prefix``)::

    shards/{dataset_version}/{collection}/utm={epsg}/{safe_id}-{fingerprint}.parquet   pixels (pipeline.shards)
    manifests/{dataset_version}/{collection}/{key}.json          one committed item: its chips, counts, stats partial
    manifests/{dataset_version}/{collection}/{key}.failed.json   the last failure of an item not (re)committed yet
    snapshots/{run_id}.ndjson                                   the search results one run worked from
    index.parquet  failures.parquet  dataset.json               rebuilt from the manifests at the end of every run

**Commit protocol.** A shard exists only once its manifest is written: the actor writes the shard (atomically), then
the item's manifest (atomically: a temporary name and ``os.replace`` locally, a single PUT on S3, whose completion is
atomic). A crash between the two leaves an orphan shard that nothing references; the re-run rewrites it at the same
deterministic path. The unit of work is ``(item_id, processing_version, updated)``: a re-run skips items whose
committed manifest matches all three, and a changed ``updated`` writes a new shard (a new fingerprint) and replaces
the manifest, so the old shard is superseded (kept on disk, append-only, but no longer indexed). ``index.parquet``,
``failures.parquet`` and ``dataset.json`` are pure functions of the manifests (sorted, no wall-clock fields), so an
idempotent re-run reproduces them byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import shapely

from pipeline.ids import safe_id
from pipeline.records import FailureRecord
from pipeline.shards import PIXEL_ENCODING
from pipeline.stats import BandStats

__all__ = [
    "FAILURE_SCHEMA",
    "INDEX_SCHEMA",
    "ChipStatus",
    "ItemManifest",
    "OutputStore",
    "build_dataset_json",
    "build_failures_table",
    "build_index_table",
    "chip_key",
    "item_key",
    "load_manifests",
    "watermarks",
    "write_outputs",
]

ChipStatus = Literal["written", "dropped_nodata", "dropped_cloud"]
MANIFEST_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

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
    """

    uri: str
    filesystem: pafs.FileSystem
    root: str

    @classmethod
    def open(cls, uri: str, *, s3_endpoint: str | None = None) -> OutputStore:
        """Open ``uri`` (a local path or ``s3://``); the S3 endpoint comes from ``s3_endpoint`` or ``AWS_ENDPOINT_URL``.

        Raises:
            ValueError: an unsupported URI scheme.
        """
        parts = urlsplit(uri)
        match parts.scheme:
            case "" | "file":
                root = os.path.abspath(parts.path if parts.scheme else uri)
                return cls(uri=root, filesystem=pafs.LocalFileSystem(), root=root)
            case "s3":
                root = f"{parts.netloc}{parts.path}".rstrip("/")
                return cls(uri=uri.rstrip("/"), filesystem=s3_filesystem(s3_endpoint), root=root)
            case _:
                raise ValueError(f"Output {uri!r} has unsupported scheme {parts.scheme!r}; use a local path or s3://.")

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
        """Write ``data`` atomically: readers see the old file or the whole new one, never a torn file."""
        path = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        else:
            with self.filesystem.open_output_stream(path) as stream:  # one PUT: S3 publishes it atomically
                stream.write(data)

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
        """Relative paths of the files under ``rel_dir`` ending with ``suffix``, sorted; ``[]`` if it does not exist."""
        selector = pafs.FileSelector(self.path(rel_dir), recursive=True, allow_not_found=True)
        prefix = self.root + "/"
        out = [
            info.path[len(prefix) :]
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File and info.path.endswith(suffix) and ".tmp-" not in info.path
        ]
        return sorted(out)

    def delete(self, rel: str) -> None:
        """Delete a file if it exists."""
        try:
            self.filesystem.delete_file(self.path(rel))
        except FileNotFoundError:
            pass


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem; ``endpoint`` (or ``AWS_ENDPOINT_URL``) like ``http://127.0.0.1:9000`` for local S3."""
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {}
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


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


def load_manifests(store: OutputStore, dataset_version: str) -> dict[str, list[ItemManifest]]:
    """All manifests of a dataset version, as ``{"committed": [...], "failed": [...]}`` sorted by collection, item.

    A failure for an item whose committed manifest has the same processing version and ``updated`` is stale (a crash
    between commit and clean-up) and is dropped.
    """
    committed: list[ItemManifest] = []
    failed: list[ItemManifest] = []
    for rel in store.list_files(f"manifests/{safe_id(dataset_version)}", ".json"):
        manifest = ItemManifest.from_json(store.read_bytes(rel))
        (failed if rel.endswith(".failed.json") else committed).append(manifest)
    done = {(m.collection, m.item_id, m.processing_version, m.updated) for m in committed}
    failed = [m for m in failed if (m.collection, m.item_id, m.processing_version, m.updated) not in done]
    order = lambda m: (m.collection, m.item_id)  # noqa: E731
    return {"committed": sorted(committed, key=order), "failed": sorted(failed, key=order)}


def watermarks(committed: Iterable[ItemManifest]) -> dict[str, dict[str, str | None]]:
    """Per collection: the largest item ``datetime`` and ``updated`` among committed items (ISO text)."""
    out: dict[str, dict[str, str | None]] = {}
    for m in committed:
        mark = out.setdefault(m.collection, {"datetime": None, "updated": None})
        for key, value in (("datetime", m.datetime), ("updated", m.updated)):
            if value is not None and (mark[key] is None or _parse_time(value) > _parse_time(str(mark[key]))):
                mark[key] = value
    return dict(sorted(out.items()))


def _parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------------- dataset outputs


def build_index_table(committed: Sequence[ItemManifest]) -> pa.Table:
    """The GeoParquet 1.1 chip index from committed manifests, sorted by (collection, item, chip)."""
    rows: list[dict[str, Any]] = []
    for m in committed:
        for chip in sorted(m.chips, key=lambda c: c["chip_id"]):
            row = dict(chip)
            row["geometry"] = bytes.fromhex(row["geometry"])
            row["datetime"] = _parse_time(row["datetime"]) if row.get("datetime") else None
            row["window"] = list(row["window"])
            rows.append(row)
    if rows:
        bounds = shapely.bounds(shapely.from_wkb([r["geometry"] for r in rows]))
        for row, (x0, y0, x1, y1) in zip(rows, bounds.tolist(), strict=True):
            row["bbox"] = {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}
    columns = {f.name: [r.get(f.name) for r in rows] for f in INDEX_SCHEMA}
    table = pa.table(columns, schema=INDEX_SCHEMA)
    return table.replace_schema_metadata({b"geo": json.dumps(_geo_metadata(table)).encode()})


def _geo_metadata(table: pa.Table) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata: WKB polygons in OGC:CRS84 with a bbox covering column."""
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["Polygon", "MultiPolygon"], "crs": _crs84_projjson()}
    if table.num_rows:
        bbox = table.column("bbox").combine_chunks()
        column["bbox"] = [
            min(bbox.field("xmin").to_pylist()),
            min(bbox.field("ymin").to_pylist()),
            max(bbox.field("xmax").to_pylist()),
            max(bbox.field("ymax").to_pylist()),
        ]
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


def build_dataset_json(
    committed: Sequence[ItemManifest],
    failed: Sequence[ItemManifest],
    *,
    dataset_version: str,
    source: Mapping[str, Any],
    search_failures: int = 0,
) -> dict[str, Any]:
    """``dataset.json``: sensors, band order, merged normalisation stats, counts, watermark, source and shard list.

    The stats of a collection merge the committed items' partials (written chips only, nodata excluded).
    """
    collections: dict[str, dict[str, Any]] = {}
    by_collection: dict[str, list[ItemManifest]] = {}
    for m in committed:
        by_collection.setdefault(m.collection, []).append(m)
    marks = watermarks(committed)
    for name, manifests in sorted(by_collection.items()):
        groups: dict[tuple[str, ...], list[ItemManifest]] = {}
        for m in manifests:
            groups.setdefault(_item_bands(m), []).append(m)
        # NOTE: one band set per collection keeps batches rectangular; items with another set (a missing optional
        # band) stay in the index but are listed as excluded and left out of the stats and of read_dataset.
        bands, members = max(groups.items(), key=lambda kv: (len(kv[1]), kv[0]))
        merged: BandStats | None = None
        for m in members:
            if m.stats:
                part = BandStats.from_dict(m.stats)
                merged = part if merged is None else merged.merge(part)
        shard_info = next((m.shard for m in members if m.shard), None) or {}
        collections[name] = {
            "sensor": next((m.sensor for m in members if m.sensor), None) or {},
            "bands": list(bands),
            "pixel_encoding": {k: shard_info[k] for k in ("dtype", "chip_shape") if k in shard_info},
            "stats": _stats_block(merged, sorted({(m.stats or {}).get("pixel_stride", 1) for m in members if m.stats})),
            "counts": {**_sum_counts(manifests), "items": len(manifests)},
            "processing_versions": sorted({m.processing_version for m in manifests}),
            "watermark": marks.get(name),
            "shards": sorted(m.shard["path"] for m in members if m.shard),
            "excluded_items": sorted(
                ({"item_id": m.item_id, "bands": list(b)} for b, ms in groups.items() if b != bands for m in ms),
                key=lambda entry: entry["item_id"],
            ),
        }
    totals = _sum_counts(committed)
    return {
        "format": "rsvheat-dataset",
        "format_version": 1,
        "dataset_version": dataset_version,
        "pixel_encoding": dict(PIXEL_ENCODING),
        "collections": collections,
        "counts": {
            **totals,
            "items_committed": len(committed),
            "items_failed": len(failed),
            "search_failures": search_failures,
        },
        "watermark": marks,
        "source": dict(source),
        "shards": sorted(m.shard["path"] for m in committed if m.shard),
        "manifests": sorted(m.rel_path for m in committed),
        "index": "index.parquet",
        "failures": "failures.parquet",
    }


def _sum_counts(manifests: Iterable[ItemManifest]) -> dict[str, int]:
    totals = {"written": 0, "dropped_nodata": 0, "dropped_cloud": 0}
    for m in manifests:
        for key in totals:
            totals[key] += int((m.counts or {}).get(key, 0))
    return {f"chips_{k}": v for k, v in totals.items()}


def _item_bands(manifest: ItemManifest) -> tuple[str, ...]:
    """The band order of an item's chips (its stats' bands; the sensor's bands when no chip was written)."""
    if manifest.stats and manifest.stats.get("bands"):
        return tuple(manifest.stats["bands"])
    return tuple(b["name"] for b in (manifest.sensor or {}).get("bands") or [] if isinstance(b, Mapping))


def _stats_block(stats: BandStats | None, strides: Sequence[int] = (1,)) -> dict[str, Any] | None:
    if stats is None:
        return None
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
) -> dict[str, Any]:
    """Rebuild ``index.parquet``, ``failures.parquet`` and ``dataset.json`` from the manifests, each atomically.

    Returns:
        The ``dataset.json`` content.
    """
    manifests = load_manifests(store, dataset_version)
    store.write_table("index.parquet", build_index_table(manifests["committed"]))
    store.write_table("failures.parquet", build_failures_table(manifests["failed"], search_failures))
    dataset = build_dataset_json(
        manifests["committed"],
        manifests["failed"],
        dataset_version=dataset_version,
        source=source,
        search_failures=len(search_failures),
    )
    store.write_bytes("dataset.json", (json.dumps(dataset, indent=2, sort_keys=True) + "\n").encode())
    return dataset

"""The Ray Data part of ingest: the ``ItemChipper`` actor and the per-item work it does.

``jobs/ingest.py`` builds a dataset with one row per STAC item (the item as a JSON string) and calls::

    ds.map_batches(ItemChipper, fn_constructor_kwargs={"settings": settings}, batch_size=1,
                   concurrency=(1, workers), num_cpus=1)

Each actor sets up the GDAL environment, the sensor registry and the output filesystem once. For every item it
resolves the item, reads it once in strips (:func:`pipeline.tiling.cut_item`), drops chips over the nodata/cloud
limits (they stay in the index with their reason), writes the shard and then commits the item's manifest
(:mod:`pipeline.manifest`) **inside the actor**. It returns one small row per item (counts, status, the manifest
JSON with the index rows and the stats partial): pixels never enter Ray's object store.

Any error of one item becomes a failure manifest and a ``status="failed"`` row with the stage, error class and
message; it never kills the job. Only ``MemoryError`` propagates (Ray then retries or fails the task loudly).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from pipeline.cog import failure_message, gdal_env, redact_href
from pipeline.errors import InvalidItemError, LeaseLostError, ProcessingVersionError
from pipeline.ids import safe_id
from pipeline.infer import inferred_name
from pipeline.items import BandOverride, resolve_item
from pipeline.lease import verify_lease
from pipeline.manifest import (
    EXTRA_PROPERTIES,
    ItemManifest,
    OutputStore,
    check_processing_version,
    chip_key,
    pin_processing_version,
)
from pipeline.records import Chip, FailureRecord, ResolvedItem
from pipeline.sensors import SensorRegistry, load_sensors
from pipeline.shards import ShardInfo, write_shard
from pipeline.stats import BandStats
from pipeline.tiling import cut_item
from pipeline.times import parse_datetime

__all__ = [
    "FORWARDED_ENV_PREFIXES",
    "PROCESSING_CODE_VERSION",
    "STATS_STRIDE",
    "IngestSettings",
    "ItemChipper",
    "ItemResult",
    "check_item_id",
    "check_updated",
    "forwarded_env",
    "ingest_item",
    "item_collection",
    "prefetched",
    "processing_version",
    "sensor_block",
]

# Bump when chipping, resampling, dB or DN-offset rules change: it changes processing_version and forces re-ingest.
# "2": raw little-endian pixel columns (shard schema 2) and nodata stored at invalid pixels of every band.
# "3": CRC-32 chip checksums instead of blake2b-128 (same pixels; one dataset version never mixes the two).
# "4": lossless pixels per band (a band keeps its values where another band has no data) and the per-band validity
#      column `band_valid` (shard schema 3); inferred sensors for unknown collections; --bands.
PROCESSING_CODE_VERSION = "4"
# Normalisation stats use every STATS_STRIDE-th row and column of each written chip: 1/16 of the pixels, spread evenly
# over every chip, which keeps the per-band mean/std well within a percent and the stats cheap at ingest.
STATS_STRIDE = 4
# Environment variables the driver hands to actors (a pooled Ray worker does not see the driver's later env changes).
FORWARDED_ENV_PREFIXES = ("AWS_", "GDAL_", "CPL_", "VSI_")


@dataclass(frozen=True)
class IngestSettings:
    """Everything an actor needs, as plain data (it is pickled into every actor).

    Attributes:
        output: dataset root (local path or ``s3://``).
        dataset_version, processing_version: where shards go and the unit-of-work key.
        chip_size, stride: chip grid in reference pixels.
        max_nodata, max_cloud: chips above these percentages are dropped (recorded in the index, not written).
        bands: ``--bands`` selectors (band names, common names, asset keys): the dataset's bands, in order; empty:
            every band of each item's sensor.
        s3_endpoint: S3 endpoint for the output (``None``: ``AWS_ENDPOINT_URL`` or AWS).
        sensors_path: a sensor config YAML (``None``: the packaged ``pipeline/sensors.yaml``).
        prefetch_chips: chips read ahead by a reader thread while the shard writer encodes (GDAL reads and Parquet
            encoding both release the GIL, so they overlap); ``0`` reads and writes in turn.
        overrides: per band name (or ``"*"``) ``nodata``/``scale``/``offset`` overrides for ``resolve_item``.
        gdal_options: extra GDAL config options for reads.
        env: environment variables forwarded from the driver (``AWS_*`` ...). Never logged.
        lease_owner, lease_generation: the driver's lease on the output (pipeline/lease.py); every commit first
            checks that it still holds it. ``None``: no lease (library use).
    """

    output: str
    dataset_version: str
    processing_version: str
    chip_size: int = 256
    stride: int | None = None
    max_nodata: float = 50.0
    max_cloud: float | None = None
    bands: tuple[str, ...] = ()
    s3_endpoint: str | None = None
    sensors_path: str | None = None
    prefetch_chips: int = 32
    overrides: Mapping[str, BandOverride] = field(default_factory=dict)
    gdal_options: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    lease_owner: str | None = None
    lease_generation: int | None = None


def processing_version(
    sensors: SensorRegistry,
    *,
    chip_size: int,
    stride: int | None,
    max_nodata: float,
    max_cloud: float | None,
    overrides: Mapping[str, BandOverride] | None = None,
    bands: tuple[str, ...] = (),
) -> str:
    """A short hash of everything that changes the chips: code version, sensor config, grid, drop limits, overrides,
    band selection."""
    payload: dict[str, Any] = {
        "code": PROCESSING_CODE_VERSION,
        "sensors": sensors.config_hash,
        "chip_size": chip_size,
        "stride": stride if stride is not None else chip_size,
        "max_nodata": max_nodata,
        "max_cloud": max_cloud,
    }
    if overrides:  # absent when empty, so versions without overrides stay as they were
        payload["overrides"] = {band: dict(fields) for band, fields in overrides.items()}
    if bands:
        payload["bands"] = list(bands)
    digest = hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=6).hexdigest()
    return f"p{PROCESSING_CODE_VERSION}-{digest}"


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The driver's ``AWS_*``/``GDAL_*``/``CPL_*``/``VSI_*`` variables, for :attr:`IngestSettings.env`."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


@dataclass(frozen=True)
class ItemResult:
    """The row an actor returns for one item (small: no pixels).

    ``outcome`` explains a committed item without written chips: ``"smaller_than_chip"`` (the scene is smaller than
    the chip and its padding exceeds ``max_nodata``) or ``"all_chips_dropped"`` (every chip over a quality limit);
    ``scene_height``/``scene_width`` are its reference grid in pixels. ``sensor_note`` is the
    :class:`~pipeline.warnings.SensorInferredWarning` text when its sensor was inferred (the driver warns once).
    """

    item_id: str
    collection: str
    status: str
    n_written: int = 0
    n_dropped_nodata: int = 0
    n_dropped_cloud: int = 0
    n_bytes: int = 0
    outcome: str = ""
    scene_height: int = 0
    scene_width: int = 0
    sensor_note: str = ""
    stage: str = ""
    error_class: str = ""
    message: str = ""
    manifest_path: str = ""
    manifest: str = ""
    seconds: float = 0.0


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


class _ChipFilter:
    """Streams chips to the shard writer, dropping chips over the limits and recording every chip's index row."""

    def __init__(
        self, item: ResolvedItem, settings: IngestSettings, chips: Iterator[Chip], state: dict[str, str]
    ) -> None:
        self.item = item
        self.settings = settings
        self.chips = chips
        self.state = state
        self.rows: list[dict[str, Any]] = []
        self.counts = {"written": 0, "dropped_nodata": 0, "dropped_cloud": 0}
        self.stats: BandStats | None = None
        self.any_valid = False
        self.scene_shape = (0, 0)
        self.smaller_than_chip = 0
        self._first: Chip | None = None
        extras = {}
        for column, prop in EXTRA_PROPERTIES.items():
            value = item.properties.get(prop)
            if column == "relative_orbit":
                extras[column] = int(value) if isinstance(value, int | float) else None
            else:
                extras[column] = None if value is None else str(value)
        self.extras = extras

    def peek(self) -> Chip | None:
        """The first chip to be written, after skipping dropped ones (its CRS names the shard's partition)."""
        for chip in self._filtered():
            self._first = chip
            return chip
        return None

    def _filtered(self) -> Iterator[Chip]:
        while True:
            self.state["stage"] = "read"
            try:
                chip = next(self.chips)
            except StopIteration:
                return
            self.state["stage"] = "chip"
            if self._keep(chip):
                self.state["stage"] = "write"
                yield chip

    def _padding_pct(self, chip: Chip) -> float:
        """Percentage of the chip outside the scene (the overhang that is padded invalid)."""
        height, width = chip.scene_shape
        col, row, w, h = chip.window
        inside = max(0, min(col + w, width) - col) * max(0, min(row + h, height) - row)
        return 100.0 * (1.0 - inside / float(w * h))

    def _keep(self, chip: Chip) -> bool:
        s = self.settings
        status, reason = "written", None
        self.scene_shape = chip.scene_shape
        self.any_valid = self.any_valid or chip.nodata_pct < 100.0
        if chip.nodata_pct > s.max_nodata:
            status, reason = "dropped_nodata", f"nodata_pct {chip.nodata_pct:.1f} > max_nodata {s.max_nodata:g}"
            height, width = chip.scene_shape
            padding = self._padding_pct(chip)
            if min(height, width) < chip.window[2] and padding > s.max_nodata:
                # docs/ingest-inputs.md, "Scenes smaller than a chip": padded into the chip when max_nodata allows
                self.smaller_than_chip += 1
                reason = (
                    f"smaller_than_chip: the scene is {height} x {width} px, the chip {chip.window[2]} px; its padding "
                    f"alone is {padding:.1f} % nodata > max_nodata {s.max_nodata:g}"
                )
        elif s.max_cloud is not None and chip.cloud_pct is not None and chip.cloud_pct > s.max_cloud:
            status, reason = "dropped_cloud", f"cloud_pct {chip.cloud_pct:.1f} > max_cloud {s.max_cloud:g}"
        row: dict[str, Any] = {
            "chip_id": chip.chip_id,
            "chip_key": chip_key(chip.chip_id),
            "grid_cell": chip.grid_cell,
            "item_id": self.item.item_id,
            "collection": self.item.collection,
            "datetime": _iso(self.item.datetime),
            "geometry": chip.footprint_wkb.hex(),
            "utm_epsg": int(chip.epsg),
            "window": [int(v) for v in chip.window],
            "cloud_pct": None if chip.cloud_pct is None else round(float(chip.cloud_pct), 4),
            "nodata_pct": round(float(chip.nodata_pct), 4),
            "status": status,
            "reason": reason,
            "shard_path": None,
            "row_group": None,
            "row_index": None,
            "checksum": None,
            "processing_version": s.processing_version,
            **self.extras,
        }
        self.counts[status] += 1
        if status == "written":
            image = chip.image  # a view of the strip (cut_item); stats read a strided subsample of it
            if np.issubdtype(image.dtype, np.floating):
                nonfinite = int(np.count_nonzero(~np.isfinite(image[:, chip.valid])))
                if nonfinite:  # before the chip reaches the shard writer: no shard, not even a temporary one
                    raise InvalidItemError(
                        f"Item {self.item.item_id!r}: chip {chip.chip_id!r} has {nonfinite} valid pixels that are "
                        "NaN or inf after conversion; refusing to write them (Clay PR #54). Check the source data "
                        "and the band's nodata value (raster:bands, pipeline/sensors.yaml or --nodata-override)."
                    )
            if self.stats is None:
                self.stats = BandStats([b.name for b in self.item.bands])
            self.stats.update(image[:, ::STATS_STRIDE, ::STATS_STRIDE], chip.valid[::STATS_STRIDE, ::STATS_STRIDE])
        self.rows.append(row)
        return status == "written"

    def written(self) -> Iterator[Chip]:
        """The chips to write, starting with the one :meth:`peek` returned."""
        if self._first is not None:
            yield self._first
        yield from self._filtered()


def ingest_item(
    item_json: str,
    settings: IngestSettings,
    *,
    sensors: SensorRegistry,
    store: OutputStore,
    gdal: Mapping[str, str] | None = None,
    attempt: int = 1,
) -> ItemResult:
    """Resolve, cut, filter, shard and commit one item; every error becomes a failure manifest, never an exception.

    Args:
        item_json: the STAC item as JSON text.
        settings: the run's settings.
        sensors: the sensor registry.
        store: the output root.
        gdal: GDAL config options for reads.
        attempt: 1 for a first try, n for the n-th (failed items are retried on every run).
    """
    start = time.perf_counter()
    state = {"stage": "resolve"}
    item_id, collection, updated = "<unparsed>", "", None
    resolved: ResolvedItem | None = None
    try:
        raw = json.loads(item_json)
        if not isinstance(raw, dict):
            raise InvalidItemError(f"STAC item must be a JSON object, got {type(raw).__name__}: {item_json[:80]!r}")
        item_id = str(raw.get("id", "<no id>"))
        collection = item_collection(raw, sensors, settings.bands)
        updated = (raw.get("properties") or {}).get("updated")
        check_item_id(raw.get("id"))
        check_updated(item_id, updated)
        state["stage"] = "commit"
        _check_commit(store, settings)  # before any pixel is read: no shard for a run that may not commit
        state["stage"] = "resolve"
        item = resolved = resolve_item(
            raw, sensors, overrides=settings.overrides or None, bands=settings.bands, gdal_env=gdal,
            warn_inferred=False,  # reported to the driver in ItemResult.sensor_note, which warns once per collection
        )
        sensor_metadata = sensor_block(item.sensor_metadata, item)
        collection = item.collection
        cut = cut_item(item, chip_size=settings.chip_size, stride=settings.stride, gdal_env=gdal)
        chips = _ChipFilter(item, settings, prefetched(cut, settings.prefetch_chips), state)
        first = chips.peek()
        shard = None
        if first is not None:
            state["stage"] = "write"
            fingerprint = hashlib.blake2b(
                f"{settings.processing_version}\x00{updated}".encode(), digest_size=4
            ).hexdigest()
            rel = (
                f"shards/{safe_id(settings.dataset_version)}/{safe_id(item.collection)}/"
                f"utm={first.epsg}/{item.safe_id}-{fingerprint}.parquet"
            )
            info = write_shard(
                store.path(rel),
                chips.written(),
                item,
                dataset_version=settings.dataset_version,
                processing_version=settings.processing_version,
                sensor_metadata=sensor_metadata,
                filesystem=store.filesystem,
            )
            if info.n_rows != chips.counts["written"]:
                raise RuntimeError(f"Shard {rel} holds {info.n_rows} rows but {chips.counts['written']} were sent.")
            shard = {
                "path": rel,
                "n_rows": info.n_rows,
                "n_bytes": info.n_bytes,
                "checksum": info.checksum,
                "row_group_size": info.row_group_size,
                "dtype": np.dtype(first.image.dtype).name,
                "chip_shape": [int(v) for v in first.image.shape],
            }
            _locate_rows(chips.rows, rel, info)
        state["stage"] = "chip"
        _check_usable(item, chips)
        outcome = ""
        if chips.counts["written"] == 0:
            total = sum(chips.counts.values())
            outcome = "smaller_than_chip" if chips.smaller_than_chip == total else "all_chips_dropped"
        manifest = ItemManifest(
            item_id=item.item_id,
            collection=item.collection,
            processing_version=settings.processing_version,
            dataset_version=settings.dataset_version,
            updated=updated,
            datetime=_iso(item.datetime),
            status="committed",
            shard=shard,
            counts=dict(chips.counts),
            chips=tuple(chips.rows),
            stats={**chips.stats.to_dict(), "pixel_stride": STATS_STRIDE} if chips.stats is not None else None,
            sensor=sensor_metadata,
            lineage=_lineage(raw, item),
            attempt=attempt,
        )
        state["stage"] = "commit"
        _check_commit(store, settings, pin=True)
        path = manifest.commit(store)
        return ItemResult(
            item_id=item.item_id,
            collection=item.collection,
            status="committed",
            n_written=chips.counts["written"],
            n_dropped_nodata=chips.counts["dropped_nodata"],
            n_dropped_cloud=chips.counts["dropped_cloud"],
            n_bytes=int(shard["n_bytes"]) if shard else 0,
            outcome=outcome,
            scene_height=int(chips.scene_shape[0]),
            scene_width=int(chips.scene_shape[1]),
            sensor_note=item.sensor_note or "",
            manifest_path=path,
            manifest=manifest.to_json(),
            seconds=time.perf_counter() - start,
        )
    except MemoryError:
        raise
    except Exception as err:  # one item's failure must never stop the job; the table keeps the class
        failure = FailureRecord(
            item_id=item_id,
            asset=_failed_asset(err, resolved),
            stage=state["stage"],
            error_class=type(err).__name__,
            message=failure_message(err),
        )
        manifest = ItemManifest(
            item_id=item_id,
            collection=collection or "_unknown",
            processing_version=settings.processing_version,
            dataset_version=settings.dataset_version,
            updated=updated if isinstance(updated, str) else None,
            datetime=None,
            status="failed",
            failure=asdict(failure),
            attempt=attempt,
        )
        path = ""
        if not isinstance(err, LeaseLostError | ProcessingVersionError):  # never write into another run's output
            try:
                path = manifest.commit(store)
            except OSError:
                pass  # the row carries the failure manifest; the driver puts it in failures.parquet
        return ItemResult(
            item_id=item_id,
            collection=collection,
            status="failed",
            stage=failure.stage,
            error_class=failure.error_class,
            message=failure.message,
            manifest_path=path,
            manifest=manifest.to_json(),
            seconds=time.perf_counter() - start,
        )


@dataclass(frozen=True)
class _Done:
    error: BaseException | None = None


def prefetched(chips: Iterator[Chip], depth: int) -> Iterator[Chip]:
    """Iterate ``chips`` from a reader thread that stays up to ``depth`` chips ahead (``depth <= 0``: no thread).

    Errors of the reader are re-raised here, in the consumer. When the consumer stops early, the reader stops too and
    closes ``chips`` (so ``cut_item`` closes its files).
    """
    if depth <= 0:
        yield from chips
        return
    slots: queue.Queue[Chip | _Done] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: Chip | _Done) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for chip in chips:
                if not put(chip):
                    break
            else:
                put(_Done())
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(_Done(err))
        finally:
            close = getattr(chips, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=read, name="chip-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            entry = slots.get()
            if isinstance(entry, _Done):
                if entry.error is not None:
                    raise entry.error
                return
            yield entry
    finally:
        stop.set()
        thread.join(timeout=60)


def _locate_rows(rows: list[dict[str, Any]], rel: str, info: ShardInfo) -> None:
    """Fill shard path, row group, row index and checksum of the written chips from the writer's per-row record."""
    where = {cid: (pos, checksum) for pos, (cid, checksum) in enumerate(
        zip(info.chip_ids, info.chip_checksums, strict=True))}
    size = info.row_group_size
    for row in rows:
        if row["status"] != "written":
            continue
        pos, checksum = where[row["chip_id"]]
        row.update(shard_path=rel, row_group=pos // size, row_index=pos % size, checksum=checksum)


def item_collection(raw: Mapping[str, Any], sensors: SensorRegistry, bands: tuple[str, ...] = ()) -> str:
    """The collection an item is filed under: its ``collection``, else its matched sensor's name, else the name of
    the sensor inferred for it (:func:`pipeline.infer.inferred_name`), else ``""``.

    The driver (to skip committed items) and the actor (to commit them) must agree on it, as ``resolve_item`` does.
    """
    collection = raw.get("collection")
    if isinstance(collection, str) and collection:
        return collection
    try:
        return sensors.for_item(raw, bands).name
    except (KeyError, ValueError, TypeError):
        try:
            return inferred_name(raw)
        except (AttributeError, TypeError, ValueError):
            return ""


def check_item_id(item_id: Any) -> None:
    """Reject ids that are unusable as STAC URL path segments (``/``, ``\\``, ``..``, control characters).

    Raises:
        InvalidItemError: with the offending id and how to fix it.
    """
    if not isinstance(item_id, str) or not item_id:
        raise InvalidItemError(f"STAC item id must be a non-empty string, got {item_id!r}.")
    bad = [part for part in ("/", "\\", "..") if part in item_id]
    if bad or any(ord(ch) < 32 for ch in item_id):
        shown = bad or ["control characters"]
        raise InvalidItemError(
            f"Item id {item_id!r} contains {', '.join(map(repr, shown))}: ids must not contain path separators or "
            "'..' (they are URL path segments in a STAC API and would escape the output directory as file names). "
            "Rename the item in the catalog."
        )


def check_updated(item_id: str, updated: Any) -> None:
    """Reject an ``updated`` property that is not an RFC 3339 timestamp (it would be committed as the unit of work).

    Raises:
        InvalidItemError: naming the item, the value and the expected form.
    """
    if updated is None:
        return
    try:
        parse_datetime(updated, f"Item {item_id!r} property `updated`")
    except ValueError as err:
        raise InvalidItemError(f"{err} Fix or remove `updated` in the catalog (STAC requires RFC 3339).") from None


def _check_commit(store: OutputStore, settings: IngestSettings, *, pin: bool = False) -> None:
    """The run may commit: its lease is still the newest (if it has one) and the dataset's processing-version pin
    matches (a dataset version never mixes chip sizes or code versions). With ``pin``, the first commit of a dataset
    version creates the pin (create-if-absent: of two racing runs one pins, the other's commit is refused).
    """
    if settings.lease_owner is not None and settings.lease_generation is not None:
        verify_lease(store, settings.lease_owner, settings.lease_generation)
    if pin:
        stride = settings.stride if settings.stride is not None else settings.chip_size
        pin_processing_version(store, settings.dataset_version, settings.processing_version, {
            "chip_size": settings.chip_size, "stride": stride, "max_nodata": settings.max_nodata,
            "max_cloud": settings.max_cloud,
        })
    else:
        check_processing_version(store, settings.dataset_version, settings.processing_version)


def sensor_block(sensor: Mapping[str, Any], item: ResolvedItem) -> dict[str, Any]:
    """The sensor metadata with one band table: the item's bands in chip order, with the nodata, scale and offset
    actually used (``--nodata-override`` included), so the shard footer and ``dataset.json`` never disagree.
    """
    configured = {b["name"]: b for b in sensor.get("bands") or () if isinstance(b, Mapping)}
    bands = []
    for band in item.bands:
        entry = dict(configured.get(band.name, {"name": band.name}))
        entry.update(nodata=band.nodata, scale=band.scale, offset=band.offset)
        bands.append(entry)
    return {**sensor, "bands": bands}


def _check_usable(item: ResolvedItem, chips: _ChipFilter) -> None:
    """Reject items that yield nothing usable: no chip at all, or not one valid pixel (all-nodata/NaN).

    An item whose chips were all dropped by the quality rules (too much nodata or cloud, or a scene smaller than the
    chip) is not a failure: it is committed with its chips in the index as dropped, with their reason.
    """
    counts = chips.counts
    total = sum(counts.values())
    if total == 0:
        raise InvalidItemError(
            f"Item {item.item_id!r} (collection {item.collection!r}) produced no chips; check its proj:shape and "
            "that its assets are not empty."
        )
    if not chips.any_valid:
        raise InvalidItemError(
            f"Item {item.item_id!r} (collection {item.collection!r}) has no valid pixels in any of its {total} chips "
            "(every pixel equals a band's nodata value, is NaN or lies outside the assets). Check the assets' nodata "
            "value (raster:bands / pipeline/sensors.yaml, or --nodata-override) and the data itself."
        )


def _failed_asset(err: BaseException, item: ResolvedItem | None) -> str:
    """The asset key an error is about, when its message names one (a band or an href of the item), else ``""``."""
    text = str(err)
    if item is not None:
        sources = [(b.asset_key, b.href) for b in item.bands]
        if item.quality is not None:
            sources.append((item.quality.asset_key, item.quality.href))
        for key, href in sources:
            if redact_href(href) in text:
                return key
    named = re.search(r"no asset for band `([^`]+)`", text)
    return named.group(1) if named else ""


def _lineage(raw: Mapping[str, Any], item: ResolvedItem) -> dict[str, Any]:
    links = raw.get("links") or []
    self_href = next((ln.get("href") for ln in links if isinstance(ln, dict) and ln.get("rel") == "self"), None)
    return {
        "item_href": redact_href(self_href) if isinstance(self_href, str) else None,
        "assets": {b.name: redact_href(b.href) for b in item.bands},
        "quality": redact_href(item.quality.href) if item.quality else None,
        "updated": item.updated,
    }


class ItemChipper:
    """Ray Data callable class: one actor chips items one at a time and returns small manifest rows.

    Args:
        settings: the run's :class:`IngestSettings`.
    """

    def __init__(self, settings: IngestSettings) -> None:
        os.environ.update(settings.env)  # S3 keys/endpoint for GDAL and pyarrow in this worker process
        self.settings = settings
        self.sensors = load_sensors(settings.sensors_path)
        self.gdal = gdal_env(settings.gdal_options)
        self.store = OutputStore.open(settings.output, s3_endpoint=settings.s3_endpoint)
        self.noted: set[str] = set()  # collections whose SensorInferredWarning text this actor already returned

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Chip every item of the batch (``item_json`` and ``attempt`` columns) and return one row per item."""
        results = [
            ingest_item(str(text), self.settings, sensors=self.sensors, store=self.store, gdal=self.gdal,
                        attempt=int(attempt))
            for text, attempt in zip(batch["item_json"], batch["attempt"], strict=True)
        ]
        for k, result in enumerate(results):  # the driver warns once per collection: send each note once per actor
            if result.sensor_note and result.collection in self.noted:
                results[k] = replace(result, sensor_note="")
            elif result.sensor_note:
                self.noted.add(result.collection)
        # The driver streams these rows; a committed item's manifest (~70 KB: every chip's index row) stays in the
        # store, and only a failure's (small) manifest travels, for failures the store could not take.
        results = [r if r.status == "failed" else replace(r, manifest="") for r in results]
        columns = [f.name for f in ItemResult.__dataclass_fields__.values()]
        return {name: np.asarray([getattr(r, name) for r in results]) for name in columns}

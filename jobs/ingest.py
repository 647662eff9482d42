"""Ingest STAC items into Parquet chip shards with Ray Data: search → skip committed → chip in actors → index.

Run locally or on a cluster::

    python jobs/ingest.py --catalog .cache/samples/catalog.json --output out/samples --chip-size 128
    python -m jobs.ingest --config jobs/configs/ingest_sample.yaml
    ray job submit --working-dir . -- python jobs/ingest.py --stac-api https://... --collections sentinel-2-l2a \
        --bbox 11.0 46.0 11.5 46.5 --datetime 2024-04-01/2024-04-30 --output s3://bucket/datasets/s2

Steps (docs/ingest.md §Steps):

0. **Validate and lease**: every flag is checked before any work (bad ``--since``/``--datetime``/``--bbox``, a missing
   ``--config``, an unknown ``--nodata-override`` band, an ``--output`` that is a file or not writable: exit 2). The
   run then takes the output's lease and pins the dataset version's processing version (docs/ingest-lease.md): a
   second run while one is going (after ``--lease-wait`` seconds), or a run with other chip settings into a pinned
   dataset version, exits 2. A scheduled run (``--schedule-slot``) whose slot is already done exits 0 here, before
   and again after taking the lease, and records its slot once its outputs are committed (docs/operations.md
   §Scheduled ingestion).
1. **Search** on the driver: a STAC API through pystac-client (``--stac-api``) or a static catalog / ItemCollection /
   JSON array (``--catalog``), with the same filters applied client-side. Duplicate ids are reported (differing
   copies as search-stage failures). When there is work to do the results are snapshotted (hrefs redacted) to
   ``OUTPUT/snapshots/{run_id}.ndjson``; items that cannot be parsed become search-stage failures.
2. **Skip finished work**: items whose committed manifest has the same ``(item_id, processing_version, updated)`` are
   not processed again. ``--since`` keeps only items acquired or updated at/after a watermark (``auto``: the
   dataset's own watermark minus ``--lookback-days``).
3. **Chip** with ``map_batches(ItemChipper, batch_size=1, concurrency=(1, workers), num_cpus=1)``; each actor writes
   shards and commits manifests itself and returns small rows, streamed back here for the progress bar.
4. **Rebuild** ``index.parquet``, ``failures.parquet`` and ``dataset.json`` from all manifests, streamed (atomic
   writes); failures whose manifest the store refused are in ``failures.parquet`` too.

Cloud limits: ``--max-cloud`` drops chips whose cloud percentage (from SCL/QA) exceeds it; unless
``--max-item-cloud`` is given it is also the item-level ``eo:cloud_cover`` search filter. The default (unset) keeps
cloudy chips: filtering on cloud is a sampling decision. ``--max-nodata`` defaults to 50 %, stacchip's choice.

Exit status: 0 when every item succeeded (or the schedule slot was already done), 3 when some failed (partial), 1
when the dataset holds no ingested item, 2 for bad flags, an unusable output, a held lease or a pinned processing
version (one ``error:`` line, no traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/ingest.py` (also under `ray job submit --working-dir .`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from jobs._config import ConfigError, parse_config, to_dict
from jobs._ray import init_ray
from jobs._ray_noise import quiet_ray_noise
from pipeline.cog import redact_href
from pipeline.errors import LeaseHeldError, LeaseLostError, PipelineError, ProcessingVersionError, SensorConfigError
from pipeline.manifest import (
    ItemManifest,
    ManifestSummary,
    OutputStore,
    check_processing_version,
    load_summaries,
    pin_processing_version,
    watermarks,
    write_outputs,
)
from pipeline.records import FailureRecord
from pipeline.schedule import SlotRecord, read_slot, record_slot, resolve_slot, slot_id, slot_path
from pipeline.times import format_datetime, parse_datetime
from pipeline.warnings import PipelineWarning, SensorInferredWarning

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "IngestConfig",
    "IngestSummary",
    "UnchippedPixelsWarning",
    "main",
    "run_ingest",
]

log = logging.getLogger("jobs.ingest")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


class UnchippedPixelsWarning(PipelineWarning):
    """``--stride`` is larger than ``--chip-size``: the pixels between chips are never ingested."""


@dataclass(frozen=True)
class IngestConfig:
    """Configuration of ``jobs/ingest.py``; every field is a flag (``--chip-size``) and a YAML key (``chip_size``)."""

    # Source
    stac_api: str | None = field(default=None, metadata={"help": "STAC API root URL (pystac-client item search)"})
    catalog: str | None = field(
        default=None, metadata={"help": "static catalog.json, ItemCollection or JSON array of items (local path)"}
    )
    collections: tuple[str, ...] = field(default=(), metadata={"help": "collection ids to search / keep"})
    bbox: tuple[float, float, float, float] | None = field(
        default=None, metadata={"help": "WGS84 bbox: west south east north"}
    )
    datetime: str | None = field(default=None, metadata={"help": "RFC 3339 instant or interval a/b (.. open)"})
    max_item_cloud: float | None = field(
        default=None, metadata={"help": "item-level eo:cloud_cover limit (default: --max-cloud)"}
    )
    allow_local_hrefs: bool | None = field(
        default=None,
        metadata={"help": "accept local/file:// asset hrefs (default: only when the source itself is local/loopback)"},
    )
    nodata_override: tuple[str, ...] = field(
        default=(),
        metadata={"help": "BAND=VALUE nodata overrides ('*' = every band, 'none' = no nodata), e.g. B01=0 '*=nan'"},
    )
    limit: int = field(default=100, metadata={"help": "STAC API page size"})
    max_items: int | None = field(default=None, metadata={"help": "stop after this many items"})
    since: str | None = field(
        default=None, metadata={"help": "watermark: keep items acquired or updated at/after it; 'auto' = dataset's own"}
    )
    lookback_days: float = field(default=3.0, metadata={"help": "with --since auto: days before the watermark"})
    # Chipping
    chip_size: int = field(default=256, metadata={"help": "chip size in reference (finest band) pixels"})
    stride: int | None = field(default=None, metadata={"help": "step between chips (default: chip size)"})
    max_nodata: float = field(default=50.0, metadata={"help": "drop chips with more nodata %% than this"})
    max_cloud: float | None = field(default=None, metadata={"help": "drop chips with more cloud %% than this"})
    sensors: str | None = field(
        default=None, metadata={"help": "sensor config YAML (default: the packaged pipeline/sensors.yaml)"}
    )
    bands: tuple[str, ...] = field(
        default=(),
        metadata={"help": "bands of the dataset, in order: band names, common names or asset keys, e.g. red nir "
                          "(default: every band of each item's sensor)"},
    )
    # Run/Storage
    output: str | None = field(default=None, metadata={"help": "dataset root: local directory or s3://bucket/prefix"})
    dataset_version: str = field(default="v1", metadata={"help": "shards/{dataset_version}/... and manifests"})
    s3_endpoint: str | None = field(
        default=None, metadata={"help": "S3 endpoint URL (e.g. http://127.0.0.1:9000); default AWS_ENDPOINT_URL"}
    )
    lease_ttl: float = field(
        default=600.0, metadata={"help": "seconds the output lease lives without a heartbeat (a crashed run's expires)"}
    )
    lease_owner: str | None = field(
        default=None,
        metadata={"help": "lease owner id (default: the Ray job submission id, else host:pid:random); "
                          "docs/ingest-lease.md"},
    )
    lease_wait: float = field(
        default=0.0, metadata={"help": "seconds to wait while another run holds the output's lease (0: exit 2 at once)"}
    )
    schedule_slot: str | None = field(
        default=None,
        metadata={"help": "the schedule slot this run is: an RFC 3339 time, or every:PERIOD (every:6h: the UTC period "
                          "the run started in); a slot already done exits 0 without work (docs/operations.md)"},
    )
    # Scaling
    workers: int = field(default=2, metadata={"help": "maximum ItemChipper actors (1 CPU each)"})
    smoke_test: bool = field(default=False, metadata={"help": "tiny run: at most 2 items, 1 worker, 64 px chips"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


@dataclass
class IngestSummary:
    """What a run did; :attr:`exit_code` follows the job's exit-status contract."""

    items_found: int = 0
    items_skipped: int = 0
    items_processed: int = 0
    items_committed: int = 0
    items_failed: int = 0
    search_failures: int = 0
    chips_written: int = 0
    chips_dropped: dict[str, int] = field(default_factory=lambda: {"nodata": 0, "cloud": 0})
    chip_size: int = 256
    max_nodata: float = 50.0
    # committed items without a written chip, by outcome ("smaller_than_chip", "all_chips_dropped"), with the
    # (height, width) of each scene
    empty_items: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    failures_by_class: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    chip_seconds: float = 0.0
    item_seconds: float = 0.0
    dataset_items: int = 0
    duplicates: int = 0
    commit_failures: int = 0
    output: str = ""
    slot: str = ""  # the schedule slot (``20261123T060000Z``) when run with --schedule-slot
    slot_done_by: str = ""  # set when the slot was already done: who did it (nothing was done now)

    @property
    def chips_per_second(self) -> float:
        """Chips written per second of the chipping stage."""
        return self.chips_written / self.chip_seconds if self.chip_seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 for a slot already done; else 1 when the dataset holds nothing, 3 when this run saw failures, else 0."""
        if self.slot_done_by:
            return EXIT_OK
        if self.dataset_items == 0:
            return EXIT_FAILED
        if self.items_failed or self.search_failures:
            return EXIT_PARTIAL
        return EXIT_OK

    def render(self) -> str:
        """A human-readable summary block."""
        if self.slot_done_by:
            return "\n".join([
                f"ingest summary ({self.output})",
                f"  schedule slot {self.slot} was already done by {self.slot_done_by}: nothing to do",
                f"  exit status {self.exit_code}",
            ])
        lines = [
            f"ingest summary ({self.output})",
            f"  items: {self.items_found} found, {self.items_skipped} already committed, {self.items_processed} "
            f"processed: {self.items_committed} committed, {self.items_failed} failed; "
            f"{self.search_failures} unreadable in search",
            f"  chips: {self.chips_written} written, dropped {self.chips_dropped['nodata']} for nodata and "
            f"{self.chips_dropped['cloud']} for cloud",
            f"  speed: {self.chips_per_second:.1f} chips/s over {self.chip_seconds:.1f} s of chipping "
            f"({self.seconds:.1f} s total)",
        ]
        lines.extend(self._empty_lines())
        if self.slot and self.exit_code in (EXIT_OK, EXIT_PARTIAL):
            lines.append(f"  schedule slot {self.slot} done (a rerun of this slot does nothing)")
        if self.duplicates:
            lines.append(f"  duplicates: {self.duplicates} item ids listed more than once in the source (the last copy "
                         "was used; differing copies are in failures.parquet)")
        if self.commit_failures:
            lines.append(f"  commits: {self.commit_failures} failed items could not record their failure in the "
                         "output; they are in failures.parquet all the same")
        if self.failures_by_class:
            grouped = ", ".join(f"{k}: {v}" for k, v in sorted(self.failures_by_class.items()))
            lines.append(f"  failures by error class: {grouped} (details in failures.parquet)")
        lines.append(f"  exit status {self.exit_code}")
        return "\n".join(lines)


    def _empty_lines(self) -> list[str]:
        """Why committed items have no written chip (docs/ingest-inputs.md, "Scenes smaller than a chip")."""
        lines = []
        small = self.empty_items.get("smaller_than_chip", [])
        if small:
            side = min(min(shape) for shape in small)
            padding = max(
                100.0 * (1 - min(h, self.chip_size) * min(w, self.chip_size) / self.chip_size**2) for h, w in small
            )
            sizes = sorted({f"{h} x {w}" for h, w in small})
            pad = math.floor(padding) + 1
            lines.append(
                f"  {len(small)} item{'s are' if len(small) != 1 else ' is'} smaller than --chip-size {self.chip_size} "
                f"(scenes {', '.join(sizes[:3])}{' ...' if len(sizes) > 3 else ''} px): no chip passed --max-nodata "
                f"{self.max_nodata:g}; use --chip-size {side}"
                + (f", or --max-nodata {pad} to keep each scene as one padded chip" if pad < 100 else "")
                + " (chips are in index.parquet with reason smaller_than_chip)"
            )
        dropped = self.empty_items.get("all_chips_dropped", [])
        if dropped:
            lines.append(
                f"  {len(dropped)} item{'s' if len(dropped) != 1 else ''} had every chip dropped by --max-nodata/"
                "--max-cloud (see index.parquet status and reason)"
            )
        return lines


def _resolve_smoke(cfg: IngestConfig) -> IngestConfig:
    if not cfg.smoke_test:
        return cfg
    return replace(cfg, max_items=min(cfg.max_items or 2, 2), workers=1, chip_size=min(cfg.chip_size, 64))


def nodata_overrides(specs: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """``["B01=0", "*=nan", "vv=none"]`` as ``resolve_item`` overrides: ``{"B01": {"nodata": 0.0}, ...}``.

    Raises:
        ConfigError: an entry that is not ``BAND=VALUE`` with a number, ``nan`` or ``none``.
    """
    out: dict[str, dict[str, float | None]] = {}
    for spec in specs:
        band, sep, value = spec.partition("=")
        try:
            if not sep or not band.strip():
                raise ValueError(spec)
            nodata = None if value.strip().lower() == "none" else float(value)
        except ValueError:
            raise ConfigError(
                f"--nodata-override {spec!r} is not BAND=VALUE; use e.g. B01=0, '*=nan' (every band) or vv=none "
                "(the band has no nodata value)."
            ) from None
        out[band.strip()] = {"nodata": nodata}
    return out


def _validate(cfg: IngestConfig) -> None:
    if (cfg.stac_api is None) == (cfg.catalog is None):
        raise ConfigError("Give exactly one source: --stac-api URL or --catalog PATH.")
    if not cfg.output:
        raise ConfigError("--output is required: a local directory or s3://bucket/prefix.")
    if cfg.chip_size <= 0 or (cfg.stride is not None and cfg.stride <= 0):
        raise ConfigError(f"--chip-size and --stride must be positive, got {cfg.chip_size} and {cfg.stride}.")
    if cfg.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {cfg.workers}.")
    if not 0 <= cfg.max_nodata <= 100:
        raise ConfigError(f"--max-nodata is a percentage in [0, 100], got {cfg.max_nodata}.")
    if cfg.lease_ttl <= 0:
        raise ConfigError(f"--lease-ttl must be positive seconds, got {cfg.lease_ttl}.")
    if cfg.lease_wait < 0:
        raise ConfigError(f"--lease-wait must be 0 or more seconds, got {cfg.lease_wait}.")
    if cfg.schedule_slot is not None:
        try:
            resolve_slot(cfg.schedule_slot, datetime.now(UTC))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.since not in (None, "auto"):
        try:
            parse_datetime(cfg.since, "--since")
        except ValueError as err:
            raise ConfigError(f"{err} Or pass --since auto (the dataset's own watermark).") from None
    from pipeline.stac import parse_bbox, parse_interval

    try:
        parse_interval(cfg.datetime)
    except ValueError as err:
        raise ConfigError(
            f"--datetime {cfg.datetime!r}: {err} Use an RFC 3339 instant or interval, e.g. 2024-04-01/2024-04-30, "
            "2024-04-01T00:00:00Z/.. (open end)."
        ) from None
    try:
        parse_bbox(cfg.bbox)
    except ValueError as err:
        raise ConfigError(f"--bbox {' '.join(map(str, cfg.bbox or ()))}: {err}") from None
    nodata_overrides(cfg.nodata_override)
    _check_output(str(cfg.output))


def _check_output(output: str) -> None:
    """A local ``--output`` must be (or become) a writable directory; S3 outputs are checked by the lease write."""
    if "://" in output and not output.startswith("file://"):
        return
    path = Path(output[len("file://"):] if output.startswith("file://") else output).absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--output {output} is a file, not a directory; pass a directory (it is created if missing).")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--output {output}: {probe} is a file, so the directory cannot be created.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {output}: {probe} is not writable by this user; pick a writable directory.")


def _check_override_bands(cfg: IngestConfig, sensors: Any) -> None:
    """Every ``--nodata-override`` band (except ``*``) must be a band of a sensor this run can ingest."""
    specs = [spec for spec in sensors if not cfg.collections or set(spec.collections) & set(cfg.collections)]
    specs = specs or list(sensors)
    known = sorted({name for spec in specs for name in spec.band_names})
    unknown = [band for band in nodata_overrides(cfg.nodata_override) if band != "*" and band not in known]
    if unknown:
        raise ConfigError(
            f"--nodata-override names unknown band(s) {unknown}; bands of "
            f"{'the searched collections' if cfg.collections else 'the configured sensors'}: {', '.join(known)}; "
            "or '*' for every band."
        )


def _public_config(cfg: IngestConfig) -> dict[str, Any]:
    data = to_dict(cfg)
    for key in ("stac_api", "s3_endpoint", "catalog", "output"):
        if data.get(key):
            data[key] = redact_href(data[key])
    return data


def _since(cfg: IngestConfig, committed: Iterable[ItemManifest | ManifestSummary]) -> datetime | None:
    """The watermark to search from: ``--since`` as given, or derived from the dataset for ``auto``.

    ``auto`` is the latest committed acquisition time of the searched collections minus ``--lookback-days``
    (acquisition time, because that is what a STAC API filters on).
    """
    if cfg.since is None:
        return None
    if cfg.since != "auto":
        return parse_datetime(cfg.since, "--since")
    marks = watermarks(m for m in committed if not cfg.collections or m.collection in cfg.collections)
    times = [parse_datetime(str(mark["datetime"])) for mark in marks.values() if mark.get("datetime")]
    return max(times) - timedelta(days=cfg.lookback_days) if times else None


def _item_time(item: dict[str, Any]) -> datetime | None:
    props = item.get("properties") or {}
    stamps = [props.get(k) for k in ("datetime", "updated", "end_datetime")]
    parsed = []
    for stamp in stamps:
        if isinstance(stamp, str):
            try:
                parsed.append(parse_datetime(stamp))
            except ValueError:
                continue
    return max(parsed) if parsed else None


def search(cfg: IngestConfig, since: datetime | None) -> tuple[list[dict[str, Any]], Any]:
    """Run the configured search; returns raw items (absolute hrefs, ``--since`` applied) and the ``SearchResult``."""
    from pipeline import stac

    item_cloud = cfg.max_item_cloud if cfg.max_item_cloud is not None else cfg.max_cloud
    datetime_filter = cfg.datetime
    if datetime_filter is None and since is not None and cfg.stac_api is not None:
        # NOTE: an API can only filter on acquisition time; a static catalog is filtered below on datetime *or*
        # `updated`, so re-published old acquisitions are found there too.
        datetime_filter = f"{since.isoformat().replace('+00:00', 'Z')}/.."
    filters: dict[str, Any] = {
        "collections": list(cfg.collections) or None,
        "bbox": cfg.bbox,
        "datetime": datetime_filter,
        "max_cloud": item_cloud,
        "allow_local_hrefs": cfg.allow_local_hrefs,
    }
    if cfg.stac_api is not None:
        result = stac.search_api(cfg.stac_api, limit=cfg.limit, max_items=cfg.max_items, **filters)
    else:
        result = stac.read_catalog(cfg.catalog, **filters)
    items = list(result.items)
    if since is not None:
        items = [it for it in items if (t := _item_time(it)) is None or t >= since]
    if cfg.max_items is not None:
        items = items[: cfg.max_items]
    return items, result


def _dedupe(items: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, list[FailureRecord]]:
    """One entry per (collection, id), the last one winning, plus what was dropped.

    Returns:
        The items (sorted by collection, id), how many ids appeared more than once, and one search-stage
        ``DuplicateItemError`` failure per id whose copies differ (identical copies lose nothing, so they are only
        counted).
    """
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    contents: dict[tuple[str, str], set[str]] = {}
    seen: dict[tuple[str, str], int] = {}
    for item in items:
        key = (str(item.get("collection") or ""), str(item.get("id")))
        seen[key] = seen.get(key, 0) + 1
        if key in latest:
            contents.setdefault(key, {_digest(latest[key])}).add(_digest(item))
        latest[key] = item
    failures = [
        FailureRecord(
            item_id=item_id, asset="", stage="search", error_class="DuplicateItemError",
            message=f"Item id {item_id!r} (collection {collection or 'none'!r}) appears {seen[(collection, item_id)]} "
                    f"times in the source with {len(digests)} different contents; the last copy was ingested and the "
                    "others ignored. Give every item a unique id (or remove the stale copies) in the catalog.",
        )
        for (collection, item_id), digests in sorted(contents.items()) if len(digests) > 1
    ]
    duplicates = sum(1 for n in seen.values() if n > 1)
    return [latest[k] for k in sorted(latest)], duplicates, failures


def _digest(item: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(item, sort_keys=True).encode(), digest_size=8).hexdigest()


def _snapshot(store: OutputStore, items: Sequence[dict[str, Any]], run_id: str) -> str:
    """Write the search results as ndjson (:func:`pipeline.stac.write_snapshot`: hrefs redacted, atomic)."""
    from pipeline.stac import write_snapshot

    rel = f"snapshots/{run_id}.ndjson"
    write_snapshot(items, store.path(rel), filesystem=store.filesystem)
    return rel


def _source(cfg: IngestConfig, result: Any) -> dict[str, Any]:
    """Where the items came from, never with credentials (URLs lose user info and query strings)."""
    return {
        "search": {
            "params": getattr(result, "params", {}),
            "server_filter": getattr(result, "server_filter", False),
        },
        "stac_api": redact_href(cfg.stac_api) if cfg.stac_api else None,
        "catalog": redact_href(cfg.catalog if "://" in cfg.catalog else os.path.abspath(cfg.catalog))
        if cfg.catalog
        else None,
        "collections": list(cfg.collections),
        "bbox": list(cfg.bbox) if cfg.bbox else None,
        "datetime": cfg.datetime,
        "max_item_cloud": cfg.max_item_cloud if cfg.max_item_cloud is not None else cfg.max_cloud,
        "since": cfg.since,
        "chip_size": cfg.chip_size,
        "stride": cfg.stride,
        "max_nodata": cfg.max_nodata,
        "max_cloud": cfg.max_cloud,
        "bands": list(cfg.bands) or None,
    }


def _chip(settings: Any, todo: list[tuple[str, int]], workers: int, progress: bool) -> Iterator[dict[str, Any]]:
    """Run the ItemChipper actors over ``todo`` and stream their small rows back (with a progress bar).

    Rows are yielded as items finish and are not kept: the driver never holds the items' manifests.
    """
    import ray
    from tqdm import tqdm

    from pipeline.ray_ingest import ItemChipper

    size = max(1, min(workers, len(todo)))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our own bar below; Ray's per-operator bars would interleave with it
    context.print_on_execution_start = False
    rows = [{"item_json": text, "attempt": attempt} for text, attempt in todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # [2] one block per item: actors share the work
    del rows
    ds = ds.map_batches(  # [3] ItemChipper actors: read, chip, write shard, commit manifest
        ItemChipper,
        fn_constructor_kwargs={"settings": settings},
        batch_size=1,
        # concurrency=(1, n) in the docs' older spelling; start all n actors at once, scale down when idle
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size, initial_size=size),
        num_cpus=1,
    )
    chips = failed = 0
    with tqdm(total=len(todo), unit="item", desc="ingest", disable=not progress, file=sys.stderr) as bar:
        for row in ds.iter_rows():  # [4] stream small rows back as items finish
            chips += int(row["n_written"])
            failed += row["status"] == "failed"
            bar.set_postfix(chips=chips, failed=failed)
            bar.update(1)
            yield dict(row)


def _count(summary: IngestSummary, row: dict[str, Any], uncommitted: list[ItemManifest], noted: set[str]) -> None:
    """Fold one actor row into the summary; a failure whose manifest the store did not take is kept for the table."""
    summary.items_processed += 1
    if row["sensor_note"] and row["collection"] not in noted:  # once per collection (SensorInferredWarning)
        noted.add(row["collection"])
        warnings.warn(SensorInferredWarning(str(row["sensor_note"])), stacklevel=3)
    if row["status"] == "committed":
        summary.items_committed += 1
        if row["outcome"]:
            shape = (int(row["scene_height"]), int(row["scene_width"]))
            summary.empty_items.setdefault(str(row["outcome"]), []).append(shape)
    else:
        summary.items_failed += 1
        label = f"{row['error_class']} ({row['stage']})"
        summary.failures_by_class[label] = summary.failures_by_class.get(label, 0) + 1
        log.warning("item %r failed at %s: %s: %s", row["item_id"], row["stage"], row["error_class"], row["message"])
        if not row["manifest_path"] and row["manifest"]:
            uncommitted.append(ItemManifest.from_json(row["manifest"]))
            summary.commit_failures += 1
    summary.item_seconds += float(row["seconds"])
    summary.chips_written += int(row["n_written"])
    summary.chips_dropped["nodata"] += int(row["n_dropped_nodata"])
    summary.chips_dropped["cloud"] += int(row["n_dropped_cloud"])


def _check_stride(cfg: IngestConfig) -> None:
    if cfg.stride is not None and cfg.stride > cfg.chip_size:
        gap = cfg.stride - cfg.chip_size
        message = (
            f"--stride {cfg.stride} is larger than --chip-size {cfg.chip_size}: a {gap} px band of pixels between "
            f"neighbouring chips is never ingested ({1 - (cfg.chip_size / cfg.stride) ** 2:.0%} of each scene). "
            f"Use --stride {cfg.chip_size} (or less, for overlapping chips) to cover every pixel."
        )
        warnings.warn(UnchippedPixelsWarning(message), stacklevel=3)
        log.warning("%s", message)


def run_ingest(cfg: IngestConfig) -> IngestSummary:
    """Run one ingest as configured and return its summary (see :attr:`IngestSummary.exit_code`).

    Raises:
        ConfigError: invalid flags, an output that is a file or not writable, or a dataset version pinned to another
            processing version (the message says how to fix it).
        LeaseHeldError: another run holds the output's lease (the message names its owner and expiry).
        LeaseLostError: this run lost its lease before it could rebuild the outputs.
    """
    from pipeline.lease import acquire_lease, default_owner
    from pipeline.ray_ingest import processing_version
    from pipeline.sensors import load_sensors

    cfg = _resolve_smoke(cfg)
    _validate(cfg)
    _check_stride(cfg)
    overrides = nodata_overrides(cfg.nodata_override)
    start = time.perf_counter()
    started = datetime.now(UTC)
    run_id = started.strftime("%Y%m%dT%H%M%S%fZ")
    slot = resolve_slot(cfg.schedule_slot, started) if cfg.schedule_slot is not None else None
    try:
        sensors = load_sensors(cfg.sensors)
    except (SensorConfigError, OSError) as err:
        raise ConfigError(f"--sensors {cfg.sensors}: {err}") from None
    _check_override_bands(cfg, sensors)
    store = OutputStore.open(str(cfg.output), s3_endpoint=cfg.s3_endpoint)
    pv = processing_version(
        sensors,
        chip_size=cfg.chip_size,
        stride=cfg.stride,
        max_nodata=cfg.max_nodata,
        max_cloud=cfg.max_cloud,
        overrides=overrides,
        bands=cfg.bands,
    )
    log.info("processing_version %s, dataset_version %s, output %s", pv, cfg.dataset_version, store.uri)
    owner = cfg.lease_owner or default_owner()
    if slot is not None:
        owner = owner if cfg.lease_owner else f"{owner}@{slot_id(slot)}"
        log.info("schedule slot %s (--schedule-slot %s)", slot_id(slot), cfg.schedule_slot)
        done = _slot_done(cfg, store, slot)  # before the lease: a finished slot need not wait for another run
        if done is not None:
            return done
    with contextlib.ExitStack() as stack:
        try:
            lease = stack.enter_context(acquire_lease(store, owner, cfg.lease_ttl, wait=cfg.lease_wait))
        except OSError as err:
            raise ConfigError(f"--output {store.uri} cannot be written ({type(err).__name__}: {err}); check the "
                              "path, its permissions or the S3 bucket and credentials.") from None
        log.info("lease on %s held by %r (generation %d)", store.uri, owner, lease.generation)
        if slot is not None:
            done = _slot_done(cfg, store, slot)  # again under the lease: a run of this slot may have just finished
            if done is not None:
                return done
        summary = _run_leased(cfg, store, sensors, pv, overrides, lease, run_id, start)
        if slot is not None:
            lease.check()  # only the lease holder records the slot
            _record_slot(cfg, store, slot, summary, lease.owner, run_id)
        return summary


def _slot_done(cfg: IngestConfig, store: OutputStore, slot: datetime) -> IngestSummary | None:
    """The summary of a run that finds its schedule slot already done, else ``None``."""
    try:
        record = read_slot(store, cfg.dataset_version, slot)
    except OSError as err:
        raise ConfigError(f"--output {store.uri} cannot be read ({type(err).__name__}: {err}); check the path, its "
                          "permissions or the S3 bucket and credentials.") from None
    if record is None:
        return None
    log.info("schedule slot %s was already done by %s: nothing to do", slot_id(slot), record.describe())
    return IngestSummary(output=store.uri, slot=slot_id(slot), slot_done_by=record.describe())


def _record_slot(cfg: IngestConfig, store: OutputStore, slot: datetime, summary: IngestSummary, owner: str,
                 run_id: str) -> None:
    """Record the slot as done once its outputs are committed (a failed run leaves it to be retried)."""
    summary.slot = slot_id(slot)
    if summary.exit_code not in (EXIT_OK, EXIT_PARTIAL):
        log.warning("schedule slot %s is not recorded as done: exit status %d", summary.slot, summary.exit_code)
        return
    record = SlotRecord(
        slot=format_datetime(slot), dataset_version=cfg.dataset_version, owner=owner, run_id=run_id,
        finished_at=format_datetime(datetime.now(UTC)), exit_code=summary.exit_code,
        items_committed=summary.items_committed, items_failed=summary.items_failed,
        chips_written=summary.chips_written,
    )
    if record_slot(store, record):
        log.info("schedule slot %s recorded as done: %s", summary.slot, slot_path(cfg.dataset_version, slot))
    else:  # only a run without the lease could have written it: keep the first record, say so
        log.warning("schedule slot %s was recorded by another run meanwhile; its record is kept", summary.slot)


def _run_leased(cfg: IngestConfig, store: OutputStore, sensors: Any, pv: str, overrides: Any, lease: Any,
                run_id: str, start: float) -> IngestSummary:
    """The part of a run that holds the output's lease: plan, chip, rebuild."""
    from pipeline.ray_ingest import IngestSettings, forwarded_env, item_collection

    existing = load_summaries(store, cfg.dataset_version)  # one small summary per item, never whole manifests
    other = sorted({m.processing_version for m in existing["committed"].values()} - {pv})
    try:
        if other:  # a dataset committed before pins existed: its manifests are the record
            pin_processing_version(store, cfg.dataset_version, other[0], {})
        # The first commit pins the dataset version (an output that never committed anything binds nobody).
        check_processing_version(store, cfg.dataset_version, pv)
    except ProcessingVersionError as err:
        raise ConfigError(str(err)) from None
    since = _since(cfg, existing["committed"].values())
    if since is not None:
        log.info("watermark: items acquired or updated at/after %s", since.isoformat())

    found, result = search(cfg, since)  # search on the driver (no Ray)
    search_failures: list[FailureRecord] = list(result.failures)
    items, duplicates, duplicate_failures = _dedupe(found)
    del found
    search_failures.extend(duplicate_failures)
    if duplicates:
        log.warning("%d item ids appear more than once in the source; the last copy of each is used", duplicates)

    committed = existing["committed"]
    attempts = {key: m.attempt for key, m in existing["failed"].items()}
    todo: list[tuple[str, int]] = []
    skipped = 0
    for item in items:
        key = (item_collection(item, sensors, cfg.bands) or "_unknown", str(item.get("id", "<no id>")))
        updated = (item.get("properties") or {}).get("updated")
        done = committed.get(key)
        if done is not None and done.matches(pv, updated):
            skipped += 1
            continue
        todo.append((json.dumps(item, sort_keys=True), attempts.get(key, 0) + 1))
    if todo:  # a run that ingests nothing leaves no new snapshot behind
        snapshot = _snapshot(store, items, run_id)
        log.info("search: %d items (%d unreadable); snapshot %s", len(items), len(result.failures), snapshot)
    else:
        log.info("search: %d items (%d unreadable), all already committed: no snapshot written", len(items),
                 len(result.failures))

    summary = IngestSummary(
        items_found=len(items), items_skipped=skipped, search_failures=len(search_failures), output=store.uri,
        chip_size=cfg.chip_size, max_nodata=cfg.max_nodata,
        duplicates=duplicates,
    )
    del items
    uncommitted: list[ItemManifest] = []
    log.info("%d items to chip (%d already committed) with up to %d workers, %d px chips", len(todo), skipped,
             min(cfg.workers, max(len(todo), 1)), cfg.chip_size)
    if todo:
        settings = IngestSettings(
            output=store.uri,  # absolute: actors may run in another working directory
            dataset_version=cfg.dataset_version,
            processing_version=pv,
            chip_size=cfg.chip_size,
            stride=cfg.stride,
            max_nodata=cfg.max_nodata,
            max_cloud=cfg.max_cloud,
            bands=cfg.bands,
            overrides=overrides,
            s3_endpoint=cfg.s3_endpoint,
            sensors_path=str(Path(cfg.sensors).resolve()) if cfg.sensors else None,
            env=forwarded_env(),
            lease_owner=lease.owner,
            lease_generation=lease.generation,
        )
        init_ray()  # [1] join the cluster (RAY_ADDRESS under `ray job submit`) or start a local one
        chip_start = time.perf_counter()
        noted: set[str] = set()
        for row in _chip(settings, todo, cfg.workers, cfg.progress):
            _count(summary, row, uncommitted, noted)
        summary.chip_seconds = time.perf_counter() - chip_start
    for failure in search_failures:
        label = f"{failure.error_class} (search)"
        summary.failures_by_class[label] = summary.failures_by_class.get(label, 0) + 1
        log.warning("search failure for %r: %s: %s", failure.item_id, failure.error_class, failure.message)

    lease.check()  # a run that lost its lease leaves the outputs to the run that took it over
    dataset = write_outputs(  # index.parquet, failures.parquet, dataset.json rebuilt from the manifests
        store, dataset_version=cfg.dataset_version, source=_source(cfg, result), search_failures=search_failures,
        uncommitted=uncommitted,
    )
    summary.dataset_items = int(dataset["counts"]["items_committed"])
    summary.seconds = time.perf_counter() - start
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(IngestConfig, argv, description=__doc__.split("\n\n")[0])
        _validate(_resolve_smoke(cfg))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    log.info("config: %s", json.dumps(_public_config(cfg), sort_keys=True))
    try:
        summary = run_ingest(cfg)
    except (ConfigError, LeaseHeldError, LeaseLostError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except PipelineError as err:  # the source itself is unusable (catalog missing, API down after retries)
        print(f"error: nothing could be ingested: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(summary.render())
    return summary.exit_code


def _shutdown_ray() -> None:
    """Stop Ray inside the noise filter (its shutdown lines are among those filtered)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    with quiet_ray_noise():
        try:
            code = main()
        finally:
            _shutdown_ray()
    sys.exit(code)

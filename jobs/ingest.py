"""Ingest STAC items into Parquet chip shards with Ray Data: search → skip committed → chip in actors → index.

Run locally or on a cluster::

    python jobs/ingest.py --catalog .cache/samples/catalog.json --output out/samples --chip-size 128
    python -m jobs.ingest --config jobs/configs/ingest_sample.yaml
    ray job submit --working-dir . -- python jobs/ingest.py --stac-api https://... --collections sentinel-2-l2a \
        --bbox 11.0 46.0 11.5 46.5 --datetime 2024-04-01/2024-04-30 --output s3://bucket/datasets/s2

Steps (docs/ingest.md §Steps):

1. **Search** on the driver: a STAC API through pystac-client (``--stac-api``) or a static catalog / ItemCollection /
   JSON array (``--catalog``), with the same filters applied client-side. The results are snapshotted to
   ``OUTPUT/snapshots/{run_id}.ndjson``; items that cannot be parsed become search-stage failures.
2. **Skip finished work**: items whose committed manifest has the same ``(item_id, processing_version, updated)`` are
   not processed again. ``--since`` keeps only items acquired or updated at/after a watermark (``auto``: the
   dataset's own watermark minus ``--lookback-days``).
3. **Chip** with ``map_batches(ItemChipper, batch_size=1, concurrency=(1, workers), num_cpus=1)``; each actor writes
   shards and commits manifests itself and returns small rows, streamed back here for the progress bar.
4. **Rebuild** ``index.parquet``, ``failures.parquet`` and ``dataset.json`` from all manifests (atomic writes).

Cloud limits: ``--max-cloud`` drops chips whose cloud percentage (from SCL/QA) exceeds it; unless
``--max-item-cloud`` is given it is also the item-level ``eo:cloud_cover`` search filter. The default (unset) keeps
cloudy chips: filtering on cloud is a sampling decision. ``--max-nodata`` defaults to 50 %, stacchip's choice.

Exit status: 0 when every item succeeded, 3 when some failed (partial), 1 when the dataset holds no ingested item.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/ingest.py` (also under `ray job submit --working-dir .`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from jobs._config import ConfigError, parse_config, to_dict
from pipeline.cog import redact_href
from pipeline.errors import PipelineError
from pipeline.manifest import ItemManifest, OutputStore, _parse_time, load_manifests, watermarks, write_outputs
from pipeline.records import FailureRecord

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_PARTIAL", "IngestConfig", "IngestSummary", "main", "run_ingest"]

log = logging.getLogger("jobs.ingest")

EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 3


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
    # Run/Storage
    output: str | None = field(default=None, metadata={"help": "dataset root: local directory or s3://bucket/prefix"})
    dataset_version: str = field(default="v1", metadata={"help": "shards/{dataset_version}/... and manifests"})
    s3_endpoint: str | None = field(
        default=None, metadata={"help": "S3 endpoint URL (e.g. http://127.0.0.1:9000); default AWS_ENDPOINT_URL"}
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
    failures_by_class: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    chip_seconds: float = 0.0
    item_seconds: float = 0.0
    dataset_items: int = 0
    output: str = ""

    @property
    def chips_per_second(self) -> float:
        """Chips written per second of the chipping stage."""
        return self.chips_written / self.chip_seconds if self.chip_seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """1 when the dataset holds nothing, 3 when this run saw failures, else 0."""
        if self.dataset_items == 0:
            return EXIT_FAILED
        if self.items_failed or self.search_failures:
            return EXIT_PARTIAL
        return EXIT_OK

    def render(self) -> str:
        """A human-readable summary block."""
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
        if self.failures_by_class:
            grouped = ", ".join(f"{k}: {v}" for k, v in sorted(self.failures_by_class.items()))
            lines.append(f"  failures by error class: {grouped} (details in failures.parquet)")
        lines.append(f"  exit status {self.exit_code}")
        return "\n".join(lines)


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
    nodata_overrides(cfg.nodata_override)


def _public_config(cfg: IngestConfig) -> dict[str, Any]:
    data = to_dict(cfg)
    for key in ("stac_api", "s3_endpoint", "catalog", "output"):
        if data.get(key):
            data[key] = redact_href(data[key])
    return data


def _since(cfg: IngestConfig, committed: Sequence[ItemManifest]) -> datetime | None:
    """The watermark to search from: ``--since`` as given, or derived from the dataset for ``auto``.

    ``auto`` is the latest committed acquisition time of the searched collections minus ``--lookback-days``
    (acquisition time, because that is what a STAC API filters on).
    """
    if cfg.since is None:
        return None
    if cfg.since != "auto":
        return _parse_time(cfg.since)
    marks = watermarks(m for m in committed if not cfg.collections or m.collection in cfg.collections)
    times = [_parse_time(str(mark["datetime"])) for mark in marks.values() if mark.get("datetime")]
    return max(times) - timedelta(days=cfg.lookback_days) if times else None


def _item_time(item: dict[str, Any]) -> datetime | None:
    props = item.get("properties") or {}
    stamps = [props.get(k) for k in ("datetime", "updated", "end_datetime")]
    parsed = []
    for stamp in stamps:
        if isinstance(stamp, str):
            try:
                parsed.append(_parse_time(stamp))
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


def _dedupe(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (collection, id): the last one wins (a re-published item appears once)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for item in items:
        latest[(str(item.get("collection") or ""), str(item.get("id")))] = item
    return [latest[k] for k in sorted(latest)]


def _snapshot(store: OutputStore, items: Sequence[dict[str, Any]], run_id: str) -> str:
    """Write the search results as ndjson (asset hrefs without query strings or user info: no tokens on disk)."""
    rel = f"snapshots/{run_id}.ndjson"
    lines = []
    for item in items:
        clean = json.loads(json.dumps(item))
        for asset in (clean.get("assets") or {}).values():
            if isinstance(asset, dict) and isinstance(asset.get("href"), str):
                asset["href"] = redact_href(asset["href"])
        lines.append(json.dumps(clean, sort_keys=True, separators=(",", ":")) + "\n")
    text = "".join(lines)
    store.write_bytes(rel, text.encode())
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
    }


def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # [1] join the cluster (RAY_ADDRESS is set by `ray job submit`)
    else:
        ray.init(include_dashboard=False, configure_logging=False)  # [1] or start a local one


def _chip(settings: Any, todo: list[tuple[str, int]], workers: int, progress: bool) -> list[dict[str, Any]]:
    """Run the ItemChipper actors over ``todo`` and stream their rows back (with a progress bar)."""
    import ray
    from tqdm import tqdm

    from pipeline.ray_ingest import ItemChipper

    size = max(1, min(workers, len(todo)))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our own bar below; Ray's per-operator bars would interleave with it
    context.print_on_execution_start = False
    rows = [{"item_json": text, "attempt": attempt} for text, attempt in todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # [2] one block per item: actors share the work
    ds = ds.map_batches(  # [3] ItemChipper actors: read, chip, write shard, commit manifest
        ItemChipper,
        fn_constructor_kwargs={"settings": settings},
        batch_size=1,
        # concurrency=(1, n) in the docs' older spelling; start all n actors at once, scale down when idle
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size, initial_size=size),
        num_cpus=1,
    )
    results: list[dict[str, Any]] = []
    chips = 0
    with tqdm(total=len(rows), unit="item", desc="ingest", disable=not progress, file=sys.stderr) as bar:
        for row in ds.iter_rows():  # [4] stream small rows back as items finish
            results.append(dict(row))
            chips += int(row["n_written"])
            bar.set_postfix(chips=chips, failed=sum(r["status"] == "failed" for r in results))
            bar.update(1)
    return results


def run_ingest(cfg: IngestConfig) -> IngestSummary:
    """Run one ingest as configured and return its summary (see :attr:`IngestSummary.exit_code`)."""
    from pipeline.ray_ingest import IngestSettings, forwarded_env, item_collection, processing_version
    from pipeline.sensors import load_sensors

    cfg = _resolve_smoke(cfg)
    _validate(cfg)
    overrides = nodata_overrides(cfg.nodata_override)
    start = time.perf_counter()
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    store = OutputStore.open(str(cfg.output), s3_endpoint=cfg.s3_endpoint)
    sensors = load_sensors(cfg.sensors)
    pv = processing_version(
        sensors,
        chip_size=cfg.chip_size,
        stride=cfg.stride,
        max_nodata=cfg.max_nodata,
        max_cloud=cfg.max_cloud,
        overrides=overrides,
    )
    log.info("processing_version %s, dataset_version %s, output %s", pv, cfg.dataset_version, store.uri)
    existing = load_manifests(store, cfg.dataset_version)
    other = sorted({m.processing_version for m in existing["committed"]} - {pv})
    if other:
        raise ConfigError(
            f"Dataset version {cfg.dataset_version!r} in {store.uri} was built with processing_version {other}, but "
            f"this run gives {pv!r} (it changes with chip size, stride, drop limits, nodata overrides, the sensor "
            "config and the ingest code version, e.g. after an upgrade that changes the shard encoding). Shards are "
            "append-only and never mixed across processing versions, so either pass a new --dataset-version (e.g. "
            f"--dataset-version {cfg.dataset_version}-{pv}) to build a new dataset next to the old one in the same "
            "--output, or use a new --output; or re-run with the settings and code that built the old one."
        )
    since = _since(cfg, existing["committed"])
    if since is not None:
        log.info("watermark: items acquired or updated at/after %s", since.isoformat())

    items, result = search(cfg, since)  # search on the driver (no Ray)
    search_failures: list[FailureRecord] = list(result.failures)
    items = _dedupe(items)
    snapshot = _snapshot(store, items, run_id)
    log.info("search: %d items (%d unreadable); snapshot %s", len(items), len(search_failures), snapshot)

    committed = {(m.collection, m.item_id): m for m in existing["committed"]}
    attempts = {(m.collection, m.item_id): m.attempt for m in existing["failed"]}
    todo: list[tuple[str, int]] = []
    skipped = 0
    for item in items:
        key = (item_collection(item, sensors) or "_unknown", str(item.get("id", "<no id>")))
        updated = (item.get("properties") or {}).get("updated")
        done = committed.get(key)
        if done is not None and done.matches(pv, updated):
            skipped += 1
            continue
        todo.append((json.dumps(item, sort_keys=True), attempts.get(key, 0) + 1))

    summary = IngestSummary(
        items_found=len(items), items_skipped=skipped, search_failures=len(search_failures), output=store.uri
    )
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
            overrides=overrides,
            s3_endpoint=cfg.s3_endpoint,
            sensors_path=str(Path(cfg.sensors).resolve()) if cfg.sensors else None,
            env=forwarded_env(),
        )
        _init_ray()
        chip_start = time.perf_counter()
        rows = _chip(settings, todo, cfg.workers, cfg.progress)
        summary.chip_seconds = time.perf_counter() - chip_start
        for row in rows:
            summary.items_processed += 1
            if row["status"] == "committed":
                summary.items_committed += 1
            else:
                summary.items_failed += 1
                label = f"{row['error_class']} ({row['stage']})"
                summary.failures_by_class[label] = summary.failures_by_class.get(label, 0) + 1
                log.warning("item %r failed at %s: %s: %s", row["item_id"], row["stage"], row["error_class"],
                            row["message"])
            summary.item_seconds += float(row["seconds"])
            summary.chips_written += int(row["n_written"])
            summary.chips_dropped["nodata"] += int(row["n_dropped_nodata"])
            summary.chips_dropped["cloud"] += int(row["n_dropped_cloud"])
    for failure in search_failures:
        label = f"{failure.error_class} (search)"
        summary.failures_by_class[label] = summary.failures_by_class.get(label, 0) + 1
        log.warning("search failure for %r: %s: %s", failure.item_id, failure.error_class, failure.message)

    dataset = write_outputs(  # index.parquet, failures.parquet, dataset.json rebuilt from the manifests
        store, dataset_version=cfg.dataset_version, source=_source(cfg, result), search_failures=search_failures
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
        return 2
    log.info("config: %s", json.dumps(_public_config(cfg), sort_keys=True))
    try:
        summary = run_ingest(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PipelineError as err:  # the source itself is unusable (catalog missing, API down after retries)
        print(f"error: nothing could be ingested: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(summary.render())
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())

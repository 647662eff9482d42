"""Find STAC items: search a STAC API (paging, throttling, retries) or read a static catalog, then snapshot them.

Both entry points return a :class:`SearchResult` of raw item dicts with absolute asset hrefs plus a failure list:
a broken item file or an item without ``id``/``geometry`` becomes a :class:`~pipeline.records.FailureRecord` (stage
``"search"``) and never stops the good items
(docs/ingest.md §Steps, §STAC API client). Filters are always applied client-side as well,
because servers differ in what they support (``rustac serve`` silently returns nothing for a CQL2 filter).
"""

from __future__ import annotations

import ipaddress
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import fsspec
import requests
import shapely
import shapely.errors
import shapely.geometry
from pystac_client import Client, ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.util.retry import Retry

from pipeline.cog import redact_href, redact_text
from pipeline.errors import InvalidItemError, STACAPIError
from pipeline.items import is_absolute_href, is_local_href, item_base_href, make_absolute_href, parse_datetime
from pipeline.records import FailureRecord
from pipeline.uri import atomic_output, resolve
from pipeline.warnings import ServerFeatureWarning

__all__ = [
    "RETRY_STATUSES",
    "BBoxLike",
    "DatetimeLike",
    "RetryCounter",
    "SearchResult",
    "filter_items",
    "make_retry",
    "parse_bbox",
    "parse_interval",
    "read_catalog",
    "redacted_item",
    "search_api",
    "write_snapshot",
]

BBoxLike = Sequence[float]
"""``(west, south, east, north)`` in WGS84 degrees; ``west > east`` crosses the antimeridian."""
DatetimeLike = str | datetime | tuple[datetime | str | None, datetime | str | None]
"""``"2024-04-01/2024-04-30"``, ``"2024-04-19"``, ``"../2024-05-01"``, a ``datetime`` or a ``(start, end)`` pair."""

RETRY_STATUSES = (429, 502, 503, 504)
_THROTTLE_STATUSES = frozenset({429, 503})
_ITEM_REQUIRED = ("id", "geometry", "properties", "assets")


@dataclass
class RetryCounter:
    """Counts what the retry policy saw, for the job's metrics.

    Attributes:
        retries: retries performed (a request that exhausted its retries adds none).
        throttled: 429/503 responses received, including a final one that was not retried.
        statuses: retries per HTTP status.
    """

    retries: int = 0
    throttled: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def record(self, status: int | None) -> None:
        """Count one retry and the status that caused it (``None`` for connection/read errors)."""
        self.retries += 1
        if status is not None:
            self.statuses[status] = self.statuses.get(status, 0) + 1


class _CountingRetry(Retry):
    """A urllib3 ``Retry`` that reports every retry to a shared :class:`RetryCounter`."""

    counter: RetryCounter

    def new(self, **kw: Any) -> _CountingRetry:
        retry = super().new(**kw)
        retry.counter = self.counter
        return retry

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> _CountingRetry:
        status = getattr(response, "status", None)
        self.counter.throttled += status in _THROTTLE_STATUSES
        retry = super().increment(method, url, response, error, _pool, _stacktrace)  # MaxRetryError when exhausted
        self.counter.record(status)  # so only retries really made are counted
        return retry


def make_retry(retries: int = 5, *, backoff_factor: float = 0.5, backoff_max: float = 30.0,
               retry_after_max: float = 300.0, counter: RetryCounter | None = None) -> Retry:
    """The explicit retry policy for STAC API calls.

    Retries connection errors and HTTP 429/502/503/504 for GET and POST (a search is idempotent) with exponential
    backoff plus jitter, honouring ``Retry-After`` up to ``retry_after_max`` seconds. Timeouts are set separately, on
    the request (pystac-client#791).

    Args:
        retries: maximum retries per request.
        backoff_factor: sleep ``backoff_factor * 2**(n-1)`` seconds before retry ``n`` (plus up to 50% jitter).
        backoff_max: cap on one backoff sleep.
        retry_after_max: cap on a server's ``Retry-After`` (a longer value is shortened to this).
        counter: where retries and throttled responses are counted.
    """
    retry = _CountingRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        allowed_methods=frozenset({"GET", "POST"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_factor,
        backoff_jitter=backoff_factor / 2,
        backoff_max=backoff_max,
        respect_retry_after_header=True,
        retry_after_max=int(max(backoff_max, retry_after_max)),
        raise_on_status=False,
    )
    retry.counter = counter if counter is not None else RetryCounter()
    return retry


@dataclass
class SearchResult:
    """Items found by a search or catalog read.

    Attributes:
        items: raw STAC item dicts with absolute asset hrefs, in server/catalog order.
        failures: items or files that could not be used (stage ``"search"``).
        source: the API URL or catalog path.
        params: the effective search parameters (recorded in ``dataset.json``).
        server_filter: whether ``max_cloud`` was applied by the server (else client-side).
        pages: result pages fetched from an API.
        retries, throttled: retried requests and 429/503 responses among them.
    """

    items: list[dict[str, Any]]
    failures: list[FailureRecord] = field(default_factory=list)
    source: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    server_filter: bool = False
    pages: int = 0
    retries: int = 0
    throttled: int = 0


# --------------------------------------------------------------------------------------------------------- filters


def parse_bbox(bbox: BBoxLike | None) -> tuple[float, float, float, float] | None:
    """A search bbox as ``(west, south, east, north)`` floats (a 3-D bbox loses its z); ``ValueError`` if invalid."""
    if bbox is None:
        return None
    values = [float(v) for v in bbox]
    if len(values) == 6:  # 3D bbox: (west, south, zmin, east, north, zmax)
        values = [values[0], values[1], values[3], values[4]]
    if len(values) != 4 or not -90 <= values[1] <= values[3] <= 90 or not all(-180 <= v <= 180 for v in values[::2]):
        raise ValueError(
            f"bbox must be WGS84 (west, south, east, north) in degrees: longitudes in [-180, 180], latitudes in "
            f"[-90, 90] with south <= north (west > east crosses the antimeridian), got {list(bbox)}."
        )
    return (values[0], values[1], values[2], values[3])


def _bound(value: datetime | str | None, *, end: bool) -> datetime | None:
    if value is None or (isinstance(value, str) and value.strip() in ("", "..")):
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text = value.strip()
    try:
        parsed = parse_datetime(text)
    except ValueError as err:
        raise ValueError(f"Cannot parse datetime `{value}`; use RFC 3339 (2024-04-19T00:00:00Z) or a date.") from err
    if end and len(text) == 10:  # a bare date as an end bound means the whole day
        parsed += timedelta(days=1) - timedelta(microseconds=1)
    return parsed


def parse_interval(value: DatetimeLike | None) -> tuple[datetime | None, datetime | None] | None:
    """An RFC 3339 instant or interval (``a/b``, ``..`` or empty = open) as UTC bounds; ``ValueError`` if invalid."""
    if value is None:
        return None
    if isinstance(value, tuple):
        start, end = value
    elif isinstance(value, str) and "/" in value:
        start, end = value.split("/", 1)
    else:
        start = end = value
    interval = (_bound(start, end=False), _bound(end, end=True))
    if interval[0] and interval[1] and interval[0] > interval[1]:
        raise ValueError(f"datetime interval {value!r} ends before it starts.")
    return interval


def _interval_text(interval: tuple[datetime | None, datetime | None]) -> str:
    return "/".join(".." if bound is None else bound.isoformat().replace("+00:00", "Z") for bound in interval)


def _coords(geometry: Any) -> Iterator[tuple[float, float]]:
    if isinstance(geometry, Mapping):
        if geometry.get("type") == "GeometryCollection":
            for part in geometry.get("geometries") or ():
                yield from _coords(part)
        else:
            yield from _coords(geometry.get("coordinates"))
    elif isinstance(geometry, Sequence) and geometry and isinstance(geometry[0], (int, float)):
        yield float(geometry[0]), float(geometry[1])
    elif isinstance(geometry, Sequence):
        for part in geometry:
            yield from _coords(part)


def _item_bbox(item: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    bbox = item.get("bbox")
    if isinstance(bbox, Sequence) and len(bbox) in (4, 6):
        return parse_bbox(bbox)
    points = list(_coords(item.get("geometry")))
    if not points:
        return None
    xs, ys = zip(*points, strict=True)
    return (min(xs), min(ys), max(xs), max(ys))


def _spans(west: float, east: float) -> list[tuple[float, float]]:
    return [(west, east)] if west <= east else [(west, 180.0), (-180.0, east)]  # antimeridian: split in two


def _bbox_intersects(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    if a[1] > b[3] or b[1] > a[3]:
        return False
    return any(x0 <= y1 and y0 <= x1 for x0, x1 in _spans(a[0], a[2]) for y0, y1 in _spans(b[0], b[2]))


def _item_intersects(item: Mapping[str, Any], box: tuple[float, float, float, float]) -> bool:
    """Bbox pre-check, then the exact geometry (as servers do), with the query box split at the antimeridian."""
    item_box = _item_bbox(item)
    if item_box is None or not _bbox_intersects(item_box, box):
        return False
    geometry = item.get("geometry")
    if not isinstance(geometry, Mapping):
        return True
    try:
        footprint = shapely.geometry.shape(geometry)
    except (ValueError, TypeError, AttributeError, shapely.errors.ShapelyError):
        return True  # an unreadable geometry is reported elsewhere; keep the bbox answer
    return any(footprint.intersects(shapely.box(x0, box[1], x1, box[3])) for x0, x1 in _spans(box[0], box[2]))


def _item_interval(item: Mapping[str, Any]) -> tuple[datetime, datetime] | None:
    props = item.get("properties") or {}
    start = props.get("start_datetime") or props.get("datetime")
    end = props.get("end_datetime") or props.get("datetime") or start
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    return parse_datetime(start), parse_datetime(end)


def filter_items(
    items: Iterable[dict[str, Any]],
    *,
    collections: Sequence[str] | None = None,
    bbox: BBoxLike | None = None,
    datetime: DatetimeLike | None = None,
    max_cloud: float | None = None,
) -> list[dict[str, Any]]:
    """Apply the search filters client-side.

    Items without ``eo:cloud_cover`` (SAR, BigEarthNet patches) pass the cloud filter: it does not apply to them.

    Args:
        items: raw STAC item dicts.
        collections: keep items whose ``collection`` is one of these.
        bbox: keep items whose bbox (or geometry bounds) intersects this WGS84 box.
        datetime: keep items whose datetime (or start/end interval) intersects this interval.
        max_cloud: keep items with ``eo:cloud_cover <= max_cloud`` (percent).
    """
    wanted = set(collections) if collections else None
    box = parse_bbox(bbox)
    interval = parse_interval(datetime)
    kept = []
    for item in items:
        props = item.get("properties") or {}
        if wanted is not None and item.get("collection") not in wanted:
            continue
        if box is not None and not _item_intersects(item, box):
            continue
        if interval is not None:
            span = _item_interval(item)
            if span is None or (interval[0] and span[1] < interval[0]) or (interval[1] and span[0] > interval[1]):
                continue
        cloud = props.get("eo:cloud_cover")
        if max_cloud is not None and isinstance(cloud, (int, float)) and cloud > max_cloud:
            continue
        kept.append(item)
    return kept


def _item_problem(item: Any) -> str | None:
    """Why an item cannot be ingested, or ``None`` when it looks usable."""
    if not isinstance(item, dict):
        return f"expected a JSON object, got {type(item).__name__}"
    missing = [key for key in _ITEM_REQUIRED if item.get(key) in (None, "")]
    if missing:
        return f"missing required field(s) {missing}"
    props = item["properties"]
    if not isinstance(props, dict) or not (props.get("datetime") or props.get("start_datetime")):
        return "properties have neither `datetime` nor `start_datetime`"
    try:
        _item_interval(item)
    except ValueError as err:
        return f"unparseable datetime: {err}"
    return None


def _failure(item_id: str, error_class: str, message: str) -> FailureRecord:
    return FailureRecord(item_id=item_id, asset="", stage="search", error_class=error_class,
                         message=redact_text(message))


def _is_remote_source(source: str) -> bool:
    """True when ``source`` (an API URL or a catalog href) is on another machine: not local, not loopback."""
    if is_local_href(source):
        return False
    host = (urlsplit(source).hostname or "").lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name (or an s3:// bucket): remote
        return True


def _local_policy(allow_local_hrefs: bool | None, source: str) -> bool:
    return (not _is_remote_source(source)) if allow_local_hrefs is None else allow_local_hrefs


def _absolutize(item: dict[str, Any], location: str | None, allow_local: bool = True) -> dict[str, Any]:
    """Make asset hrefs absolute, against the item's absolute self link or else the file it was read from.

    Raises:
        InvalidItemError: ``allow_local`` is False (the item came from a remote catalog or API) and an asset href
            points at this machine's files (a path, ``file://`` or a GDAL ``/vsi...`` path).
    """
    base = item_base_href(item, location)
    for key, asset in (item.get("assets") or {}).items():
        if isinstance(asset, dict) and isinstance(asset.get("href"), str):
            if base:
                asset["href"] = make_absolute_href(asset["href"], base)
            if not allow_local and is_local_href(asset["href"]):
                raise InvalidItemError(
                    f"Asset `{key}` of item `{item.get('id')}` from a remote source has the local href "
                    f"{redact_href(asset['href'])!r}; refusing to read this machine's files for a remote catalog. "
                    "Pass allow_local_hrefs=True if the catalog is trusted and its files are really local."
                )
    return item


# -------------------------------------------------------------------------------------------------------- STAC API


def search_api(
    url: str,
    *,
    collections: Sequence[str] | None = None,
    bbox: BBoxLike | None = None,
    datetime: DatetimeLike | None = None,
    max_cloud: float | None = None,
    limit: int = 100,
    max_items: int | None = None,
    timeout: float | tuple[float, float] = 30.0,
    retries: int = 5,
    backoff_factor: float = 0.5,
    backoff_max: float = 30.0,
    headers: Mapping[str, str] | None = None,
    allow_local_hrefs: bool | None = None,
) -> SearchResult:
    """Search a STAC API with POST, an explicit retry policy and a cloud filter where the server supports one.

    ``eo:cloud_cover`` goes to the server as cql2-json only when the API conforms to Filter; otherwise a
    :class:`~pipeline.warnings.ServerFeatureWarning` is emitted and it is applied client-side. All filters are also
    re-applied client-side.

    Args:
        url: the API root, e.g. ``"https://planetarycomputer.microsoft.com/api/stac/v1"``.
        collections, bbox, datetime, max_cloud: search filters (see :func:`filter_items`).
        limit: page size; about 100 avoids both many round trips and 502s on huge pages.
        max_items: stop after this many (filtered) items.
        timeout: per-request timeout in seconds, or ``(connect, read)``; independent of retries.
        retries, backoff_factor, backoff_max: the retry policy (:func:`make_retry`).
        headers: extra HTTP headers (e.g. a subscription key).
        allow_local_hrefs: accept items whose asset hrefs are local paths or ``file://`` URLs; ``None`` (default)
            accepts them only from a loopback API (``127.0.0.1``, ``localhost``). A remote API cannot make the
            ingest read this machine's files: such items become failures instead.

    Raises:
        STACAPIError: the API could not be opened or a page failed after its retries.
    """
    if limit < 1 or (max_items is not None and max_items < 1):
        raise ValueError(f"limit ({limit}) and max_items ({max_items}) must be >= 1.")
    counter = RetryCounter()
    stac_io = StacApiIO(headers=dict(headers or {}), timeout=timeout,
                        max_retries=make_retry(retries, backoff_factor=backoff_factor, backoff_max=backoff_max,
                                               counter=counter))
    interval = parse_interval(datetime)
    params: dict[str, Any] = {
        "collections": list(collections) if collections else None,
        "bbox": list(parse_bbox(bbox) or ()) or None,
        "datetime": _interval_text(interval) if interval else None,
        "max_cloud": max_cloud,
        "limit": limit,
        "max_items": max_items,
    }
    result = SearchResult(items=[], source=redact_href(url), params=params)
    allow_local = _local_policy(allow_local_hrefs, url)
    try:
        # NOTE: Client.open re-applies its own timeout/headers to stac_io, so pass them again here.
        client = Client.open(url, stac_io=stac_io, timeout=timeout, headers=dict(headers or {}))
        if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
            raise STACAPIError(f"STAC API {redact_href(url)} does not conform to item-search; cannot search it.")
        search_kwargs: dict[str, Any] = {
            "collections": params["collections"], "bbox": params["bbox"], "datetime": params["datetime"],
            "limit": limit, "method": "POST",
        }
        if max_cloud is not None and client.conforms_to(ConformanceClasses.FILTER):
            search_kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud]}
            search_kwargs["filter_lang"] = "cql2-json"  # pgstac rejects cql2-text in POST bodies (422)
            result.server_filter = True
        elif max_cloud is not None:
            warnings.warn(ServerFeatureWarning(
                f"STAC API {redact_href(url)} does not conform to the Filter extension; filtering "
                f"eo:cloud_cover <= {max_cloud} client-side."), stacklevel=2)
        search = client.search(**{k: v for k, v in search_kwargs.items() if v is not None})
        followed: set[str] = set()
        for page in search.pages_as_dicts():
            result.pages += 1
            _check_next_link(page, followed, url)
            _collect(result, page.get("features") or [], f"{redact_href(url)} page {result.pages}", allow_local,
                     collections=collections, bbox=bbox, datetime=datetime, max_cloud=max_cloud)
            if max_items is not None and len(result.items) >= max_items:
                del result.items[max_items:]
                break
    except (APIError, requests.RequestException) as err:
        raise STACAPIError(
            f"STAC search at {redact_href(url)} with {params} failed after {counter.retries} retries "
            f"({counter.throttled} throttled, statuses {counter.statuses}): {redact_text(str(err))}"
        ) from err
    finally:
        result.retries, result.throttled = counter.retries, counter.throttled
    return result


def _check_next_link(page: Mapping[str, Any], followed: set[str], url: str) -> None:
    """Refuse a ``next`` link (href and body) seen before: a server that repeats it would page forever."""
    link = next((ln for ln in page.get("links") or () if isinstance(ln, dict) and ln.get("rel") == "next"), None)
    if link is None:
        return
    key = json.dumps(link, sort_keys=True, default=str)
    if key in followed:
        raise STACAPIError(
            f"STAC API {redact_href(url)} returned the same `next` link twice (page {len(followed) + 1}); it would "
            "page forever. Narrow the search (smaller bbox/datetime units) or report the paging bug to the server."
        )
    followed.add(key)


def _collect(result: SearchResult, features: Sequence[Any], where: str, allow_local: bool, **filters: Any) -> None:
    good = []
    for index, feature in enumerate(features):
        problem = _item_problem(feature)
        if problem is None:
            try:
                good.append(_absolutize(feature, None, allow_local))
                continue
            except InvalidItemError as err:
                problem = str(err)
        item_id = feature.get("id") if isinstance(feature, dict) and isinstance(feature.get("id"), str) else None
        result.failures.append(_failure(item_id or f"{where}#{index}", "InvalidItemError", f"{where}: {problem}"))
    result.items.extend(filter_items(good, **filters))


# ----------------------------------------------------------------------------------------------- static catalogs


def _read_text(href: str, storage_options: Mapping[str, Any] | None) -> str:
    with fsspec.open(href, "r", encoding="utf-8", **dict(storage_options or {})) as handle:
        return str(handle.read())


def read_catalog(
    path: str | os.PathLike[str],
    *,
    collections: Sequence[str] | None = None,
    bbox: BBoxLike | None = None,
    datetime: DatetimeLike | None = None,
    max_cloud: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
    allow_local_hrefs: bool | None = None,
) -> SearchResult:
    """Read items from a static catalog, an ItemCollection, a bare JSON array of items, one item or an ndjson snapshot.

    A ``catalog.json``/``collection.json`` is walked through its ``child`` and ``item`` links. Unreadable or invalid
    item files and items missing ``id``/``geometry``/``properties``/``assets`` become failure records.

    Args:
        path: a local path or URI (``s3://bucket/catalog.json``; read with fsspec).
        collections, bbox, datetime, max_cloud: filters applied client-side (see :func:`filter_items`).
        storage_options: fsspec options, e.g. an S3 endpoint.
        allow_local_hrefs: follow links and accept asset hrefs that are local paths or ``file://`` URLs; ``None``
            (default) allows them only in a local (or loopback) catalog, so a remote catalog cannot make the ingest
            read this machine's files: such links and items become failures.

    Raises:
        InvalidItemError: the root file itself is missing or not valid JSON / not a STAC object.
    """
    root = os.fspath(path)
    root = root if is_absolute_href(root) else os.path.abspath(root)
    allow_local = _local_policy(allow_local_hrefs, root)
    result = SearchResult(items=[], source=redact_href(root), params={
        "collections": list(collections) if collections else None, "bbox": list(bbox) if bbox else None,
        "datetime": _interval_text(iv) if (iv := parse_interval(datetime)) else None, "max_cloud": max_cloud})
    try:
        text = _read_text(root, storage_options)
    except OSError as err:
        raise InvalidItemError(
            f"Cannot read STAC catalog `{redact_href(root)}`: {redact_text(str(err))}"
        ) from err
    found: list[dict[str, Any]] = []
    if root.endswith((".ndjson", ".jsonl")):
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                _add_item(found, result, _parse(line, f"{root}:{number}", result), f"{root}:{number}", root,
                          allow_local=allow_local)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidItemError(f"STAC file `{redact_href(root)}` is not valid JSON: {err}") from err
        _walk(data, root, None, found, result, storage_options, set(), allow_local)
    result.items = filter_items(found, collections=collections, bbox=bbox, datetime=datetime, max_cloud=max_cloud)
    return result


def _parse(text: str, where: str, result: SearchResult) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        result.failures.append(_failure(where, "InvalidItemError", f"{where} is not valid JSON: {err}"))
        return None


def _add_item(found: list[dict[str, Any]], result: SearchResult, item: Any, where: str, location: str,
              collection: str | None = None, *, allow_local: bool = True) -> None:
    if item is None:
        return
    problem = _item_problem(item)
    if problem is not None:
        item_id = item.get("id") if isinstance(item, dict) else None
        result.failures.append(_failure(item_id if isinstance(item_id, str) else where, "InvalidItemError",
                                        f"{where}: {problem}"))
        return
    if collection and not item.get("collection"):
        item["collection"] = collection
    try:
        found.append(_absolutize(item, location, allow_local))
    except InvalidItemError as err:
        result.failures.append(_failure(item["id"], "InvalidItemError", f"{where}: {err}"))


def _walk(data: Any, location: str, collection: str | None, found: list[dict[str, Any]], result: SearchResult,
          storage_options: Mapping[str, Any] | None, seen: set[str], allow_local: bool) -> None:
    seen.add(location)
    if isinstance(data, list):
        for index, item in enumerate(data):
            _add_item(found, result, item, f"{location}#{index}", location, collection, allow_local=allow_local)
        return
    kind = data.get("type") if isinstance(data, dict) else None
    match kind:
        case "FeatureCollection":
            for index, item in enumerate(data.get("features") or []):
                _add_item(found, result, item, f"{location}#{index}", location, collection, allow_local=allow_local)
        case "Feature":
            _add_item(found, result, data, location, location, collection, allow_local=allow_local)
        case "Catalog" | "Collection":
            own = str(data.get("id")) if kind == "Collection" and data.get("id") else collection
            for link in data.get("links") or ():
                rel, href = (link.get("rel"), link.get("href")) if isinstance(link, dict) else (None, None)
                if rel not in ("child", "item") or not isinstance(href, str):
                    continue
                target = make_absolute_href(href, location)
                if target in seen:
                    continue
                if not allow_local and is_local_href(target):
                    seen.add(target)
                    result.failures.append(_failure(target, "InvalidItemError",
                                                    f"`{location}` links {rel} `{target}` on this machine; refusing to "
                                                    "follow a local link from a remote catalog."))
                    continue
                try:
                    text = _read_text(target, storage_options)
                except OSError as err:
                    seen.add(target)
                    result.failures.append(_failure(target, type(err).__name__, f"cannot read {rel} `{target}`: {err}"))
                    continue
                child = _parse(text, target, result)
                if child is None:
                    seen.add(target)
                elif rel == "item":
                    seen.add(target)
                    _add_item(found, result, child, target, target, own, allow_local=allow_local)
                else:
                    _walk(child, target, own, found, result, storage_options, seen, allow_local)
        case _:
            result.failures.append(_failure(location, "InvalidItemError",
                                            f"`{location}` is not a STAC Catalog, Collection, Item or item list "
                                            f"(type {kind!r})."))


# ------------------------------------------------------------------------------------------------------- snapshots


def redacted_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``item`` whose asset hrefs carry no query string or user info (signed tokens never reach disk).

    Links are kept as they are: their query strings are API parameters (tile or preview URLs), not credentials.
    """
    clean: dict[str, Any] = json.loads(json.dumps(item))
    for asset in (clean.get("assets") or {}).values():
        if isinstance(asset, dict) and isinstance(asset.get("href"), str):
            asset["href"] = redact_href(asset["href"])
    return clean


def write_snapshot(items: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], *,
                   filesystem: Any = None, s3_endpoint: str | None = None) -> str:
    """Write items as ndjson (one item per line, keys sorted, asset hrefs redacted) for :func:`read_catalog` to re-read.

    Items are streamed to the file one at a time; the file appears atomically (:func:`pipeline.uri.atomic_output`:
    a fsynced temporary renamed into place locally, one upload on S3). Asset hrefs lose query strings and user info
    (:func:`redacted_item`): signed URLs expire anyway, and a snapshot must never hold a token.

    Args:
        items: raw STAC item dicts (e.g. ``SearchResult.items``).
        path: a local path or ``s3://`` URI ending in ``.ndjson`` (or a path on ``filesystem``).
        filesystem: a pyarrow filesystem to write through (e.g. the output store's).
        s3_endpoint: S3 endpoint URL (default: ``AWS_ENDPOINT_URL``).

    Returns:
        The path written.
    """
    target = os.fspath(path)
    fs, where = resolve(target, filesystem, endpoint=s3_endpoint)
    with atomic_output(fs, where) as stream:
        for item in items:
            stream.write((json.dumps(redacted_item(item), sort_keys=True, separators=(",", ":")) + "\n").encode())
    return target


def _is_local(href: str) -> bool:
    return not is_absolute_href(href) or os.path.isabs(href)

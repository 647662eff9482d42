"""STAC search and static catalogs: real rustac API on loopback, a real throttling HTTP proxy, real files and S3."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import shapely.geometry

from pipeline.errors import InvalidItemError, STACAPIError
from pipeline.stac import filter_items, read_catalog, redacted_item, search_api, write_snapshot
from pipeline.warnings import ServerFeatureWarning

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "stac"
PC_FILES = ("sentinel-2-l2a-pc.json", "sentinel-1-rtc-pc.json", "landsat-c2-l2-pc.json")
GRD = FIXTURES / "stactools_s1_grd_S1A_IW_GRDH_1SDV_20210809T173953_20210809T174018_039156_049F13.json"


def pc_items() -> list[dict[str, Any]]:
    return [item for name in PC_FILES for item in read_catalog(FIXTURES / name).items]


@pytest.fixture
def feature_collection(tmp_path: Path) -> Path:
    """The 12 Planetary Computer fixture items as a FeatureCollection (rustac needs one, not a bare array)."""
    path = tmp_path / "items-fc.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": pc_items()}))
    return path


# ------------------------------------------------------------------------------------------------- static catalogs


@pytest.mark.parametrize(("name", "count"), [(*PC_FILES[:1], 4), (PC_FILES[1], 4), (PC_FILES[2], 4),
                                             ("odcstac_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json", 1),
                                             (GRD.name, 1)])
def test_reads_arrays_and_single_items(name: str, count: int) -> None:
    result = read_catalog(FIXTURES / name)
    assert len(result.items) == count and not result.failures


def test_relative_asset_hrefs_become_absolute_against_the_file() -> None:
    item = read_catalog(GRD).items[0]
    href = item["assets"]["vv"]["href"]
    assert href.startswith("/") and "../" not in href
    assert Path(href).parent.name.endswith(".SAFE") or ".SAFE" in href


def _write_static_catalog(root: Path, good: list[dict[str, Any]]) -> Path:
    """catalog.json -> collection.json -> item files, one of them broken JSON, one item missing its geometry."""
    coll_dir = root / "s2"
    coll_dir.mkdir(parents=True)
    item_links = []
    for item in good:
        item = json.loads(json.dumps(item))
        item.pop("collection")
        item["links"] = []
        item["assets"]["B04"]["href"] = "./B04.tif"  # relative, like a self-contained catalog
        (coll_dir / item["id"]).mkdir()
        (coll_dir / item["id"] / f"{item['id']}.json").write_text(json.dumps(item))
        item_links.append({"rel": "item", "href": f"./{item['id']}/{item['id']}.json"})
    (coll_dir / "broken.json").write_text('{"type": "Feature", "id": "broken", ')
    no_geometry = json.loads(json.dumps(good[0]))
    no_geometry["id"] = "no-geometry"
    del no_geometry["geometry"]
    (coll_dir / "no-geometry.json").write_text(json.dumps(no_geometry))
    item_links += [{"rel": "item", "href": "./broken.json"}, {"rel": "item", "href": "./no-geometry.json"},
                   {"rel": "item", "href": "./missing.json"}]
    (coll_dir / "collection.json").write_text(json.dumps(
        {"type": "Collection", "id": "sentinel-2-l2a", "stac_version": "1.0.0", "description": "d", "license": "x",
         "extent": {}, "links": [{"rel": "root", "href": "../catalog.json"}, *item_links]}))
    (root / "catalog.json").write_text(json.dumps(
        {"type": "Catalog", "id": "root", "stac_version": "1.0.0", "description": "d",
         "links": [{"rel": "self", "href": "./catalog.json"}, {"rel": "child", "href": "./s2/collection.json"},
                   {"rel": "child", "href": "./s2/collection.json"}]}))
    return root / "catalog.json"


def test_static_catalog_walk_keeps_good_items_and_records_failures(tmp_path: Path) -> None:
    good = read_catalog(FIXTURES / PC_FILES[0]).items[:3]
    result = read_catalog(_write_static_catalog(tmp_path, good))
    assert [i["id"] for i in result.items] == [i["id"] for i in good]
    assert all(i["collection"] == "sentinel-2-l2a" for i in result.items)  # inherited from the collection
    b04 = result.items[0]["assets"]["B04"]["href"]
    assert b04 == str(tmp_path / "s2" / good[0]["id"] / "B04.tif")
    failures = {f.item_id.rsplit("/", 1)[-1]: f for f in result.failures}
    assert set(failures) == {"broken.json", "no-geometry", "missing.json"}
    assert all(f.stage == "search" for f in result.failures)
    assert "not valid JSON" in failures["broken.json"].message
    assert "geometry" in failures["no-geometry"].message
    assert failures["missing.json"].error_class == "FileNotFoundError"


def test_invalid_root_raises(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(InvalidItemError, match="not valid JSON"):
        read_catalog(tmp_path / "bad.json")
    with pytest.raises(InvalidItemError, match="Cannot read"):
        read_catalog(tmp_path / "nope.json")


def test_client_side_filters() -> None:
    items = pc_items()
    assert len(filter_items(items, collections=["sentinel-1-rtc"])) == 4
    assert {i["collection"] for i in filter_items(items, datetime="2024-04-17")} == {"landsat-c2-l2"}
    assert len(filter_items(items, datetime="2024-04-18T00:00:00Z/..")) == 8
    assert len(filter_items(items, datetime=("2024-04-01", "2024-04-18"))) == 4
    clouds = [i["properties"].get("eo:cloud_cover") for i in items]
    kept = filter_items(items, max_cloud=50)
    assert len(kept) == sum(c is None or c <= 50 for c in clouds)  # SAR has no cloud cover: kept
    s2 = read_catalog(FIXTURES / PC_FILES[0]).items[0]
    _, south, east, north = s2["bbox"]
    inside = shapely.geometry.shape(s2["geometry"]).representative_point()
    assert filter_items([s2], bbox=(inside.x, inside.y, inside.x + 0.01, inside.y + 0.01)) == [s2]
    assert filter_items([s2], bbox=(east + 1, south, east + 2, north)) == []
    with pytest.raises(ValueError, match="south <= north"):
        filter_items([s2], bbox=(0, 10, 1, 5))


def test_antimeridian_bbox() -> None:
    item = {"id": "x", "bbox": [179.5, 0, 179.9, 1], "properties": {"datetime": "2024-01-01T00:00:00Z"}}
    assert filter_items([item], bbox=(170, -1, -170, 2)) == [item]
    assert filter_items([item], bbox=(-170, -1, 170, 2)) == []


def test_snapshot_round_trip(tmp_path: Path) -> None:
    items = pc_items()
    path = write_snapshot(items, tmp_path / "snap" / "search.ndjson")
    text = Path(path).read_text()
    assert text.count("\n") == len(items)
    again = read_catalog(path)
    # asset hrefs lose query strings (tokens; here also tilejson parameters), everything else round-trips
    assert again.items == [redacted_item(item) for item in items] and not again.failures
    Path(path).write_text(text + "{not json\n")
    assert len(read_catalog(path).failures) == 1


def test_catalog_on_s3(moto_s3: Any, tmp_path: Path) -> None:
    good = read_catalog(FIXTURES / PC_FILES[0]).items[:2]
    _write_static_catalog(tmp_path / "cat", good)
    root = moto_s3.upload_tree(tmp_path / "cat", "stac")
    result = read_catalog(f"{root}/catalog.json", storage_options=moto_s3.storage_options)
    assert [i["id"] for i in result.items] == [i["id"] for i in good]
    assert result.items[0]["assets"]["B04"]["href"] == f"{root}/s2/{good[0]['id']}/B04.tif"
    assert len(result.failures) == 3


def _hostile_hrefs(tmp_path: Path) -> list[dict[str, Any]]:
    """Four S1 items: one with its real https hrefs, three whose `vv` points at this machine's files."""
    items = read_catalog(FIXTURES / PC_FILES[1]).items
    secret = tmp_path / "secret.tif"
    secret.write_bytes(b"not for remote catalogs")
    for item, href in zip(items[1:], [str(secret), secret.as_uri(), "/vsicurl/http://169.254.169.254/x.tif"],
                          strict=True):
        item["assets"]["vv"]["href"] = href
    return items


@pytest.mark.parametrize(("source", "remote"), [
    ("/data/catalog.json", False), ("file:///data/catalog.json", False), ("http://127.0.0.1:8080/stac", False),
    ("http://localhost/stac", False), ("http://[::1]:9/stac", False),
    ("https://earth-search.aws.element84.com/v1", True),
    ("http://127.0.0.1.nip.io/stac", True), ("http://localhost.evil.example/stac", True), ("s3://bucket/c.json", True),
])
def test_what_counts_as_a_remote_source(source: str, remote: bool) -> None:
    from pipeline.stac import _is_remote_source

    assert _is_remote_source(source) is remote


def test_remote_catalog_cannot_point_at_local_files(moto_s3: Any, tmp_path: Path) -> None:
    items = _hostile_hrefs(tmp_path)
    local_child = tmp_path / "local-child.json"
    local_child.write_text(json.dumps({"type": "FeatureCollection", "features": items[:1]}))
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    (tmp_path / "cat" / "catalog.json").write_text(json.dumps(
        {"type": "Catalog", "id": "root", "stac_version": "1.0.0", "description": "d",
         "links": [{"rel": "child", "href": "./items.json"}, {"rel": "child", "href": local_child.as_uri()},
                   {"rel": "child", "href": str(local_child)}]}))
    root = moto_s3.upload_tree(tmp_path / "cat", "hostile")
    result = read_catalog(f"{root}/catalog.json", storage_options=moto_s3.storage_options)
    assert [i["id"] for i in result.items] == [items[0]["id"]]
    refused = [f for f in result.failures if "refusing" in f.message]
    assert len(refused) == 5 and {f.item_id for f in refused} >= {i["id"] for i in items[1:]}
    trusted = read_catalog(f"{root}/catalog.json", storage_options=moto_s3.storage_options, allow_local_hrefs=True)
    assert len(trusted.items) == 6 and not trusted.failures  # 4 + the local child's item, followed twice by href
    assert len(read_catalog(tmp_path / "cat" / "catalog.json").items) == 6  # a local catalog is trusted


# ---------------------------------------------------------------------------------------------- STAC API (rustac)


def test_search_rustac_collections_bbox_datetime_paging(stac_api: Callable[[Path], str],
                                                       feature_collection: Path) -> None:
    url = stac_api(feature_collection)
    result = search_api(url, collections=["sentinel-2-l2a"], limit=2)
    assert len(result.items) == 4 and result.pages >= 2 and not result.failures
    assert {i["collection"] for i in result.items} == {"sentinel-2-l2a"}
    everything = search_api(url, limit=5)
    assert len(everything.items) == 12 and everything.pages >= 3
    s1 = read_catalog(FIXTURES / PC_FILES[1]).items
    point = shapely.geometry.shape(s1[0]["geometry"]).representative_point()
    box = (point.x - 0.01, point.y - 0.01, point.x + 0.01, point.y + 0.01)
    near = search_api(url, bbox=box, limit=2)
    assert {i["id"] for i in near.items} == {i["id"] for i in filter_items(pc_items(), bbox=box)}
    assert near.items and all(i["collection"] == "sentinel-1-rtc" for i in near.items)
    corner = s1[0]["bbox"][:2]  # inside the bbox but outside the rotated footprint: servers and we agree on "no"
    assert filter_items(s1[:1], bbox=(corner[0], corner[1], corner[0] + 0.01, corner[1] + 0.01)) == []
    landsat = search_api(url, datetime="2024-04-17", limit=3)
    assert {i["collection"] for i in landsat.items} == {"landsat-c2-l2"} and len(landsat.items) == 4
    capped = search_api(url, limit=2, max_items=3)
    assert len(capped.items) == 3 and capped.params["max_items"] == 3


def test_search_rustac_cloud_filter_falls_back_to_client_side(stac_api: Callable[[Path], str],
                                                              feature_collection: Path) -> None:
    url = stac_api(feature_collection)
    with pytest.warns(ServerFeatureWarning, match="client-side"):
        result = search_api(url, collections=["sentinel-2-l2a", "landsat-c2-l2"], max_cloud=50, limit=3)
    assert not result.server_filter
    expected = filter_items(pc_items(), collections=["sentinel-2-l2a", "landsat-c2-l2"], max_cloud=50)
    assert {i["id"] for i in result.items} == {i["id"] for i in expected}
    assert 0 < len(expected) < 8  # the filter really removed something and kept something


class _LoopingAPI(ThreadingHTTPServer):
    """A minimal item-search API whose every page links `next` to the same page: a paging bug seen in the wild."""

    daemon_threads = True

    def __init__(self, item: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _LoopingHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.item, self.searches = item, 0


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass


class _LoopingHandler(_QuietHandler):
    server: _LoopingAPI

    def _send(self, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        url = self.server.url
        self._send({"type": "Catalog", "id": "loop", "description": "d", "stac_version": "1.0.0",
                    "conformsTo": [f"https://api.stacspec.org/v1.0.0/{c}" for c in ("core", "item-search")],
                    "links": [{"rel": "self", "href": url}, {"rel": "root", "href": url},
                              {"rel": "search", "href": f"{url}/search", "method": "POST",
                               "type": "application/geo+json"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.searches += 1
        next_link = {"rel": "next", "href": f"{self.server.url}/search", "method": "POST", "body": {"token": "same"}}
        self._send({"type": "FeatureCollection", "features": [self.server.item], "links": [next_link]})


def test_a_server_repeating_its_next_link_cannot_page_forever() -> None:
    server = _LoopingAPI(read_catalog(FIXTURES / PC_FILES[1]).items[0])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(STACAPIError, match="same `next` link twice"):
            search_api(server.url, retries=0, timeout=5.0)
        assert server.searches == 2  # the first page, and the repeat that was caught
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------- retries: a real throttling proxy


class _ThrottlingProxy(ThreadingHTTPServer):
    """Answers the first ``fail_first`` requests with ``status`` (or stalls them), then proxies to ``upstream``."""

    daemon_threads = True

    def __init__(self, upstream: str, *, fail_first: int, status: int = 429, stall_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream, self.fail_first, self.status, self.stall_s = upstream, fail_first, status, stall_s
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()


class _ProxyHandler(_QuietHandler):
    server: _ThrottlingProxy

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            number = len(self.server.requests) + 1
            failing = number <= self.server.fail_first
            self.server.requests.append((self.command, self.path, self.server.status if failing else 200))
        if failing and self.server.stall_s:
            time.sleep(self.server.stall_s)  # longer than the client's read timeout, which has given up by now
            return
        if failing:
            self.send_response(self.server.status)
            if self.server.status == 429:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        request = urllib.request.Request(self.server.upstream + self.path, data=body or None, method=self.command,
                                         headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
        with urllib.request.urlopen(request, timeout=10) as response:
            status, payload = response.status, response.read()
        payload = payload.replace(self.server.upstream.encode(), self.server.url.encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def proxy_factory(
    stac_api: Callable[[Path], str], feature_collection: Path
) -> Iterator[Callable[..., _ThrottlingProxy]]:
    servers: list[_ThrottlingProxy] = []
    upstream = stac_api(feature_collection)

    def start(**kwargs: Any) -> _ThrottlingProxy:
        server = _ThrottlingProxy(upstream, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_search_errors_carry_no_credentials() -> None:
    url = "http://user:PASSWORD@127.0.0.1:9/stac?token=SECRET"  # port 9 (discard): nothing listens
    with pytest.raises(STACAPIError) as info:
        search_api(url, retries=0, timeout=2.0)
    message = str(info.value)
    assert "127.0.0.1:9/stac" in message and "SECRET" not in message and "PASSWORD" not in message


def test_api_local_hrefs_allowed_only_from_loopback_or_when_asked(stac_api: Callable[[Path], str],
                                                                  tmp_path: Path) -> None:
    items = _hostile_hrefs(tmp_path)
    path = tmp_path / "fc.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    url = stac_api(path)
    assert len(search_api(url, limit=10).items) == 4  # a loopback API serves this machine's own files
    strict = search_api(url, limit=10, allow_local_hrefs=False)
    assert [i["id"] for i in strict.items] == [items[0]["id"]]
    assert sorted(f.item_id for f in strict.failures) == sorted(i["id"] for i in items[1:])
    assert all("refusing to read this machine's files" in f.message for f in strict.failures)


@pytest.mark.parametrize("status", [429, 503])
def test_throttled_requests_are_retried_and_counted(proxy_factory: Callable[..., _ThrottlingProxy],
                                                    status: int) -> None:
    proxy = proxy_factory(fail_first=3, status=status)
    result = search_api(proxy.url, collections=["sentinel-1-rtc"], limit=2, retries=5, backoff_factor=0.01)
    assert len(result.items) == 4 and result.pages == 2
    assert result.throttled == 3 and result.retries == 3
    assert [s for _, _, s in proxy.requests[:3]] == [status] * 3
    assert any(method == "POST" and path.startswith("/search") for method, path, _ in proxy.requests)
    assert all(i["assets"]["vv"]["href"].startswith("https://") for i in result.items)


def test_exhausted_retries_raise_stac_api_error(proxy_factory: Callable[..., _ThrottlingProxy]) -> None:
    proxy = proxy_factory(fail_first=100, status=503)
    with pytest.raises(STACAPIError, match=r"after 2 retries \(3 throttled"):
        search_api(proxy.url, retries=2, backoff_factor=0.01)
    assert len(proxy.requests) == 3


def test_read_timeout_is_separate_from_retries(proxy_factory: Callable[..., _ThrottlingProxy]) -> None:
    proxy = proxy_factory(fail_first=1, stall_s=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ServerFeatureWarning)
        result = search_api(proxy.url, collections=["landsat-c2-l2"], timeout=(2.0, 0.3), retries=2,
                            backoff_factor=0.01)
    assert len(result.items) == 4 and result.retries == 1 and result.throttled == 0
    with pytest.raises(STACAPIError, match="after 0 retries"):
        search_api(proxy_factory(fail_first=5, stall_s=1.0).url, timeout=(2.0, 0.3), retries=0)

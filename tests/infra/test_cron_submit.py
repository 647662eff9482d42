"""infra/cron_submit.py, the fallback scheduler's pod, against a loopback HTTP endpoint that answers like the
Kubernetes API server for RayJobs (create: 201 or 409, get: the object with the status KubeRay writes). No real API
server can run here; what the script sends is checked strictly against the RayJob CRD."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from infra import cron_submit
from infra.validate import validate_custom_resource
from tests.infra.conftest import INFRA

TEMPLATE = INFRA / "k8s" / "rayjob-ingest.yaml"
TOKEN = "test-service-account-token"
PREFIX = "/apis/ray.io/v1/namespaces/rsvheat/rayjobs"


@dataclass
class FakeRayJobApi:
    """RayJob objects by name, the statuses each GET walks through, and every request seen."""

    statuses: list[dict[str, str]]
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    gets: int = 0


@pytest.fixture
def api() -> Iterator[tuple[str, FakeRayJobApi]]:
    state = FakeRayJobApi(statuses=[])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def _answer(self, code: int, body: Mapping[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            state.requests.append(("POST", self.path, self.headers.get("Authorization")))
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != PREFIX:
                return self._answer(404, {"message": f"no route {self.path}"})
            name = body["metadata"]["name"]
            if name in state.objects:
                return self._answer(
                    409, {"message": f'rayjobs.ray.io "{name}" already exists', "reason": "AlreadyExists"}
                )
            state.objects[name] = body
            return self._answer(201, body)

        def do_GET(self) -> None:
            state.requests.append(("GET", self.path, self.headers.get("Authorization")))
            name = self.path.removeprefix(PREFIX + "/")
            if name not in state.objects:
                return self._answer(404, {"message": "not found"})
            status = state.statuses[min(state.gets, len(state.statuses) - 1)]
            state.gets += 1
            return self._answer(200, {**state.objects[name], "status": status})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def run(url: str, tmp_path: Path, **environ: str) -> int:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    env = {
        "JOB_NAME": "rsvheat-ingest-cron-29412360",
        "JOB_UID": "6f1c2a4e-0000-4000-8000-000000000001",
        "POD_NAMESPACE": "rsvheat",
        **environ,
    }
    return cron_submit.main(
        [
            "--template",
            str(TEMPLATE),
            "--api-server",
            url,
            "--token-file",
            str(token),
            "--ca-file",
            str(tmp_path / "absent.crt"),
            "--poll-seconds",
            "0.01",
        ],
        environ=env,
    )


RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}


def test_one_slot_creates_one_valid_rayjob_and_waits_for_success(
    api: tuple[str, FakeRayJobApi], tmp_path: Path, crd_schemas: Mapping[str, Mapping[str, Any]]
) -> None:
    url, state = api
    state.statuses = [
        {"jobDeploymentStatus": "Initializing"},
        RUNNING,
        RUNNING,
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
    ]
    assert run(url, tmp_path) == 0
    ((name, body),) = state.objects.items()
    assert name == "rsvheat-ingest-cron-29412360" == body["spec"]["jobId"]
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": "6f1c2a4e-0000-4000-8000-000000000001"}
    ]
    assert validate_custom_resource(body, crd_schemas["RayJob"]) == []
    assert {auth for _, _, auth in state.requests} == {f"Bearer {TOKEN}"}
    assert state.gets == 4


def test_a_retried_pod_waits_for_the_existing_rayjob_instead_of_submitting_again(
    api: tuple[str, FakeRayJobApi], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = api
    state.statuses = [{"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}]
    assert run(url, tmp_path) == 0
    assert run(url, tmp_path) == 0
    assert len(state.objects) == 1 and [m for m, _, _ in state.requests].count("POST") == 2
    assert "already submitted for this slot" in capsys.readouterr().out


@pytest.mark.parametrize(
    "final",
    [
        {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"},
        {"jobDeploymentStatus": "Running", "jobStatus": "STOPPED"},
        {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "message": "activeDeadlineSeconds"},
    ],
    ids=["job-failed", "job-stopped-cr-still-running", "deadline"],
)
def test_a_failed_job_exits_1(
    api: tuple[str, FakeRayJobApi], tmp_path: Path, final: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = api
    state.statuses = [RUNNING, final]
    assert run(url, tmp_path) == 1
    assert TOKEN not in capsys.readouterr().out


def test_missing_downward_api_values_exit_2(
    api: tuple[str, FakeRayJobApi], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = api
    assert run(url, tmp_path, JOB_UID="") == 2
    assert "--job-uid" in capsys.readouterr().err and state.requests == []


def test_an_api_refusal_exits_1_with_the_server_message(
    api: tuple[str, FakeRayJobApi], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = api
    assert run(url, tmp_path, POD_NAMESPACE="other") == 1
    assert "HTTP 404" in capsys.readouterr().err and state.objects == {}


def test_the_template_must_be_a_rayjob() -> None:
    with pytest.raises(ValueError, match=r"ray\.io/v1 RayJob"):
        cron_submit.build_rayjob({"apiVersion": "batch/v1", "kind": "Job"}, "a", "rsvheat", "a", "uid")

"""Create one RayJob per CronJob slot and wait for its end: the scheduler of infra/k8s/cronjob-ingest.yaml.

    python -m infra.cron_submit --template /etc/rsvheat/rayjob.yaml      # inside the CronJob's pod

The RayJob's name and Ray submission id are the CronJob Job's name (`<cronjob>-<minute of the slot>`), so each slot
submits exactly once: a retried pod gets HTTP 409 from the API server and waits for the RayJob that exists. The Job
owns the RayJob, so the CronJob's history limits delete old RayJobs (and KubeRay their clusters). Exit status: 0 when
the Ray job SUCCEEDED, 1 when it failed, stopped or its deployment failed (e.g. a deadline), 2 for bad input.
The API server is reached with the pod's ServiceAccount token (docs/infra.md); nothing here logs the token.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from infra.errors import SubmitError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SUCCEEDED = "SUCCEEDED"
FAILED_JOB_STATUSES = {"FAILED", "STOPPED"}
FAILED_DEPLOYMENT_STATUSES = {"Failed", "ValidationFailed"}


def build_rayjob(
    template: Mapping[str, Any], name: str, namespace: str, owner_name: str, owner_uid: str
) -> dict[str, Any]:
    """The template with this slot's name, namespace, submission id and the CronJob's Job as owner."""
    if template.get("kind") != "RayJob" or template.get("apiVersion") != "ray.io/v1":
        raise ValueError(
            f"the template must be a ray.io/v1 RayJob, got {template.get('apiVersion')}/{template.get('kind')}"
        )
    body = copy.deepcopy(dict(template))
    metadata = body.setdefault("metadata", {})
    metadata["name"] = name
    metadata["namespace"] = namespace
    metadata.setdefault("labels", {})["rsvheat.io/scheduled-by"] = owner_name
    metadata["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": owner_name, "uid": owner_uid}]
    body.setdefault("spec", {})["jobId"] = name
    return body


class ApiClient:
    """Just enough of the Kubernetes REST API for RayJobs: create and get, authenticated by a bearer token."""

    def __init__(self, server: str, token: str, ca_file: str | None) -> None:
        self.server = server.rstrip("/")
        self._token = token
        self._context = ssl.create_default_context(cafile=ca_file) if server.startswith("https") else None

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.server}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._context) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            try:
                return error.code, json.loads(detail)
            except json.JSONDecodeError:
                return error.code, {"message": detail}

    def create_rayjob(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """True when created, False when a RayJob of that name already exists (this slot was submitted)."""
        status, answer = self._request("POST", f"/apis/ray.io/v1/namespaces/{namespace}/rayjobs", body)
        if status in (200, 201):
            return True
        if status == 409:
            return False
        raise SubmitError(f"creating RayJob {namespace}/{body['metadata']['name']}", status, answer.get("message"))

    def get_rayjob(self, namespace: str, name: str) -> dict[str, Any]:
        """The RayJob object, status included."""
        status, answer = self._request("GET", f"/apis/ray.io/v1/namespaces/{namespace}/rayjobs/{name}")
        if status != 200:
            raise SubmitError(f"reading RayJob {namespace}/{name}", status, answer.get("message"))
        return answer


def outcome(rayjob: Mapping[str, Any]) -> int | None:
    """0 succeeded, 1 failed, None still running; the Ray job status decides, not only the CR's (kuberay#3553)."""
    status = rayjob.get("status") or {}
    if status.get("jobStatus") == SUCCEEDED:
        return 0
    if (
        status.get("jobStatus") in FAILED_JOB_STATUSES
        or status.get("jobDeploymentStatus") in FAILED_DEPLOYMENT_STATUSES
    ):
        return 1
    return None


def wait_for(
    client: ApiClient,
    namespace: str,
    name: str,
    poll_seconds: float,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll the RayJob until `outcome` decides, logging each status change; returns the exit status."""
    last: tuple[Any, Any] | None = None
    while True:
        status = client.get_rayjob(namespace, name).get("status") or {}
        current = (status.get("jobDeploymentStatus"), status.get("jobStatus"))
        if current != last:
            log(
                f"RayJob {namespace}/{name}: deployment {current[0] or '-'}, job {current[1] or '-'}"
                + (f" ({status['reason']}: {status.get('message', '')})" if status.get("reason") else "")
            )
            last = current
        result = outcome({"status": status})
        if result is not None:
            return result
        sleep(poll_seconds)


def _service_account_file(name: str) -> Path:
    return SERVICE_ACCOUNT / name


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", required=True, type=Path, help="RayJob YAML to instantiate")
    parser.add_argument("--job-name", default=env.get("JOB_NAME"), help="the CronJob's Job name (default $JOB_NAME)")
    parser.add_argument("--job-uid", default=env.get("JOB_UID"), help="the Job's uid (default $JOB_UID)")
    parser.add_argument("--namespace", default=env.get("POD_NAMESPACE"), help="default $POD_NAMESPACE")
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    parser.add_argument("--api-server", default=f"https://{host}:{port}" if host else None)
    parser.add_argument("--token-file", type=Path, default=_service_account_file("token"))
    parser.add_argument("--ca-file", type=Path, default=_service_account_file("ca.crt"))
    parser.add_argument("--poll-seconds", type=float, default=30.0)
    parser.add_argument("--no-wait", action="store_true", help="exit once the RayJob exists")
    args = parser.parse_args(argv)
    missing = [
        flag
        for flag, value in (
            ("--job-name", args.job_name),
            ("--job-uid", args.job_uid),
            ("--namespace", args.namespace),
            ("--api-server", args.api_server),
        )
        if not value
    ]
    if missing:
        print(
            f"cron_submit: missing {', '.join(missing)} (set by the CronJob's downward API env in the pod)",
            file=sys.stderr,
        )
        return 2
    try:
        template = yaml.safe_load(args.template.read_text())
        body = build_rayjob(template, args.job_name, args.namespace, args.job_name, args.job_uid)
        token = args.token_file.read_text().strip()
    except (OSError, yaml.YAMLError, ValueError, AttributeError) as error:
        print(f"cron_submit: bad input: {error}", file=sys.stderr)
        return 2
    ca_file = str(args.ca_file) if args.ca_file.exists() else None
    client = ApiClient(args.api_server, token, ca_file)
    try:
        created = client.create_rayjob(args.namespace, body)
        print(
            f"RayJob {args.namespace}/{args.job_name}: {'created' if created else 'already submitted for this slot'}",
            flush=True,
        )
        if args.no_wait:
            return 0
        return wait_for(client, args.namespace, args.job_name, args.poll_seconds, lambda line: print(line, flush=True))
    except (SubmitError, OSError) as error:
        print(f"cron_submit: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The KubeRay operator's own admission rules that the CRD schema does not carry (docs/infra.md).

The operator rejects these when it reconciles (ray-operator/controllers/ray/utils/validation.go at the commit named in
the CRDs' SOURCE.txt), long after `kubectl apply` succeeded, so they are checked here before apply. Only the rules that
apply to fields rsvheat's manifests use, or could plausibly use, are implemented; each message says what to change.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from typing import Any

import yaml

from infra.strict_schema import Violation

# Name limits: RayCluster 53, RayJob 53 - 6 and RayCronJob 47 - 11, so generated child names stay valid.
MAX_NAME_LENGTH = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 36}
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_TOKEN_AUTH_MIN_RAY = (2, 52, 0)
_RAY_START_RESOURCE_KEYS = ("num-cpus", "num-gpus", "memory", "resources")
_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_CRON_NAMES = {
    3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}
_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def check_name(kind: str, name: Any, path: str = "metadata.name") -> list[Violation]:
    """A KubeRay object name: a DNS-1035 label within the kind's length limit."""
    if kind not in MAX_NAME_LENGTH:
        return [Violation("kind", f"expected one of {sorted(MAX_NAME_LENGTH)}, got {kind!r}")]
    if not isinstance(name, str) or not name:
        return [Violation(path, f"a {kind} needs a metadata.name")]
    out = []
    if len(name) > MAX_NAME_LENGTH[kind]:
        out.append(
            Violation(path, f"{name!r} is {len(name)} characters; a {kind} name takes at most {MAX_NAME_LENGTH[kind]}")
        )
    if not _DNS1035_LABEL.match(name):
        out.append(
            Violation(
                path, f"{name!r} is not a DNS-1035 label (lowercase letters, digits, '-', starting with a letter)"
            )
        )
    return out


def _version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(part or 0) for part in match.groups()) if match else None


def _containers(group: Mapping[str, Any]) -> list[Any]:
    return group.get("template", {}).get("spec", {}).get("containers") or []


def _check_group_resources(group: Mapping[str, Any], label: str, path: str) -> list[Violation]:
    start = group.get("rayStartParams") or {}
    out = []
    if any(start.get(key) for key in _RAY_START_RESOURCE_KEYS) and group.get("resources"):
        out.append(Violation(path, f"{label}: set resources in rayStartParams or in resources, not both"))
    if "labels" in start:
        out.append(Violation(f"{path}.rayStartParams.labels", f"{label}: use the group's top-level labels field"))
    return out


def check_raycluster_spec(spec: Mapping[str, Any], path: str = "spec") -> list[Violation]:
    """The operator's RayCluster spec rules: containers, replica bounds, resources, auth version, autoscaler v2."""
    out: list[Violation] = []
    head = spec.get("headGroupSpec") or {}
    if not _containers(head):
        out.append(Violation(f"{path}.headGroupSpec.template.spec.containers", "the head needs at least one container"))
    out += _check_group_resources(head, "head group", f"{path}.headGroupSpec")
    autoscaling = spec.get("enableInTreeAutoscaling") is True
    autoscaler_v2 = autoscaling and (spec.get("autoscalerOptions") or {}).get("version") == "v2"
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        where = f"{path}.workerGroupSpecs[{index}]"
        name = group.get("groupName", f"#{index}")
        if not _containers(group):
            out.append(Violation(f"{where}.template.spec.containers", f"worker group {name} needs a container"))
        low, high, replicas = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas")
        if not autoscaling and (low is None or high is None):
            out.append(Violation(where, f"worker group {name}: set minReplicas and maxReplicas without autoscaling"))
        if isinstance(low, int) and isinstance(high, int) and low > high:
            out.append(Violation(where, f"worker group {name}: minReplicas {low} > maxReplicas {high}"))
        if isinstance(replicas, int) and isinstance(low, int) and isinstance(high, int) and not low <= replicas <= high:
            out.append(
                Violation(f"{where}.replicas", f"worker group {name}: replicas {replicas} outside [{low}, {high}]")
            )
        out += _check_group_resources(group, f"worker group {name}", where)
        if group.get("idleTimeoutSeconds") is not None and not autoscaler_v2:
            out.append(Violation(f"{where}.idleTimeoutSeconds", "needs autoscalerOptions.version: v2"))
        if group.get("suspend") and autoscaling:
            out.append(Violation(f"{where}.suspend", "a worker group cannot be suspended with the autoscaler on"))
        restart = group.get("template", {}).get("spec", {}).get("restartPolicy")
        if autoscaler_v2 and restart not in (None, "Never"):
            out.append(Violation(f"{where}.template.spec.restartPolicy", "must be Never or unset with autoscaler v2"))
    auth = spec.get("authOptions") or {}
    if auth.get("mode") == "token":
        version = _version_tuple(str(spec.get("rayVersion", "")))
        if version is None:
            out.append(Violation(f"{path}.rayVersion", "token auth needs rayVersion set (Ray 2.52.0 or later)"))
        elif version < _TOKEN_AUTH_MIN_RAY:
            out.append(
                Violation(f"{path}.rayVersion", f"token auth needs Ray 2.52.0 or later, got {spec['rayVersion']}")
            )
    elif auth.get("enableK8sTokenAuth"):
        out.append(Violation(f"{path}.authOptions", "enableK8sTokenAuth needs mode: token"))
    if spec.get("networkPolicy") is not None:
        out.append(Violation(f"{path}.networkPolicy", "needs the alpha RayClusterNetworkPolicy feature gate; left out"))
    return out


def check_rayjob_spec(spec: Mapping[str, Any], path: str = "spec") -> list[Violation]:
    """The operator's RayJob spec rules: cluster source, deadlines, TTL and deletion strategy, runtime env YAML."""
    out: list[Violation] = []
    selector = spec.get("clusterSelector") or {}
    cluster = spec.get("rayClusterSpec")
    shutdown = spec.get("shutdownAfterJobFinishes") is True
    if cluster is None and not selector:
        out.append(Violation(path, "set rayClusterSpec or clusterSelector"))
    if selector and not selector.get("ray.io/cluster"):
        out.append(Violation(f"{path}.clusterSelector", "needs the ray.io/cluster key naming the RayCluster"))
    if selector and (spec.get("backoffLimit") or 0) > 0:
        out.append(Violation(f"{path}.backoffLimit", "is incompatible with clusterSelector"))
    if spec.get("suspend") and not shutdown:
        out.append(Violation(f"{path}.suspend", "a RayJob without shutdownAfterJobFinishes cannot be suspended"))
    if (spec.get("ttlSecondsAfterFinished") or 0) > 0 and not shutdown:
        out.append(Violation(f"{path}.ttlSecondsAfterFinished", "needs shutdownAfterJobFinishes: true"))
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if key in spec and spec[key] <= 0:
            out.append(Violation(f"{path}.{key}", "must be a positive integer"))
    if (spec.get("backoffLimit") or 0) < 0:
        out.append(Violation(f"{path}.backoffLimit", "must not be negative"))
    if spec.get("submissionMode") == "InteractiveMode" and (spec.get("backoffLimit") or 0) > 0:
        out.append(Violation(f"{path}.backoffLimit", "is incompatible with InteractiveMode"))
    out += _check_deletion_strategy(spec, path, bool(selector))
    try:
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    except yaml.YAMLError as error:
        out.append(Violation(f"{path}.runtimeEnvYAML", f"is not valid YAML: {error}"))
    else:
        if runtime_env is not None and not isinstance(runtime_env, dict):
            out.append(Violation(f"{path}.runtimeEnvYAML", f"must be a YAML mapping, got {type(runtime_env).__name__}"))
    if cluster is not None:
        if (cluster.get("authOptions") or {}).get("enableK8sTokenAuth"):
            out.append(Violation(f"{path}.rayClusterSpec.authOptions", "K8s token auth is not supported for RayJob"))
        out += check_raycluster_spec(cluster, f"{path}.rayClusterSpec")
    return out


def _check_deletion_strategy(spec: Mapping[str, Any], path: str, selector: bool) -> list[Violation]:
    strategy = spec.get("deletionStrategy")
    if strategy is None:
        return []
    where = f"{path}.deletionStrategy"
    rules = strategy.get("deletionRules") or []
    out = []
    if rules and spec.get("shutdownAfterJobFinishes"):
        out.append(Violation(where, "deletionRules and shutdownAfterJobFinishes are mutually exclusive"))
    autoscaling = (spec.get("rayClusterSpec") or {}).get("enableInTreeAutoscaling") is True
    ttls: dict[tuple[str, str], dict[str, int]] = {}
    for index, rule in enumerate(rules):
        policy, condition = rule.get("policy"), rule.get("condition") or {}
        if selector and policy in ("DeleteCluster", "DeleteWorkers"):
            out.append(Violation(f"{where}.deletionRules[{index}]", f"{policy} is not supported with clusterSelector"))
        if autoscaling and policy == "DeleteWorkers":
            out.append(Violation(f"{where}.deletionRules[{index}]", "DeleteWorkers is not supported with autoscaling"))
        key = (
            ("jobStatus", condition["jobStatus"])
            if "jobStatus" in condition
            else ("jobDeploymentStatus", str(condition.get("jobDeploymentStatus")))
        )
        by_policy = ttls.setdefault(key, {})
        if policy in by_policy:
            out.append(
                Violation(f"{where}.deletionRules[{index}]", f"duplicate rule for {policy} on {key[0]} {key[1]}")
            )
        by_policy[str(policy)] = int(condition.get("ttlSeconds", 0))
    for (field, status), by_policy in ttls.items():
        order = [by_policy[name] for name in ("DeleteWorkers", "DeleteCluster", "DeleteSelf") if name in by_policy]
        if order != sorted(order):
            out.append(Violation(where, f"for {field} {status} the TTLs must not decrease Workers <= Cluster <= Self"))
    for side in ("onSuccess", "onFailure"):
        policy = (strategy.get(side) or {}).get("policy")
        if spec.get("shutdownAfterJobFinishes") and policy == "DeleteNone":
            out.append(Violation(f"{where}.{side}.policy", "DeleteNone contradicts shutdownAfterJobFinishes: true"))
    return out


def check_cron_schedule(schedule: Any, path: str = "spec.schedule") -> list[Violation]:
    """A standard five-field cron schedule or descriptor (what KubeRay's robfig/cron ParseStandard accepts)."""
    if not isinstance(schedule, str) or not schedule.strip():
        return [Violation(path, "needs a cron schedule such as '0 */6 * * *'")]
    if "TZ" in schedule:
        return [Violation(path, "TZ/CRON_TZ are not allowed in the schedule; use spec.timeZone")]
    text = schedule.strip().lower()
    if text.startswith("@"):
        if text in _CRON_DESCRIPTORS or re.fullmatch(r"@every \d+[smh]", text):
            return []
        return [Violation(path, f"unknown cron descriptor {schedule!r}")]
    fields = text.split()
    if len(fields) != len(_CRON_FIELDS):
        return [Violation(path, f"{schedule!r} has {len(fields)} fields; a standard cron schedule has 5")]
    out = []
    for index, (field, (label, low, high)) in enumerate(zip(fields, _CRON_FIELDS, strict=True)):
        if not _cron_field_ok(field, low, high, _CRON_NAMES.get(index, [])):
            out.append(Violation(path, f"{schedule!r}: the {label} field {field!r} is not valid in {low}-{high}"))
    return out


def _cron_field_ok(field: str, low: int, high: int, names: list[str]) -> bool:
    def value(text: str) -> int | None:
        if text in names:
            return names.index(text) + (1 if low == 1 else 0)
        return int(text) if text.isdigit() and low <= int(text) <= high else None

    for part in field.split(","):
        span, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if span in ("*", "?"):
            continue
        start, _, end = span.partition("-")
        first, last = value(start), value(end) if end else None
        if first is None or (end and (last is None or last < first)):
            return False
    return True


def check_raycronjob(document: Mapping[str, Any]) -> list[Violation]:
    """The operator's RayCronJob rules: name length, schedule, time zone, then the job template as a RayJob spec."""
    spec = document.get("spec") or {}
    out = check_cron_schedule(spec.get("schedule"))
    zone = spec.get("timeZone")
    if zone is not None:
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            out.append(Violation("spec.timeZone", f"{zone!r} is not an IANA time zone"))
    template = spec.get("jobTemplate") or {}
    if template.get("jobId") and template.get("clusterSelector"):
        out.append(
            Violation("spec.jobTemplate.jobId", "a fixed jobId on a shared cluster makes the second run collide")
        )
    return out + check_rayjob_spec(template, "spec.jobTemplate")

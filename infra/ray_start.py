"""`rayStartParams` keys checked against the installed Ray's own `ray start` options (docs/infra.md).

KubeRay turns every `rayStartParams` entry into `--key=value` on the pod's `ray start` command line, and the CRD takes
any string map there, so a misspelled option (`num-cpu`) only surfaces as a crash-looping pod. The option list comes
from Ray's CLI definition (`ray.scripts.scripts.start`), so it follows the pinned Ray version.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from infra.strict_schema import Violation


@cache
def ray_start_options() -> frozenset[str]:
    """Every long option of `ray start`, without the leading dashes."""
    from ray.scripts.scripts import start

    return frozenset(option[2:] for parameter in start.params for option in parameter.opts if option.startswith("--"))


def _groups(spec: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield f"{path}.headGroupSpec", spec.get("headGroupSpec") or {}
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        yield f"{path}.workerGroupSpecs[{index}]", group


def check_ray_start_params(cluster_spec: Mapping[str, Any], path: str) -> list[Violation]:
    """Unknown `ray start` options in the head and worker groups of one RayCluster spec."""
    known = ray_start_options()
    out = []
    for where, group in _groups(cluster_spec, path):
        for key in group.get("rayStartParams") or {}:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                out.append(Violation(f"{where}.rayStartParams.{key}", f"not a `ray start` option{hint}"))
    return out


def cluster_specs(document: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The RayCluster specs inside a RayCluster, RayJob or RayCronJob document, with their paths."""
    spec = document.get("spec") or {}
    kind = document.get("kind")
    if kind == "RayCluster":
        yield "spec", spec
    elif kind == "RayJob" and spec.get("rayClusterSpec"):
        yield "spec.rayClusterSpec", spec["rayClusterSpec"]
    elif kind == "RayCronJob" and (spec.get("jobTemplate") or {}).get("rayClusterSpec"):
        yield "spec.jobTemplate.rayClusterSpec", spec["jobTemplate"]["rayClusterSpec"]

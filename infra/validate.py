"""Validate rsvheat's Kubernetes manifests offline before `kubectl apply` (docs/infra.md).

    python -m infra.validate --crds DIR infra/k8s/*.yaml

KubeRay kinds are walked strictly against the CRDs' `v1` `openAPIV3Schema` found in DIR (unknown keys, types, CEL
rules; infra/strict_schema.py), then checked against the operator's admission rules (infra/kuberay_rules.py) and
their `rayStartParams` against the installed Ray's `ray start` options (infra/ray_start.py); a RayCronJob's
`--schedule-slot every:PERIOD` must be its schedule's period in UTC (infra/slot_rules.py).
Built-in kinds (CronJob, Role, ...) go through `kubernetes-validate --strict` when it is installed. Exit status 0 when
every document is valid, 1 when any is not, 2 for a usage error (no CRD folder, unreadable file).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from infra import kuberay_rules, ray_start, slot_rules
from infra.errors import ManifestError, SchemaDirectoryError
from infra.strict_schema import Violation, walk

DEFAULT_KUBERNETES_VERSION = "1.31.0"
# The CRDs are megabytes of YAML: libyaml's loader reads them in a fraction of the pure-Python time.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_META_KEYS = {"name", "generateName", "namespace", "labels", "annotations", "ownerReferences"}
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


def load_crd_schemas(directory: str | Path) -> dict[str, Mapping[str, Any]]:
    """`kind -> v1 openAPIV3Schema` for every CustomResourceDefinition in the YAML files of `directory`."""
    folder = Path(directory)
    if not folder.is_dir():
        raise SchemaDirectoryError(folder, "is not a directory")
    schemas: dict[str, Mapping[str, Any]] = {}
    for path in sorted(folder.glob("*.y*ml")):
        for document in yaml.load_all(path.read_text(), Loader=_LOADER):
            for crd in document.get("items", [document]) if isinstance(document, dict) else []:
                if crd.get("kind") != "CustomResourceDefinition":
                    continue
                for version in crd["spec"]["versions"]:
                    if version["name"] == "v1":
                        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    if not schemas:
        raise SchemaDirectoryError(folder, "holds no CustomResourceDefinition with a v1 version")
    return schemas


def check_object_meta(metadata: Any, path: str = "metadata") -> list[Violation]:
    """The parts of ObjectMeta a manifest may set, strictly: known keys, string maps, label key syntax."""
    if not isinstance(metadata, dict):
        return [Violation(path, "metadata must be an object with at least a name")]
    out = [
        Violation(f"{path}.{key}", f"unknown or server-set metadata field {key!r}")
        for key in metadata
        if key not in _META_KEYS
    ]
    for field in ("labels", "annotations"):
        values = metadata.get(field, {})
        if not isinstance(values, dict):
            out.append(Violation(f"{path}.{field}", "must be a map of strings"))
            continue
        for key, value in values.items():
            if not isinstance(value, str):
                out.append(Violation(f"{path}.{field}.{key}", f"values must be strings, got {value!r} (quote it)"))
            if field == "labels" and not _LABEL_KEY.fullmatch(str(key)):
                out.append(Violation(f"{path}.labels.{key}", "is not a valid label key"))
    return out


def validate_custom_resource(document: Mapping[str, Any], schema: Mapping[str, Any]) -> list[Violation]:
    """A KubeRay object against its CRD schema (strict walk + CEL) and the operator's admission rules."""
    kind = str(document.get("kind"))
    out = check_object_meta(document.get("metadata"))
    body = {key: value for key, value in document.items() if key != "metadata"}
    root = {**schema, "properties": {k: v for k, v in schema.get("properties", {}).items() if k != "metadata"}}
    out += walk(body, root)
    if document.get("apiVersion") != "ray.io/v1":
        out.append(Violation("apiVersion", f"expected ray.io/v1 for {kind}, got {document.get('apiVersion')!r}"))
    if "status" in document:
        out.append(Violation("status", "a manifest must not set status"))
    out += kuberay_rules.check_name(kind, (document.get("metadata") or {}).get("name"))
    spec = document.get("spec") or {}
    if kind == "RayCluster":
        out += kuberay_rules.check_raycluster_spec(spec)
    elif kind == "RayJob":
        out += kuberay_rules.check_rayjob_spec(spec)
    elif kind == "RayCronJob":
        out += kuberay_rules.check_raycronjob(document)
        template = spec.get("jobTemplate") or {}
        out += slot_rules.check_schedule_slot(
            spec.get("schedule"), spec.get("timeZone"), template.get("entrypoint"), "spec.jobTemplate.entrypoint"
        )
    for path, cluster in ray_start.cluster_specs(document):
        out += ray_start.check_ray_start_params(cluster, path)
    return out


def validate_builtin(
    document: Mapping[str, Any], kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
) -> list[Violation]:
    """A built-in Kubernetes object through kubernetes-validate's strict schemas (unknown keys rejected)."""
    try:
        import kubernetes_validate
    except ImportError:
        return [Violation("", "kubernetes-validate is not installed: pip install -c constraints.txt '.[test]'")]
    try:
        kubernetes_validate.validate(dict(document), kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        location = ".".join(str(part) for part in error.path)
        return [Violation(location, error.message)]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [Violation("kind", str(error))]
    return []


def validate_documents(
    documents: Sequence[Any],
    schemas: Mapping[str, Mapping[str, Any]],
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
) -> list[Violation]:
    """Every violation across the documents of one file, prefixed with the document index and kind."""
    out: list[Violation] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict) or "kind" not in document:
            out.append(Violation(f"[{index}]", "not a Kubernetes object (no kind)"))
            continue
        kind = document["kind"]
        if str(document.get("apiVersion", "")).startswith("ray.io/"):
            if kind not in schemas:
                raise SchemaDirectoryError("--crds", f"has no CRD for {kind}")
            found = validate_custom_resource(document, schemas[kind])
        else:
            found = validate_builtin(document, kubernetes_version)
        out += [Violation(f"[{index}] {kind} {v.path}".rstrip(), v.message) for v in found]
    return out


def validate_file(
    path: str | Path, schemas: Mapping[str, Mapping[str, Any]], kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
) -> None:
    """Raise `ManifestError` listing every violation in the multi-document YAML file at `path`."""
    violations = validate_documents(list(yaml.safe_load_all(Path(path).read_text())), schemas, kubernetes_version)
    if violations:
        raise ManifestError(path, violations)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds", required=True, help="folder of KubeRay CRD YAML files (config/crd/bases)")
    parser.add_argument("--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION, help="for built-in kinds")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        schemas = load_crd_schemas(args.crds)
    except SchemaDirectoryError as error:
        print(error, file=sys.stderr)
        return 2
    failed = False
    for path in args.files:
        try:
            validate_file(path, schemas, args.kubernetes_version)
        except ManifestError as error:
            failed = True
            print(error, file=sys.stderr)
        except (OSError, yaml.YAMLError) as error:
            print(f"{path}: cannot read: {error}", file=sys.stderr)
            return 2
        except SchemaDirectoryError as error:
            print(f"{path}: {error}", file=sys.stderr)
            return 2
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

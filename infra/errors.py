"""Errors raised by the infra checks (docs/infra.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class ManifestError(ValueError):
    """A manifest failed validation; carries every violation found, each with its field path."""

    def __init__(self, source: str | Path, violations: Sequence[object]) -> None:
        self.source = str(source)
        self.violations = list(violations)
        lines = "\n".join(f"  - {violation}" for violation in self.violations)
        super().__init__(f"{self.source}: {len(self.violations)} problem(s):\n{lines}")


class SchemaDirectoryError(FileNotFoundError):
    """The CRD directory is missing or holds no CRD for a kind that a manifest uses."""

    def __init__(self, directory: str | Path, detail: str) -> None:
        self.directory = str(directory)
        super().__init__(
            f"{self.directory}: {detail}. Point --crds at a folder of KubeRay CRD YAML files, e.g. the repository's "
            "config/crd/bases or `kubectl get crd rayclusters.ray.io rayjobs.ray.io raycronjobs.ray.io -o yaml`."
        )


class UnsupportedRuleError(ValueError):
    """A CEL rule uses syntax outside the subset infra/cel.py evaluates."""

    def __init__(self, rule: str, detail: str) -> None:
        self.rule = rule
        super().__init__(f"CEL rule {rule!r} is outside the offline subset ({detail}); extend infra/cel.py")


class SubmitError(RuntimeError):
    """The Kubernetes API server refused or failed a request; names the request and the server's answer."""

    def __init__(self, action: str, status: int, message: object) -> None:
        self.action = action
        self.status = status
        super().__init__(f"{action}: HTTP {status}: {message}")

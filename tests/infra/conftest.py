"""Fixtures for the infra tests: the repository's deployment files and the KubeRay CRDs from `<repo>/../shared`."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.validate import load_crd_schemas

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
K8S_MANIFESTS = sorted((INFRA / "k8s").glob("*.yaml"))
CLOUD_CONFIGS = sorted((INFRA / "cloud").glob("*.yaml"))


def shared_candidates() -> list[Path]:
    """`<repo>/../shared`, and for a git worktree also the main checkout's `../shared`."""
    candidates = [REPO_ROOT.parent / "shared"]
    common = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
        capture_output=True,
        text=True,
        check=False,
    )
    if common.returncode == 0 and common.stdout.strip():
        main_checkout = Path(common.stdout.strip()).parent
        candidates.append(main_checkout.parent / "shared")
    return candidates


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    """The folder of KubeRay CRDs; the only skip in these tests is its absence."""
    for candidate in shared_candidates():
        folder = candidate / "schemas" / "kuberay"
        if folder.is_dir():
            return folder
    pytest.skip(
        f"KubeRay CRDs not found under {[str(c) for c in shared_candidates()]}/schemas/kuberay "
        "(shared/ lies beside the checkout in CI and on developer machines)"
    )


@pytest.fixture(scope="session")
def crd_schemas(crd_dir: Path) -> dict[str, Mapping[str, Any]]:
    """`kind -> v1 openAPIV3Schema` for RayCluster, RayJob and RayCronJob."""
    return load_crd_schemas(crd_dir)


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a manifest file."""
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def manifest(name: str, kind: str | None = None) -> dict[str, Any]:
    """The one document of `kind` (or the only document) in infra/k8s/<name>."""
    documents = [d for d in load_documents(INFRA / "k8s" / name) if kind is None or d["kind"] == kind]
    assert len(documents) == 1, f"{name}: expected one {kind or 'document'}, found {len(documents)}"
    return documents[0]


def pyproject_pin(package: str) -> str:
    """The `==` pin of `package` in pyproject.toml's dependencies."""
    import tomllib

    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    for requirement in data["project"]["dependencies"]:
        name = requirement.split("[")[0].split("=")[0].split(">")[0].strip()
        if name == package and "==" in requirement:
            return requirement.split("==")[1].strip()
    raise AssertionError(f"pyproject.toml pins no {package}==X")


def constraint_pin(package: str) -> str:
    """The pin of `package` in constraints.txt."""
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if line.strip().startswith(f"{package}=="):
            return line.split("==")[1].strip()
    raise AssertionError(f"constraints.txt pins no {package}")


def project_version() -> str:
    """pyproject.toml's project version."""
    import tomllib

    return str(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"])

"""`python -m infra.validate`, the operator's pre-apply check: exit statuses and what it prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.validate import main
from tests.infra.conftest import K8S_MANIFESTS


def test_the_shipped_manifests_pass(crd_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--crds", str(crd_dir), *map(str, K8S_MANIFESTS)]) == 0
    assert capsys.readouterr().out.count(": ok") == len(K8S_MANIFESTS)


def test_a_broken_manifest_fails_with_every_problem_listed(
    crd_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (K8S_MANIFESTS[0].parent / "raycluster.yaml").read_text()
    broken = tmp_path / "raycluster.yaml"
    broken.write_text(text.replace("maxReplicas: 4", "maxReplica: 4").replace("mode: token", "mode: tokens"))
    assert main(["--crds", str(crd_dir), str(broken)]) == 1
    err = capsys.readouterr().err
    assert "did you mean 'maxReplicas'?" in err and "'tokens' is not one of" in err


def test_a_missing_crd_folder_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--crds", str(tmp_path / "nope"), str(K8S_MANIFESTS[0])]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_a_crd_folder_without_the_kind_is_a_usage_error(
    crd_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rayclusters.yaml").write_text((crd_dir / "ray.io_rayclusters.yaml").read_text())
    rayjob = next(path for path in K8S_MANIFESTS if path.name == "rayjob-pretrain.yaml")
    assert main(["--crds", str(tmp_path), str(rayjob)]) == 2
    assert "has no CRD for RayJob" in capsys.readouterr().err

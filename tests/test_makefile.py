"""The Makefile's suite targets: a required suite (realdata, cluster) that selects no test fails `make test`.

Runs the real targets with ``-o`` so make never re-installs the venv or rebuilds the samples, and points pytest at
this file alone, where no test carries those markers.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _make(target: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.fail("`make` is not installed; the Makefile targets are the project's entry points.")
    flags = "-q -p no:cacheprovider tests/test_makefile.py"
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "-o", "samples", target, f"PYTEST_FLAGS={flags}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("target", ["test-realdata", "test-cluster"])
def test_an_empty_required_suite_fails(target: str) -> None:
    result = _make(target)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "no tests ran" in result.stdout or "deselected" in result.stdout, result.stdout


def test_the_slow_suite_may_be_empty() -> None:
    result = _make("test-slow")
    assert result.returncode == 0, result.stdout + result.stderr

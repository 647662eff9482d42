"""Fixtures of the job tests: a small real ingest with a rule-based segmentation label set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.label_rules import write_rule_labels
from tests.pipeline.test_label_rules import BANDS, _scene


@pytest.fixture(scope="module")
def rule_labelled(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> Path:
    """A synthetic scene ingested as 16 chips of 8 px (one grid cell each), labelled ``rules`` by the label rules."""
    from jobs.ingest import main as ingest_main

    root = tmp_path_factory.mktemp("rule-labelled")
    item = _scene(root / "scene")
    out = root / "ds"
    args = ["--catalog", str(item), "--output", str(out), "--chip-size", "8", "--no-progress", "--bands", *BANDS]
    assert ingest_main(args) == 0
    write_rule_labels(str(out), "rules", max_ignored=None)
    return out

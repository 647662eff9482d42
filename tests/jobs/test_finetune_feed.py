"""Fine-tuning's feed: native chips through Ray Data, normalised by the worker's collate, joined to the labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs._finetune_data import build_split_datasets, plan_task
from jobs._native_feed import consumer_collate, read_normalize


def _by_key(ds: Any, collate: Any) -> dict[int, dict[str, np.ndarray]]:
    out = {}
    for batch in ds.iter_torch_batches(batch_size=3, collate_fn=collate):
        for i, key in enumerate(batch["chip_key"].tolist()):
            out[int(key)] = {k: v[i].numpy() for k, v in batch.items() if k != "chip_key"}
    return out


def test_split_batches_normalised_by_the_worker_match_the_read_task_bits(rule_labelled: Path) -> None:
    plan = plan_task(str(rule_labelled), "segmentation", labels="rules", val_fraction=0.25, block_chips=1)
    read_side = build_split_datasets(plan, materialize=False, normalize="worker")
    native = build_split_datasets(plan, materialize=True)  # the default: native pixels
    collate = consumer_collate(plan.mean, plan.std, "cpu")
    assert collate is not None and consumer_collate(plan.mean, plan.std, "cpu", "read") is None
    for split, keys in (("train", plan.train_keys), ("val", plan.val_keys)):
        want, got = _by_key(read_side[split], None), _by_key(native[split], collate)
        assert sorted(want) == sorted(got) == sorted(keys)  # every chip of the split, once
        for key, row in want.items():
            assert set(got[key]) == set(row) == {"image", "valid", "target"}
            assert got[key]["image"].dtype == np.float32
            for column, value in row.items():
                assert np.array_equal(got[key][column].view(np.uint8), value.view(np.uint8)), (split, column)


def test_read_normalize_names_the_choices() -> None:
    assert read_normalize("consumer") == "device" and read_normalize("read") == "worker"
    with pytest.raises(ValueError, match="'consumer' or 'read'"):
        read_normalize("gpu")  # type: ignore[arg-type]

"""The noisy-label objective's data: labelled streams, the grid-cell split, clean hold-out, masks joined to chips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs._noisy_objective import CLEAN, VAL, build_noisy_datasets, plan_noisy
from jobs._pretrain_data import plan_feed
from pipeline.labels import decode_masks, read_labels, write_raster_labels


@pytest.fixture(scope="module")
def labelled(rule_labelled: Path) -> Path:
    return rule_labelled


def test_split_by_grid_cell_with_a_clean_hold_out(labelled: Path) -> None:
    feed = plan_feed([str(labelled)], pairing=False)
    plan, split = plan_noisy(feed, labels="rules", clean_labels=None, val_fraction=0.25, seed=0)
    (name,) = plan.streams
    train, val = split.train[name], split.val[name]
    assert len(train) + len(val) == 16 and val and not set(train) & set(val)
    assert plan.streams[name].rows == len(train) and split.classes == ("water", "vegetation", "bare_built")
    again = plan_noisy(feed, labels="rules", clean_labels=None, val_fraction=0.25, seed=0)[1]
    assert again.val == split.val  # the split is a function of the seed and the grid cells
    # a clean label set (here: a copy of the masks of the top-left chips) is held out of training entirely
    index = {r["chip_id"]: r for r in pq.read_table(labelled / "index.parquet").to_pylist()}
    table, _ = read_labels(str(labelled), "rules")
    top_left = [c for c in table["chip_id"].to_pylist() if index[c]["window"][:2] == [0, 0]]
    assert len(top_left) == 1
    import rasterio
    from affine import Affine

    from tests.pipeline.test_label_rules import EPSG, X0, Y0

    path = labelled.parent / "clean.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs=f"EPSG:{EPSG}",
                       transform=Affine(10, 0, X0, 0, -10, Y0), nodata=255) as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))  # water, as the rules say
    write_raster_labels(str(labelled), "clean", raster=str(path), classes=["water", "vegetation", "bare_built"])
    plan, split = plan_noisy(feed, labels="rules", clean_labels="clean", val_fraction=0.25, seed=0)
    assert list(split.clean[name].values()) == top_left
    assert top_left[0] not in split.train[name].values() and top_left[0] not in split.val[name].values()
    datasets = build_noisy_datasets(plan, split)
    assert set(datasets) == {name, VAL + name, CLEAN + name}
    masks = dict(zip(table["chip_id"].to_pylist(), decode_masks(table), strict=True))
    key_to_id = {**split.val[name], **split.train[name]}
    rows = datasets[VAL + name].take_all()
    assert len(rows) == len(split.val[name])
    for row in rows:
        np.testing.assert_array_equal(row["mask"], masks[key_to_id[int(row["chip_key"])]])
    (clean_row,) = datasets[CLEAN + name].take_all()
    assert (clean_row["mask"] == 0).all()
    with pytest.raises(ValueError, match="has no label set 'nope'"):
        plan_noisy(feed, labels="nope", clean_labels=None, val_fraction=0.1, seed=0)
    write_raster_labels(str(labelled), "two", raster=str(path), classes=["a", "b"])
    with pytest.raises(ValueError, match="clean validation needs the same class list"):
        plan_noisy(feed, labels="rules", clean_labels="two", val_fraction=0.1, seed=0)

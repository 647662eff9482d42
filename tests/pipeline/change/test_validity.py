"""Validity masks and pixel classes (spec test 6)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.change.config import MorphologyConfig, ValidityConfig
from pipeline.change.threshold import changed_mask
from pipeline.change.validity import pixel_classes, validity_mask


def test_scl_clouds_are_dilated_by_the_radius_and_nodata_is_invalid() -> None:
    scl = np.full((20, 20), 4, np.uint8)  # vegetation
    scl[10, 10] = 9  # cloud high probability
    data = np.ones((20, 20), bool)
    data[0, :] = False  # no data
    for radius in (0, 2, 4):
        valid = validity_mask(data, ValidityConfig(source="scl", dilate_px=radius), scl=scl)
        invalid = ~valid[1:]
        rows, cols = np.nonzero(invalid)
        assert invalid.sum() == (2 * radius + 1) ** 2  # the square around the cloud, nothing else
        assert rows.max() - rows.min() == 2 * radius and cols.max() - cols.min() == 2 * radius
        assert not valid[0].any()
    prob = np.zeros((20, 20), np.float32)
    prob[5, 5] = 0.7
    valid = validity_mask(data, ValidityConfig(source="s2cloudless", dilate_px=1), cloud_prob=prob)
    assert (~valid[1:]).sum() == 9
    with pytest.raises(ValueError, match="no SCL raster"):
        validity_mask(data, ValidityConfig(source="scl"))


def test_newly_valid_counts_as_changed_and_invalid_now_never_does() -> None:
    valid_ref = np.ones((12, 12), bool)
    valid_ref[2:6, 2:6] = False  # clouded in the reference
    valid_now = np.ones((12, 12), bool)
    valid_now[7:11, 7:11] = False  # clouded now
    classes = pixel_classes(valid_now, valid_ref)
    score = np.full((12, 12), 5.0, np.float32)  # a huge score everywhere: only scored pixels may use it
    score[classes.scored] = 0.0
    changed = changed_mask(score, classes, tau=0.1, cfg=MorphologyConfig(open_px=1), halo=0)
    assert np.array_equal(changed, classes.newly_valid)
    assert changed[2:6, 2:6].all() and not changed[7:11, 7:11].any()
    assert classes.invalid_now.sum() == 16 and classes.newly_valid.sum() == 16

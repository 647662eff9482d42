"""Square-element morphology of the change stage: equal to scipy's binary dilation and opening (zero border), only
faster (separable running min/max over the bounding box of the set pixels)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.change.morphology import dilate, opening


def _masks(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for density in (0.0, 0.05, 0.5, 0.97, 1.0):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        out.append(rng.random((h, w)) < density)
    blob = np.zeros((40, 50), bool)
    blob[0:9, 30:50] = True  # touches the top and right borders
    blob[20:23, 3:6] = True
    blob[35, 10] = True  # a speck
    out.append(blob)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_dilate_equals_scipy_binary_dilation(seed: int) -> None:
    for mask in _masks(seed):
        for radius in range(0, 5):
            expected = ndimage.binary_dilation(mask, np.ones((2 * radius + 1,) * 2, bool)) if radius else mask
            got = dilate(mask, radius)
            assert got.dtype == bool and got is not mask
            np.testing.assert_array_equal(got, expected, err_msg=f"radius {radius}, shape {mask.shape}")


@pytest.mark.parametrize("seed", range(4))
def test_opening_equals_scipy_binary_opening_odd_and_even_sizes(seed: int) -> None:
    for mask in _masks(seed):
        for size in range(1, 6):
            expected = ndimage.binary_opening(mask, np.ones((size, size), bool)) if size > 1 else mask
            np.testing.assert_array_equal(opening(mask, size), expected, err_msg=f"size {size}, shape {mask.shape}")


def test_opening_removes_a_speck_and_keeps_a_block_away_from_others() -> None:
    mask = np.zeros((64, 64), bool)
    mask[40:50, 40:50] = True
    mask[5, 5] = True
    out = opening(mask, 3)
    assert not out[5, 5] and out[40:50, 40:50].all() and out.sum() == 100
    grown = dilate(out, 2)
    assert grown.sum() == 14 * 14 and grown[38:52, 38:52].all()

"""Overlap blending: windows cut from one map reassemble it exactly, whatever the overlap, validity and scene size."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.blend import OverlapBlender, taper
from pipeline.grid import chip_offsets


def _blend(field: np.ndarray, valid: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Feed the windows of ``field`` (K, H, W) in cut_item's order; return the blended map, coverage, peak rows."""
    channels, height, width = field.shape
    pad_h, pad_w = height + window, width + window
    padded = np.zeros((channels, pad_h, pad_w), np.float32)
    padded[:, :height, :width] = field
    pvalid = np.zeros((pad_h, pad_w), bool)
    pvalid[:height, :width] = valid
    blender = OverlapBlender(channels, width, window)
    out = np.full((channels, height, width), -1.0, np.float32)
    covered = np.zeros((height, width), bool)
    peak = 0

    def take(rows: tuple[int, np.ndarray, np.ndarray]) -> None:
        nonlocal peak
        top, values, cov = rows
        assert np.all(out[:, top : top + values.shape[1]] == -1.0), "a row was emitted twice"
        out[:, top : top + values.shape[1]] = values
        covered[top : top + values.shape[1]] = cov
        peak = max(peak, values.shape[1])

    for row in chip_offsets(height, window, stride):
        for rows in blender.start_strip(row):
            take(rows)
        for col in chip_offsets(width, window, stride):
            blender.add(padded[:, row : row + window, col : col + window], col, row, pvalid[row : row + window,
                                                                                          col : col + window])
    for rows in blender.finish(height):
        take(rows)
    return out, covered, peak


@pytest.mark.parametrize(
    ("height", "width", "window", "stride"), [(100, 130, 32, 24), (64, 64, 64, 64), (50, 20, 32, 8)]
)
def test_windows_of_one_map_reassemble_it(height: int, width: int, window: int, stride: int) -> None:
    rng = np.random.default_rng(0)
    field = rng.random((3, height, width), dtype=np.float32)
    valid = rng.random((height, width)) > 0.1
    valid[:10, :10] = False  # a block with no data at all
    out, covered, peak = _blend(field, valid, window, stride)
    np.testing.assert_array_equal(covered, valid)  # every valid pixel is covered; invalid ones get no weight
    np.testing.assert_allclose(out[:, covered], field[:, covered], rtol=1e-5, atol=1e-6)
    assert np.all(out[:, ~covered] == 0.0)
    assert peak <= window  # memory: never more than one window of rows is held


def test_overlap_is_centre_weighted() -> None:
    """Where two windows disagree, the blend leans to the window whose centre is nearer."""
    w = taper(8)
    assert 0 < w.min() < w.max() <= 1.0 and np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    blender = OverlapBlender(1, 12, 8)
    list(blender.start_strip(0))
    ones = np.ones((8, 8), bool)
    blender.add(np.zeros((1, 8, 8), np.float32), 0, 0, ones)
    blender.add(np.ones((1, 8, 8), np.float32), 4, 0, ones)
    (_, values, covered), = list(blender.finish(8))
    row = values[0, 4]
    assert covered.all() and row[4] < 0.5 < row[7]  # col 4 is at window 2's rim, col 7 near its centre
    assert np.all(np.diff(row[4:8]) > 0)


def test_windows_out_of_order_are_refused() -> None:
    blender = OverlapBlender(1, 16, 8)
    list(blender.start_strip(8))
    with pytest.raises(ValueError, match="strip by strip"):
        blender.add(np.zeros((1, 8, 8), np.float32), 0, 0, np.ones((8, 8), bool))

"""Changed boxes for crop + halo: one per 8-connected blob, merged when they overlap or the union is cheap."""

from __future__ import annotations

import numpy as np

from pipeline.change.boxes import change_boxes, merge_boxes


def test_one_box_per_blob_and_diagonal_neighbours_join() -> None:
    mask = np.zeros((40, 40), bool)
    mask[2:5, 2:5] = True
    mask[5, 5] = True  # touches the first blob diagonally: same component
    mask[30:35, 20:28] = True
    assert change_boxes(mask) == [(2, 2, 6, 6), (30, 20, 35, 28)]
    assert change_boxes(np.zeros((4, 4), bool)) == []


def test_merge_rule() -> None:
    assert merge_boxes([(0, 0, 10, 10), (5, 5, 15, 15)]) == [(0, 0, 15, 15)]  # overlap
    assert merge_boxes([(0, 0, 10, 10), (0, 11, 10, 20)]) == [(0, 0, 10, 20)]  # union 200 <= 1.2 x 190
    assert merge_boxes([(0, 0, 10, 10), (30, 30, 40, 40)]) == [(0, 0, 10, 10), (30, 30, 40, 40)]  # far apart

"""Changed boxes for crop + halo: one box per 8-connected component of the changed mask, merged where cheaper
(docs/change-aware.md §Crop + receptive-field halo, "Several change blobs").

Two boxes merge when they overlap or when their union box is at most ``1.2 x`` the sum of their areas.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["Box", "change_boxes", "merge_boxes"]

Box = tuple[int, int, int, int]  # (row0, col0, row1, col1), half-open, in pixels
MERGE_RATIO = 1.2


def _area(b: Box) -> int:
    return max(b[2] - b[0], 0) * max(b[3] - b[1], 0)


def _union(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def merge_boxes(boxes: list[Box], ratio: float = MERGE_RATIO) -> list[Box]:
    """Merge pairs that overlap or whose union area ≤ ``ratio`` x their summed areas, until none do."""
    out = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                u = _union(out[i], out[j])
                if _overlap(out[i], out[j]) or _area(u) <= ratio * (_area(out[i]) + _area(out[j])):
                    out[i] = u
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(out)


def change_boxes(mask: np.ndarray) -> list[Box]:
    """Bounding boxes of the 8-connected components of ``(H, W)`` ``mask``, merged by :func:`merge_boxes`."""
    if not mask.any():
        return []
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    boxes = [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndimage.find_objects(labels) if s is not None]
    return merge_boxes(boxes)

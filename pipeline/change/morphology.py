"""Binary morphology with square structuring elements, as the change stage uses it (cloud dilation, speckle opening,
halo dilation; docs/change-aware.md §Pixel threshold and morphology).

A square is the product of a row and a column segment, so each operation is two running 1-D min/max filters
(O(1) per pixel whatever the size), and only the bounding box of the set pixels grown by the reach is filtered:
nothing outside it can change. The results equal ``scipy.ndimage.binary_dilation`` / ``binary_opening`` with
``np.ones((s, s))`` and their default zero border.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

__all__ = ["dilate", "opening"]

_Filter = Callable[..., np.ndarray]


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """The bounding box of ``mask``'s True pixels grown by ``margin`` and clipped, or ``None`` when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, h)),
            slice(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, w)))


def _square(values: np.ndarray, size: int, op: _Filter, origin: int = 0) -> np.ndarray:
    """``op`` (a running min or max) over a ``size x size`` square, zero outside the array."""
    out = op(values, size, axis=1, mode="constant", cval=0, origin=origin)
    return op(out, size, axis=0, mode="constant", cval=0, origin=origin)  # type: ignore[no-any-return]


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``(H, W)`` ``mask`` grown by ``radius`` pixels (a ``(2r+1)²`` square, so the Chebyshev distance); a new
    array, equal to ``mask`` for radius 0."""
    box = _box(mask, radius) if radius > 0 else None
    if box is None:
        return mask.copy()
    out = np.zeros_like(mask)
    out[box] = _square(mask[box].view(np.uint8), 2 * radius + 1, ndimage.maximum_filter1d).view(bool)
    return out


def opening(mask: np.ndarray, size: int) -> np.ndarray:
    """``(H, W)`` ``mask`` eroded then dilated by a ``size x size`` square (removes specks smaller than it); pixels
    within ``size // 2`` of the border erode as if the outside were False. Size 1 or less: a copy."""
    box = _box(mask, size) if size > 1 else None
    if box is None:
        return mask.copy()
    # scipy centres an even square at size // 2 for the erosion and mirrors it for the dilation
    shift = 0 if size % 2 else -1
    eroded = _square(mask[box].view(np.uint8), size, ndimage.minimum_filter1d)
    out = np.zeros_like(mask)
    out[box] = _square(eroded, size, ndimage.maximum_filter1d, origin=shift).view(bool)
    return out

"""Blend overlapping window predictions over a scene, strip by strip, so a scene larger than memory can be predicted.

Windows arrive in the order :func:`pipeline.tiling.cut_item` yields them (row-major, one strip of windows at a time).
Each window's per-pixel values are weighted by a separable triangular taper, highest at the window centre, times the
input's validity, so seams between windows vanish and pixels the input had no data for get no weight. Rows above the
current strip can no longer receive a contribution; :meth:`OverlapBlender.start_strip` hands them back finished and
forgets them, so memory stays at one window height whatever the scene height.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["BlendedRows", "OverlapBlender", "taper"]

BlendedRows = tuple[int, np.ndarray, np.ndarray]  # (first row, values (K, n, W), covered (n, W))


def taper(size: int) -> np.ndarray:
    """``(size, size)`` separable triangular weights in ``(0, 1]``: highest at the centre, ``(1/size)²`` at a corner."""
    half = size / 2.0
    ramp = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5) / half  # (size,)
    w = np.minimum(ramp, 1.0).astype(np.float32)
    return w[:, None] * w[None, :]  # (size,) x (size,) -> (size, size)


class OverlapBlender:
    """Weighted running mean of window predictions over a strip of ``window`` rows.

    Args:
        channels: values per pixel (K classes).
        width: scene width in pixels (windows may overhang it; the overhang is cropped).
        window: window height and width in pixels.
    """

    def __init__(self, channels: int, width: int, window: int) -> None:
        self.channels, self.width, self.window = channels, width, window
        self._weights = taper(window)
        span = width + window  # room for windows overhanging the right edge
        self._sum = np.zeros((channels, window, span), np.float32)
        self._wsum = np.zeros((window, span), np.float32)
        self._top = 0

    def add(self, values: np.ndarray, col_off: int, row_off: int, valid: np.ndarray) -> None:
        """Add one window: ``values`` ``(K, window, window)`` float, ``valid`` ``(window, window)`` bool."""
        if not self._top <= row_off < self._top + self.window:
            raise ValueError(
                f"window at row {row_off} arrived after rows up to {self._top} were finished; add windows strip by "
                "strip in row order (as cut_item yields them) and call start_strip(row_off) first."
            )
        r = row_off - self._top
        h = self.window - r  # rows of this window inside the buffer (a stride < window keeps them all)
        w = self._weights[:h] * valid[:h]
        self._sum[:, r:, col_off : col_off + self.window] += values[:, :h] * w
        self._wsum[r:, col_off : col_off + self.window] += w

    def start_strip(self, row_off: int) -> Iterator[BlendedRows]:
        """Finish every row above ``row_off`` (no later window reaches them) and yield them."""
        done = min(row_off - self._top, self.window)
        if done > 0:
            yield self._emit(done)
            self._sum[:, :-done] = self._sum[:, done:].copy()
            self._sum[:, -done:] = 0.0
            self._wsum[:-done] = self._wsum[done:].copy()
            self._wsum[-done:] = 0.0
        self._top = row_off

    def finish(self, height: int) -> Iterator[BlendedRows]:
        """Yield the remaining rows, down to scene row ``height`` (exclusive)."""
        rows = min(self.window, height - self._top)
        if rows > 0:
            yield self._emit(rows)
        self._top = height

    def _emit(self, rows: int) -> BlendedRows:
        wsum = self._wsum[:rows, : self.width]
        covered = wsum > 0
        values = np.divide(self._sum[:, :rows, : self.width], wsum, where=covered, out=np.zeros_like(
            self._sum[:, :rows, : self.width]))
        return self._top, values, covered

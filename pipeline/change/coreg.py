"""Co-registration check: the sub-pixel shift between a scene and its reference by phase correlation
(docs/change-aware.md §Co-registration).

Tiles share the MGRS grid, so a shift means a geolocation error; past ``max_shift_px`` every pixel difference is
suspect and incremental mode is skipped for that scene.
"""

from __future__ import annotations

import numpy as np

__all__ = ["misregistration", "phase_correlation_shift"]

_MAX_SIDE = 1024  # a centred crop this large holds plenty of structure and keeps the FFT cheap on a 10980 px tile


def _prepare(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    x = band.astype(np.float64)
    fill = float(x[valid].mean()) if valid.any() else 0.0
    x = np.where(valid, x, fill) - fill
    window = np.outer(np.hanning(x.shape[0]), np.hanning(x.shape[1]))  # (H,) x (W,) -> (H, W): no edge leakage
    return x * window


def _subpixel(c_minus: float, c0: float, c_plus: float) -> float:
    denom = c_minus - 2.0 * c0 + c_plus
    return 0.0 if denom == 0 else 0.5 * (c_minus - c_plus) / denom


def phase_correlation_shift(
    moving: np.ndarray, reference: np.ndarray, valid: np.ndarray | None = None
) -> tuple[float, float]:
    """``(dy, dx)`` in pixels such that ``moving`` ≈ ``reference`` shifted by ``(dy, dx)`` (parabolic peak refinement).

    Args:
        moving, reference: ``(H, W)`` one band (B8 or B4) of the scene and of the reference.
        valid: ``(H, W)`` pixels valid in both; others are filled with the mean before the transform.
    """
    if moving.shape != reference.shape:
        raise ValueError(f"scene band {moving.shape} and reference band {reference.shape} differ in shape")
    h, w = moving.shape
    top, left = max(0, (h - _MAX_SIDE) // 2), max(0, (w - _MAX_SIDE) // 2)
    crop = np.s_[top : top + _MAX_SIDE, left : left + _MAX_SIDE]
    mask = np.ones(moving.shape, bool) if valid is None else valid
    a, b = _prepare(moving[crop], mask[crop]), _prepare(reference[crop], mask[crop])
    spectrum = np.fft.rfft2(a) * np.conj(np.fft.rfft2(b))  # real inputs: half the spectrum, half the work
    spectrum /= np.maximum(np.abs(spectrum), 1e-12)
    corr = np.fft.irfft2(spectrum, a.shape)
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)
    ch, cw = corr.shape
    dy = _subpixel(corr[(py - 1) % ch, px], corr[py, px], corr[(py + 1) % ch, px])
    dx = _subpixel(corr[py, (px - 1) % cw], corr[py, px], corr[py, (px + 1) % cw])
    sy = py - ch if py > ch // 2 else py
    sx = px - cw if px > cw // 2 else px
    return float(sy + dy), float(sx + dx)


def _median_abs_diff(moving: np.ndarray, reference: np.ndarray, valid: np.ndarray, dy: int, dx: int) -> float:
    """Median |moving - reference shifted by integer (dy, dx)| over valid pixels: robust to changes on up to half
    the scene, unlike a correlation, which one strongly changed block dominates."""
    h, w = moving.shape
    if abs(dy) >= h or abs(dx) >= w:
        return float("inf")
    here = np.s_[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
    there = np.s_[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    ok = valid[here] & valid[there]
    if ok.sum() < 16:
        return float("inf")
    return float(np.median(np.abs(moving[here][ok].astype(np.float64) - reference[there][ok])))


def misregistration(
    moving: np.ndarray, reference: np.ndarray, valid: np.ndarray, max_shift_px: float
) -> tuple[tuple[float, float], bool]:
    """``(shift, misregistered)``: the phase-correlation shift, flagged only when it exceeds ``max_shift_px`` *and*
    the scene matches the reference better (smaller median absolute difference) at that rounded shift than unshifted.

    NOTE: a large real change (a new field, a burn scar) can move the whitened correlation peak on its own; the
    check against the zero shift keeps such a scene incremental, while a true geolocation error matches better
    shifted.
    """
    shift = phase_correlation_shift(moving, reference, valid)
    if max(abs(shift[0]), abs(shift[1])) <= max_shift_px:
        return shift, False
    dy, dx = round(shift[0]), round(shift[1])
    if (dy, dx) == (0, 0):
        return shift, True
    h, w = moving.shape
    top, left = max(0, (h - _MAX_SIDE) // 2), max(0, (w - _MAX_SIDE) // 2)
    crop = np.s_[top : top + _MAX_SIDE, left : left + _MAX_SIDE]
    m, r, v = moving[crop], reference[crop], valid[crop]
    return shift, _median_abs_diff(m, r, v, dy, dx) < _median_abs_diff(m, r, v, 0, 0)

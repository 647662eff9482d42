"""Pixel threshold and morphology: scores → changed mask (docs/change-aware.md §Pixel threshold and morphology).

changed = (d > τ_pix on scored pixels) or newly valid, then a 3x3 opening removes speckle and a dilation by the model
halo (R px in sub-chip crop mode, 0 for chip-level reuse) covers the outputs a changed input pixel reaches.
"""

from __future__ import annotations

import numpy as np

from pipeline.change.config import MorphologyConfig, TauPixConfig
from pipeline.change.morphology import dilate, opening
from pipeline.change.validity import PixelClasses

__all__ = ["changed_mask", "otsu_threshold", "pixel_threshold"]

_OTSU_BINS = 256


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of a 1-D sample (the cut maximising the between-class variance of a 256-bin histogram)."""
    if values.size == 0 or float(values.max()) == float(values.min()):
        return float(values.max()) if values.size else 0.0
    hist, edges = np.histogram(values, bins=_OTSU_BINS)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def pixel_threshold(score: np.ndarray, scored: np.ndarray, cfg: TauPixConfig) -> float:
    """τ_pix: ``fixed`` value, or Otsu on the scored pixels floored at ``floor`` (a unimodal no-change histogram
    would otherwise be cut somewhere spurious)."""
    match cfg.mode:
        case "fixed":
            return float(cfg.value)
        case "otsu":
            return max(otsu_threshold(score[scored]), float(cfg.floor))
        case _:
            raise ValueError(f"tau_pix.mode {cfg.mode!r} is not one of fixed, otsu")


def changed_mask(score: np.ndarray, classes: PixelClasses, tau: float, cfg: MorphologyConfig, halo: int) -> np.ndarray:
    """``(H, W)`` bool changed pixels after opening and the halo dilation.

    Args:
        score: ``(H, W)`` change score (only its scored pixels are read).
        classes: scored / newly valid / invalid-now pixels; invalid-now pixels are never changed before dilation.
        tau: τ_pix.
        cfg: ``open_px`` and ``halo_px`` (``None``: use ``halo``).
        halo: the model's halo in pixels (R for crop + halo, 0 for chip-level reuse).
    """
    changed = (classes.scored & (score > tau)) | classes.newly_valid
    changed = opening(changed, cfg.open_px)
    return dilate(changed, halo if cfg.halo_px is None else cfg.halo_px)

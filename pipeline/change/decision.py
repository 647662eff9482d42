"""Chip decision: which chips of a new scene to recompute, and why (docs/change-aware.md §Chip decision).

A chip is recomputed when it has no cache entry, its cache was computed by another model or preprocessing version,
its cache is older than ``max_age``, or its changed fraction exceeds ``tau_chip`` (checked in that order; the first
that holds is the reason). Otherwise its cached output is reused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.change.config import ChipConfig

__all__ = ["CacheEntry", "ChipDecision", "ChipWindow", "Reason", "chip_fractions", "decide_chips"]

Reason = Literal[
    "no_cache", "version", "age", "changed", "misregistered", "out_of_order",  # recomputed
    "unchanged", "below_tau", "invalid_now",  # reused
]
RECOMPUTE_REASONS: tuple[str, ...] = ("no_cache", "version", "age", "changed", "misregistered", "out_of_order")


@dataclass(frozen=True)
class ChipWindow:
    """A chip on the tile grid: ``key`` (stable across acquisitions, e.g. the grid cell) and
    ``(col_off, row_off, width, height)`` in tile pixels (it may overhang the tile)."""

    key: str
    window: tuple[int, int, int, int]


@dataclass(frozen=True)
class CacheEntry:
    """What the chip cache knows about a chip's stored output."""

    source_day: int
    model_version: str
    preproc_version: str


@dataclass(frozen=True)
class ChipDecision:
    """The decision for one chip, with the statistics it was taken on."""

    key: str
    window: tuple[int, int, int, int]
    recompute: bool
    reason: Reason
    changed_frac: float
    newly_valid_frac: float
    valid_frac: float
    age_days: int | None


def chip_fractions(
    mask: np.ndarray, windows: Sequence[tuple[int, int, int, int]]
) -> np.ndarray:
    """Fraction of each window's in-tile pixels where ``mask`` is True, ``(N,)`` float64.

    A summed-area table sampled only at the window edges: one pass sums the mask over the bands between
    consecutive edge rows and columns (``np.add.reduceat``), so thousands of overlapping windows cost one read.
    """
    h, w = mask.shape
    win = np.asarray(windows, np.int64).reshape(-1, 4)  # (N, 4) col, row, width, height
    c0, r0 = np.clip(win[:, 0], 0, w), np.clip(win[:, 1], 0, h)
    c1, r1 = np.clip(win[:, 0] + win[:, 2], 0, w), np.clip(win[:, 1] + win[:, 3], 0, h)
    area = np.maximum(c1 - c0, 0) * np.maximum(r1 - r0, 0)
    out = np.zeros(len(win), np.float64)
    if not area.any() or not mask.any():
        return out
    rows = np.unique(np.concatenate([[0, h], r0, r1]))  # edge rows, ascending, 0 and h included
    cols = np.unique(np.concatenate([[0, w], c0, c1]))
    band = np.add.reduceat(mask.view(np.uint8), rows[:-1], axis=0, dtype=np.int64)  # (R - 1, W)
    band = np.add.reduceat(band, cols[:-1], axis=1)  # (R - 1, C - 1): pixels per cell between edges
    sat = np.zeros((len(rows), len(cols)), np.int64)
    sat[1:, 1:] = band.cumsum(axis=0).cumsum(axis=1)  # sat[i, j]: pixels above rows[i] and left of cols[j]
    i0, i1 = np.searchsorted(rows, r0), np.searchsorted(rows, r1)
    j0, j1 = np.searchsorted(cols, c0), np.searchsorted(cols, c1)
    total = sat[i1, j1] - sat[i0, j1] - sat[i1, j0] + sat[i0, j0]
    np.divide(total, area, out=out, where=area > 0)
    return out


def decide_chips(
    chips: Sequence[ChipWindow],
    *,
    changed: np.ndarray,
    newly_valid: np.ndarray,
    valid_now: np.ndarray,
    cache: Mapping[str, CacheEntry],
    day: int,
    model_version: str,
    preproc_version: str,
    cfg: ChipConfig,
    force: Reason | None = None,
) -> list[ChipDecision]:
    """Decide every chip of one scene.

    Args:
        chips: the scene's chips.
        changed: ``(H, W)`` changed mask after morphology (newly valid pixels included).
        newly_valid: ``(H, W)`` newly valid pixels (for the ``chips_newly_valid_driven`` counter).
        valid_now: ``(H, W)`` the scene's validity.
        cache: entries by chip key.
        day: the scene's acquisition day number.
        model_version, preproc_version: what the outputs would be computed with now.
        cfg: ``tau_chip`` and ``max_age_days``.
        force: recompute every chip for this reason (``misregistered``, ``out_of_order``).
    """
    windows = [c.window for c in chips]
    frac = chip_fractions(changed, windows)
    nv_frac = chip_fractions(newly_valid, windows)
    valid_frac = chip_fractions(valid_now, windows)
    out = []
    for chip, f, nv, vf in zip(chips, frac, nv_frac, valid_frac, strict=True):
        entry = cache.get(chip.key)
        age = None if entry is None else day - entry.source_day
        reason: Reason
        if force is not None:
            reason = force
        elif entry is None:
            reason = "no_cache"
        elif entry.model_version != model_version or entry.preproc_version != preproc_version:
            reason = "version"
        elif age is not None and age > cfg.max_age_days:
            reason = "age"
        elif f > cfg.tau_chip:
            reason = "changed"
        elif vf == 0:
            reason = "invalid_now"
        else:
            reason = "below_tau" if f > 0 else "unchanged"
        out.append(ChipDecision(
            key=chip.key, window=chip.window, recompute=reason in RECOMPUTE_REASONS, reason=reason,
            changed_frac=float(f), newly_valid_frac=float(nv), valid_frac=float(vf), age_days=age,
        ))
    return out

"""Streaming, nodata-aware per-band statistics that merge exactly across workers.

Each partial keeps per band the pixel count, the mean and the sum of squared deviations (M2), in float64. A batch is
folded in with its own exact mean/M2, and partials combine with Chan et al.'s pairwise update ("Updating formulae
and a pairwise algorithm for computing sample variances", 1979), which avoids the cancellation of sum-of-squares.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.warnings import DegenerateStatsWarning

__all__ = ["STATS_VERSION", "BandStats", "normalization_constants", "warn_degenerate"]

STATS_VERSION = "1"
_HASH_SIGNIFICANT_DIGITS = 6


def _round_sig(value: float, digits: int = _HASH_SIGNIFICANT_DIGITS) -> str:
    return f"{value:.{digits}g}"


class BandStats:
    """Per-band count, mean and M2 over valid pixels, updated from chips and merged across partials.

    Args:
        bands: band names in image channel order.
    """

    def __init__(self, bands: Sequence[str]) -> None:
        self.bands: tuple[str, ...] = tuple(bands)
        if not self.bands:
            raise ValueError("BandStats needs at least one band name.")
        n = len(self.bands)
        self.count = np.zeros(n, dtype=np.int64)
        self._mean = np.zeros(n, dtype=np.float64)
        self._m2 = np.zeros(n, dtype=np.float64)

    def _combine(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + count
        safe = np.where(total > 0, total, 1).astype(np.float64)
        delta = mean - self._mean
        self._mean = np.where(total > 0, self._mean + delta * (count / safe), 0.0)
        self._m2 = self._m2 + m2 + delta**2 * (self.count.astype(np.float64) * count / safe)
        self.count = total

    def update(self, image: np.ndarray, valid: np.ndarray) -> None:
        """Fold in one chip ``(C, H, W)`` with mask ``(H, W)``, or a batch ``(N, C, H, W)`` with ``(N, H, W)``.

        Pixels where ``valid`` is False, and non-finite values, are excluded.

        Args:
            image: pixels, channels in ``bands`` order.
            valid: True where every band has data.
        """
        if image.ndim == 3:
            image, valid = image[None], valid[None]  # (C, H, W) -> (1, C, H, W)
        if image.ndim != 4 or valid.shape != (image.shape[0], *image.shape[2:]):
            raise ValueError(
                f"Expected image (C, H, W) or (N, C, H, W) with valid (H, W) or (N, H, W); got image {image.shape} "
                f"and valid {valid.shape}."
            )
        if image.shape[1] != len(self.bands):
            raise ValueError(f"Image has {image.shape[1]} channels but stats track {len(self.bands)}: {self.bands}.")
        mask = valid.astype(bool, copy=False)
        n = len(self.bands)
        count = np.zeros(n, dtype=np.int64)
        mean = np.zeros(n, dtype=np.float64)
        m2 = np.zeros(n, dtype=np.float64)
        for c in range(n):
            values = image[:, c][mask].astype(np.float64)  # (N, H, W)[mask] -> (K,)
            if np.issubdtype(image.dtype, np.floating):
                values = values[np.isfinite(values)]
            if values.size:
                count[c] = values.size
                mean[c] = values.mean()
                m2[c] = np.square(values - mean[c]).sum()
        self._combine(count, mean, m2)

    def merge(self, other: BandStats) -> BandStats:
        """Fold another partial (same bands) into this one; returns ``self``."""
        if other.bands != self.bands:
            raise ValueError(f"Cannot merge stats over bands {other.bands} into stats over {self.bands}.")
        self._combine(other.count.copy(), other._mean.copy(), other._m2.copy())
        return self

    @property
    def mean(self) -> np.ndarray:
        """Per-band mean (NaN where no pixel was seen)."""
        return np.where(self.count > 0, self._mean, np.nan)

    @property
    def std(self) -> np.ndarray:
        """Per-band population standard deviation (ddof=0; NaN where no pixel was seen)."""
        safe = np.where(self.count > 0, self.count, 1).astype(np.float64)
        return np.where(self.count > 0, np.sqrt(self._m2 / safe), np.nan)

    @property
    def stats_hash(self) -> str:
        """A deterministic hash of the band names and the mean/std rounded to 6 significant digits."""
        payload = {
            "bands": list(self.bands),
            "mean": [_round_sig(float(v)) for v in self.mean],
            "std": [_round_sig(float(v)) for v in self.std],
            "stats_version": STATS_VERSION,
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.blake2b(blob, digest_size=16).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that :meth:`from_dict` restores exactly (mean/std are ``None`` for empty bands)."""

        def _json(values: np.ndarray) -> list[float | None]:
            return [float(v) if np.isfinite(v) else None for v in values]

        return {
            "bands": list(self.bands),
            "count": [int(v) for v in self.count],
            "mean": _json(self.mean),
            "std": _json(self.std),
            "m2": [float(v) for v in self._m2],
            "stats_version": STATS_VERSION,
            "stats_hash": self.stats_hash,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BandStats:
        """Rebuild a partial written by :meth:`to_dict`."""
        missing = {"bands", "count", "mean", "m2"} - set(data)
        if missing:
            raise ValueError(f"Stats dict lacks {sorted(missing)}; expected the output of BandStats.to_dict().")
        stats = cls(data["bands"])
        stats.count = np.asarray(data["count"], dtype=np.int64)
        stats._mean = np.asarray([0.0 if v is None else v for v in data["mean"]], dtype=np.float64)
        stats._m2 = np.asarray(data["m2"], dtype=np.float64)
        return stats

    def __repr__(self) -> str:
        return f"BandStats(bands={self.bands}, count={self.count.tolist()})"


def _degenerate(bands: Sequence[str], mean: np.ndarray, std: np.ndarray) -> list[str]:
    problems = []
    for name, m, sd in zip(bands, mean.tolist(), std.tolist(), strict=True):
        if not np.isfinite(m):
            problems.append(f"{name}: no valid pixel (mean is NaN)")
        elif not np.isfinite(sd) or sd <= 0:
            problems.append(f"{name}: constant values (std {sd:g})")
    return problems


def _warn(problems: Sequence[str], where: str) -> None:
    if problems:
        warnings.warn(DegenerateStatsWarning(
            f"Normalisation stats of {where} are unusable for {len(problems)} band(s): {'; '.join(problems)}. "
            "Normalising uses mean 0 / std 1 for them; check the band's nodata value (--nodata-override) and that "
            "its chips hold data."
        ), stacklevel=3)


def warn_degenerate(stats: BandStats, where: str) -> list[str]:
    """Warn (:class:`~pipeline.warnings.DegenerateStatsWarning`) about bands with a NaN mean or a zero std.

    Args:
        stats: merged stats.
        where: what the stats describe (``"collection 'sentinel-2-l2a'"``), for the message.

    Returns:
        One line per degenerate band (empty when all are usable).
    """
    problems = _degenerate(stats.bands, stats.mean, stats.std)
    _warn(problems, where)
    return problems


def normalization_constants(
    mean: Sequence[float | None], std: Sequence[float | None], bands: Sequence[str] | None = None,
    where: str = "the dataset",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band float32 ``(mean, std)`` for ``(x - mean) / std``; a NaN/missing mean becomes 0 and a NaN or zero std
    becomes 1, with a :class:`~pipeline.warnings.DegenerateStatsWarning` naming the bands (never silently).
    """
    m = np.asarray([np.nan if v is None else v for v in mean], dtype=np.float64)
    s = np.asarray([np.nan if v is None else v for v in std], dtype=np.float64)
    names = list(bands) if bands is not None else [f"band {i}" for i in range(len(m))]
    _warn(_degenerate(names, m, s), where)
    safe_mean = np.where(np.isfinite(m), m, 0.0).astype(np.float32)
    safe_std = np.where(np.isfinite(s) & (s > 0), s, 1.0).astype(np.float32)
    return safe_mean, safe_std

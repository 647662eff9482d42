"""Drift audit of reused chips (docs/change-aware.md §Drift audit on skipped chips).

Each run re-computes a seeded, stratified 1-2 % of the chips it reused (strata: changed-fraction bin x age bin, every
non-empty stratum sampled at least once), compares the cached outputs with the fresh ones, and raises an alarm when
p95 cosine distance exceeds ``tol_emb`` or p5 pixel agreement falls below ``tol_pix``. The same samples suggest the
largest ``tau_chip`` and ``max_age`` whose p95 drift stays within tolerance.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.change.config import AuditConfig, ChipConfig
from pipeline.change.decision import ChipDecision

__all__ = ["AuditReport", "audit_report", "audit_sample", "cosine_distance", "pixel_agreement", "stratum"]

_AGE_BINS = 3  # age strata: thirds of max_age, then "older"


def stratum(decision: ChipDecision, chip: ChipConfig) -> tuple[int, int]:
    """``(changed-fraction bin, age bin)`` of a reused chip: fraction 0 / ≤ τ/4 / ≤ τ/2 / ≤ τ / above; age in thirds
    of ``max_age`` (a fourth bin past it)."""
    f, tau = decision.changed_frac, chip.tau_chip
    fbin = 0 if f <= 0 else 1 if f <= tau / 4 else 2 if f <= tau / 2 else 3 if f <= tau else 4
    age = decision.age_days or 0
    abin = min(int(age // max(chip.max_age_days / _AGE_BINS, 1e-9)), _AGE_BINS)
    return fbin, abin


def audit_sample(
    decisions: Sequence[ChipDecision], cfg: AuditConfig, chip: ChipConfig, run_key: str
) -> list[ChipDecision]:
    """The reused chips to re-compute: ``ceil(sample_frac · reused)`` chips (at least one per non-empty stratum),
    allocated to strata by size; the same ``seed`` and ``run_key`` always give the same sample."""
    reused = sorted((d for d in decisions if not d.recompute and d.valid_frac > 0), key=lambda d: d.key)
    if not reused or cfg.sample_frac <= 0:
        return []
    strata: dict[tuple[int, int], list[ChipDecision]] = {}
    for d in reused:
        strata.setdefault(stratum(d, chip), []).append(d)
    target = math.ceil(cfg.sample_frac * len(reused))
    rng = np.random.default_rng([cfg.seed, zlib.crc32(run_key.encode())])
    picked: list[ChipDecision] = []
    for key in sorted(strata):
        members = strata[key]
        n = min(len(members), max(1, round(target * len(members) / len(reused))))
        picked.extend(members[i] for i in sorted(rng.choice(len(members), size=n, replace=False)))
    return picked


def cosine_distance(cached: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """``(N,)`` 1 - cos between rows of ``(N, D)`` embeddings (0 for two zero vectors)."""
    a, b = cached.astype(np.float64), fresh.astype(np.float64)
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.divide((a * b).sum(axis=1), norm, out=np.ones(len(a)), where=norm > 0)
    return np.clip(1.0 - cos, 0.0, 2.0)


def pixel_agreement(cached: np.ndarray, fresh: np.ndarray, valid: np.ndarray, num_classes: int) -> tuple[float, float]:
    """``(pixel accuracy, mIoU)`` of a cached class map against the fresh one over ``valid`` pixels (``(H, W)``
    each); classes absent from both are left out of the mean."""
    c, f = cached[valid], fresh[valid]
    if c.size == 0:
        return 1.0, 1.0
    ious = []
    for k in range(num_classes):
        inter = np.sum((c == k) & (f == k))
        union = np.sum((c == k) | (f == k))
        if union:
            ious.append(inter / union)
    return float(np.mean(c == f)), float(np.mean(ious)) if ious else 1.0


@dataclass(frozen=True)
class AuditReport:
    """Drift of the audited chips, the alarm, and the thresholds the samples support."""

    chips: int
    strata: int
    cos_p50: float | None
    cos_p95: float | None
    pix_p5: float | None
    pix_p50: float | None
    pix_p95: float | None
    miou_p50: float | None
    alarm: bool
    reasons: tuple[str, ...]
    suggested_tau_chip: float | None
    suggested_max_age_days: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def _q(values: np.ndarray, q: float) -> float | None:
    return None if values.size == 0 else float(np.percentile(values, q))


def _largest_within(keys: np.ndarray, ok: np.ndarray, current: float) -> float | None:
    """The largest threshold t (among the sample's keys, or ``current``) whose samples ``key ≤ t`` have p95 drift
    within tolerance (``ok`` tells, per candidate, whether it holds)."""
    if keys.size == 0:
        return None
    best = None
    for t, good in zip(np.unique(keys), ok, strict=True):
        if not good:
            break
        best = float(t)
    return current if best is not None and best >= float(np.max(keys)) else best


def audit_report(
    sampled: Sequence[ChipDecision],
    cfg: AuditConfig,
    chip: ChipConfig,
    *,
    cos: np.ndarray | None = None,
    pix: np.ndarray | None = None,
    miou: np.ndarray | None = None,
) -> AuditReport:
    """Summarise the audit: ``cos`` (embedding cosine distances) and/or ``pix``/``miou`` (prediction agreement), one
    value per ``sampled`` chip, in order. On an alarm, ``reasons`` says which tolerance failed and what to change."""
    cos = np.zeros(0) if cos is None else np.asarray(cos, np.float64)
    pix = np.zeros(0) if pix is None else np.asarray(pix, np.float64)
    miou = np.zeros(0) if miou is None else np.asarray(miou, np.float64)
    reasons = []
    advice = "cached outputs drift from fresh ones: lower chip.tau_chip or chip.max_age_days"
    if cos.size and _q(cos, 95) > cfg.tol_emb:  # type: ignore[operator]
        reasons.append(f"drift audit alarm: p95 cosine distance {_q(cos, 95):.4g} > tol_emb {cfg.tol_emb}; {advice}")
    if pix.size and _q(pix, 5) < cfg.tol_pix:  # type: ignore[operator]
        reasons.append(f"drift audit alarm: p5 pixel agreement {_q(pix, 5):.4g} < tol_pix {cfg.tol_pix}; {advice}")
    frac = np.asarray([d.changed_frac for d in sampled], np.float64)
    age = np.asarray([d.age_days or 0 for d in sampled], np.float64)

    def within(mask: np.ndarray) -> bool:
        return not ((cos.size and np.percentile(cos[mask], 95) > cfg.tol_emb) or
                    (pix.size and np.percentile(pix[mask], 5) < cfg.tol_pix))

    tau_ok = np.asarray([within(frac <= t) for t in np.unique(frac)], bool) if frac.size else np.zeros(0, bool)
    age_ok = np.asarray([within(age <= t) for t in np.unique(age)], bool) if age.size else np.zeros(0, bool)
    report = AuditReport(
        chips=len(sampled), strata=len({stratum(d, chip) for d in sampled}),
        cos_p50=_q(cos, 50), cos_p95=_q(cos, 95), pix_p5=_q(pix, 5), pix_p50=_q(pix, 50), pix_p95=_q(pix, 95),
        miou_p50=_q(miou, 50), alarm=bool(reasons), reasons=tuple(reasons),
        suggested_tau_chip=_largest_within(frac, tau_ok, chip.tau_chip),
        suggested_max_age_days=_largest_within(age, age_ok, chip.max_age_days),
    )
    return report

"""Drift audit: seeded sample, every non-empty stratum covered, an injected stale chip raises the alarm (test 10)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.change.audit import audit_report, audit_sample, cosine_distance, pixel_agreement, stratum
from pipeline.change.config import AuditConfig, ChipConfig
from pipeline.change.decision import ChipDecision

CHIP = ChipConfig(tau_chip=0.01, max_age_days=90)


def _reused(n: int, seed: int = 0) -> list[ChipDecision]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frac = float(rng.choice([0.0, 0.001, 0.004, 0.009]))
        age = int(rng.choice([3, 40, 80]))
        out.append(ChipDecision(f"chip{i:04d}", (0, 0, 8, 8), False, "unchanged" if frac == 0 else "below_tau",
                                frac, 0.0, 1.0, age))
    return out


def test_sample_is_reproducible_and_covers_every_non_empty_stratum() -> None:
    decisions = _reused(1000)
    cfg = AuditConfig(sample_frac=0.02, seed=0)
    a = audit_sample(decisions, cfg, CHIP, "tile-A/2024-05-01")
    b = audit_sample(decisions, cfg, CHIP, "tile-A/2024-05-01")
    assert [d.key for d in a] == [d.key for d in b]
    other = audit_sample(decisions, AuditConfig(sample_frac=0.02, seed=1), CHIP, "tile-A/2024-05-01")
    assert [d.key for d in other] != [d.key for d in a]
    strata = {stratum(d, CHIP) for d in decisions}
    assert len(strata) == 12 and {stratum(d, CHIP) for d in a} == strata
    assert 20 <= len(a) <= 20 + len(strata)  # ceil(2 % of 1000), rounded up per stratum
    rare = [*_reused(50), ChipDecision("odd", (0, 0, 8, 8), False, "below_tau", 0.002, 0.0, 1.0, 200)]
    assert "odd" in {d.key for d in audit_sample(rare, cfg, CHIP, "t")}  # a one-chip stratum is still sampled
    recomputed = ChipDecision("r", (0, 0, 8, 8), True, "changed", 0.5, 0.0, 1.0, 1)
    assert audit_sample([recomputed], cfg, CHIP, "t") == []


def test_an_injected_stale_chip_raises_the_alarm() -> None:
    sampled = _reused(40)
    rng = np.random.default_rng(0)
    fresh = rng.normal(size=(40, 16))
    cached = fresh + rng.normal(scale=1e-4, size=(40, 16))
    report = audit_report(sampled, AuditConfig(), CHIP, cos=cosine_distance(cached, fresh))
    assert not report.alarm and report.cos_p95 < 1e-3 and report.suggested_tau_chip == CHIP.tau_chip
    stale = cached.copy()
    stale[:3] = rng.normal(size=(3, 16))  # three chips whose cache no longer matches their input
    report = audit_report(sampled, AuditConfig(), CHIP, cos=cosine_distance(stale, fresh))
    assert report.alarm and report.cos_p95 > 0.02 and "p95 cosine distance" in report.reasons[0]


def test_prediction_agreement_alarm_and_metrics() -> None:
    fresh = np.zeros((10, 10), np.int64)
    fresh[:, 5:] = 1
    valid = np.ones((10, 10), bool)
    assert pixel_agreement(fresh, fresh, valid, 2) == (1.0, 1.0)
    stale = fresh.copy()
    stale[:, 5] = 0
    acc, miou = pixel_agreement(stale, fresh, valid, 2)
    assert acc == pytest.approx(0.9) and miou == pytest.approx((50 / 60 + 40 / 50) / 2)
    report = audit_report(_reused(5), AuditConfig(), CHIP, pix=[1.0, 1.0, 0.9, 1.0, 1.0], miou=[1, 1, 0.8, 1, 1])
    assert report.pix_p5 < 0.98 and report.alarm and "p5 pixel agreement" in report.reasons[0]

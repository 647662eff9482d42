"""Chip decision (tau_chip, max_age, versions, each on its own) and accounting (spec tests 8, 9)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.change.accounting import Accounting
from pipeline.change.config import ChipConfig
from pipeline.change.decision import CacheEntry, ChipWindow, chip_fractions, decide_chips

CHIPS = [ChipWindow("a", (0, 0, 10, 10)), ChipWindow("b", (10, 0, 10, 10))]
FRESH = {"a": CacheEntry(100, "m1", "p1"), "b": CacheEntry(100, "m1", "p1")}


def _decide(changed: np.ndarray, cache: dict[str, CacheEntry] = FRESH, day: int = 110, model: str = "m1",
            preproc: str = "p1", cfg: ChipConfig = ChipConfig(tau_chip=0.05, max_age_days=90)):  # noqa: B008
    none = np.zeros((10, 20), bool)
    return {d.key: d for d in decide_chips(CHIPS, changed=changed, newly_valid=none, valid_now=~none, cache=cache,
                                           day=day, model_version=model, preproc_version=preproc, cfg=cfg)}


def test_tau_chip() -> None:
    changed = np.zeros((10, 20), bool)
    changed[0, :5] = True  # 5 % of chip a: not above tau_chip 0.05
    got = _decide(changed)
    assert not got["a"].recompute and got["a"].reason == "below_tau" and got["a"].changed_frac == 0.05
    assert got["b"].reason == "unchanged"
    changed[1, 0] = True  # 6 %
    got = _decide(changed)
    assert got["a"].recompute and got["a"].reason == "changed" and not got["b"].recompute


def test_max_age() -> None:
    unchanged = np.zeros((10, 20), bool)
    assert not _decide(unchanged, day=190)["a"].recompute  # 90 days: not older than max_age
    got = _decide(unchanged, day=191)
    assert got["a"].recompute and got["a"].reason == "age" and got["a"].age_days == 91


@pytest.mark.parametrize(("model", "preproc"), [("m2", "p1"), ("m1", "p2")])
def test_version_changes(model: str, preproc: str) -> None:
    got = _decide(np.zeros((10, 20), bool), model=model, preproc=preproc)
    assert all(d.recompute and d.reason == "version" for d in got.values())


def test_missing_cache_entry_and_invalid_now() -> None:
    changed = np.zeros((10, 20), bool)
    got = _decide(changed, cache={"a": FRESH["a"]})
    assert got["b"].reason == "no_cache" and got["a"].reason == "unchanged"
    none = np.zeros((10, 20), bool)
    clouded = decide_chips(CHIPS, changed=none, newly_valid=none, valid_now=none, cache=FRESH, day=110,
                           model_version="m1", preproc_version="p1", cfg=ChipConfig())
    assert {d.reason for d in clouded} == {"invalid_now"} and not any(d.recompute for d in clouded)


def test_chip_fractions_clip_windows_that_overhang_the_tile() -> None:
    mask = np.ones((10, 15), bool)
    assert chip_fractions(mask, [(10, 0, 10, 10), (0, 5, 10, 10)]).tolist() == [1.0, 1.0]


def test_accounting_adds_up() -> None:
    changed = np.zeros((10, 20), bool)
    changed[:, :3] = True  # chip a 30 % changed
    acc = Accounting()
    first = list(_decide(changed).values())
    second = list(_decide(np.zeros((10, 20), bool), day=300).values())  # both forced by age
    third = list(_decide(np.zeros((10, 20), bool), model="m9").values())
    for decisions in (first, second, third):
        acc.add(decisions, tau_chip=0.05)
    assert acc.chips_total == 6 and acc.chips_recomputed + acc.chips_reused == acc.chips_total
    assert (acc.chips_recomputed, acc.chips_reused) == (5, 1)
    assert acc.saved_frac == pytest.approx(1 - 5 / 6)
    assert acc.chips_forced_age == 2 and acc.chips_forced_version == 2
    assert acc.recomputed_by_reason == {"changed": 1, "age": 2, "version": 2}
    assert acc.reused_by_reason == {"unchanged": 1}
    out = acc.to_dict()
    assert out["saved_frac"] == round(1 - 5 / 6, 6) and out["chips_total"] == 6
    acc.model_seconds, acc.change_stage_cpu_seconds = 5.0, 0.5  # saved 1 chip x 1 s; stage 0.5 s -> ratio 0.5
    assert "ratio 0.50" in str(acc.cost_warning()) and acc.to_dict()["cost_warning"]
    acc.change_stage_cpu_seconds = 0.1
    assert acc.cost_warning() is None


def test_newly_valid_driven_chips_are_counted() -> None:
    newly = np.zeros((10, 20), bool)
    newly[:5, :10] = True  # half of chip a became visible after clouds
    decisions = decide_chips(CHIPS, changed=newly, newly_valid=newly, valid_now=np.ones((10, 20), bool),
                             cache=FRESH, day=110, model_version="m1", preproc_version="p1", cfg=ChipConfig())
    acc = Accounting()
    acc.add(decisions, tau_chip=0.005)
    assert acc.chips_newly_valid_driven == 1 and acc.recomputed_by_reason == {"changed": 1}


def test_chip_fractions_equal_a_direct_count_for_any_windows() -> None:
    rng = np.random.default_rng(0)
    for density in (0.0, 0.02, 0.5, 1.0):
        mask = rng.random((37, 53)) < density
        windows = [(int(c), int(r), int(w), int(h)) for c, r, w, h in zip(
            rng.integers(-20, 60, 40), rng.integers(-20, 45, 40), rng.integers(0, 40, 40), rng.integers(0, 40, 40),
            strict=True)]
        expected = []
        for c, r, w, h in windows:
            part = mask[max(r, 0) : max(r + h, 0), max(c, 0) : max(c + w, 0)]
            expected.append(part.mean() if part.size else 0.0)
        np.testing.assert_array_equal(chip_fractions(mask, windows), np.asarray(expected))
    assert chip_fractions(mask, []).shape == (0,)

"""Change scores, threshold and morphology, co-registration (spec tests 7, 12)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.change.config import IncrementalConfig, MorphologyConfig, TauPixConfig, incremental_config
from pipeline.change.coreg import phase_correlation_shift
from pipeline.change.decision import ChipWindow, decide_chips
from pipeline.change.reference import ReferenceState
from pipeline.change.scores import change_score, embed_delta, index_delta, norm_diff, sar_logratio
from pipeline.change.stage import run_change_stage
from pipeline.change.threshold import changed_mask, otsu_threshold, pixel_threshold
from pipeline.change.validity import pixel_classes
from tests.pipeline.change._scenes import BANDS, alter_block, scene

CFG = IncrementalConfig(validity=incremental_config({"validity": {"source": "nodata"}}).validity)


def _reference(image: np.ndarray) -> ReferenceState:
    ref = ReferenceState.empty(CFG.n_obs, image.shape, image.dtype, {})
    ref.fold(image, np.ones(image.shape[1:], bool), 0)
    return ref


def _chips(h: int, w: int, size: int, overlap: int) -> list[ChipWindow]:
    step = size - overlap
    return [ChipWindow(f"{r}_{c}", (c, r, size, size)) for r in range(0, h - overlap, step)
            for c in range(0, w - overlap, step)]


def test_identical_images_score_zero_and_select_nothing() -> None:
    image = scene()
    ref = _reference(image)
    for score_id in ("norm_diff", "index_delta"):
        cfg = IncrementalConfig(validity=CFG.validity, change_score=score_id)
        result = run_change_stage(ref, image, np.ones(image.shape[1:], bool), bands=BANDS, cfg=cfg, halo=0)
        assert np.all(result.score == 0) and not result.changed.any()
        assert result.shift_px is not None and max(map(abs, result.shift_px)) < 0.05
        decisions = decide_chips(
            _chips(96, 128, 32, 8), changed=result.changed, newly_valid=result.classes.newly_valid,
            valid_now=result.valid_now, cache={}, day=1, model_version="m", preproc_version="p", cfg=cfg.chip,
        )
        assert {d.reason for d in decisions} == {"no_cache"}  # no cache yet: computed, although unchanged


def test_a_block_change_selects_exactly_the_chips_that_overlap_it() -> None:
    from pipeline.change.decision import CacheEntry

    image = scene()
    ref = _reference(image)
    rows, cols = slice(30, 50), slice(50, 61)  # 20 x 11 px; chips of 32 with 8 px overlap (stride 24)
    new = alter_block(image, rows, cols)
    result = run_change_stage(ref, new, np.ones(image.shape[1:], bool), bands=BANDS, cfg=CFG, halo=0)
    block = np.zeros(image.shape[1:], bool)
    block[rows, cols] = True
    assert np.array_equal(result.changed, block)
    chips = _chips(96, 128, 32, 8)
    cache = {c.key: CacheEntry(0, "m", "p") for c in chips}
    decisions = decide_chips(chips, changed=result.changed, newly_valid=result.classes.newly_valid,
                             valid_now=result.valid_now, cache=cache, day=1, model_version="m", preproc_version="p",
                             cfg=CFG.chip)
    picked = {d.key for d in decisions if d.recompute}
    expected = {c.key for c in chips if c.window[1] < 50 and c.window[1] + 32 > 30 and c.window[0] < 61
                and c.window[0] + 32 > 50}
    assert picked == expected and len(expected) == 6  # 2 chip rows (24 and 48 overlap strips) x 3 columns
    assert all(d.reason == "changed" for d in decisions if d.recompute)


def test_index_delta_is_robust_to_illumination_and_norm_diff_is_not() -> None:
    image = scene().astype(np.float32)
    brighter = image * 1.3  # a uniform gain (illumination): ratios do not move
    assert index_delta(brighter, image, BANDS).max() < 1e-5
    sigma = image.reshape(6, -1).std(axis=1)
    assert norm_diff(brighter, image, sigma).mean() > 0.2
    with pytest.raises(ValueError, match="red \\(B04\\) and near-infrared"):
        index_delta(image[:2], image[:2], ["B02", "B03"])


def test_sar_and_embedding_scores() -> None:
    db = np.full((2, 20, 20), -12.0, np.float32)
    later = db.copy()
    later[0, 5:15, 5:15] += 6.0  # +6 dB in VV
    d = sar_logratio(later, db, ["vv", "vh"])
    assert d[10, 10] == pytest.approx(6.0, abs=1e-4) and d[0, 0] == pytest.approx(0.0, abs=1e-6)
    f = np.ones((4, 5, 5), np.float32)
    g = f.copy()
    g[:, 2, 2] = [1, -1, 1, -1]
    e = embed_delta(g, f, (20, 20))
    assert e.shape == (20, 20) and e[9, 9] == pytest.approx(1.0) and e[0, 0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="stage-1 features"):
        change_score("embed_delta", db, db, bands=["vv"], sigma=np.ones(2))


def test_otsu_is_floored_and_opening_removes_speckle() -> None:
    rng = np.random.default_rng(0)
    unimodal = np.abs(rng.normal(0, 0.01, 10_000)).astype(np.float32)
    assert otsu_threshold(unimodal) < 0.05
    scored = np.ones(100, bool)
    assert pixel_threshold(unimodal[:100], scored, TauPixConfig(mode="otsu", floor=0.05)) == 0.05
    bimodal = np.concatenate([unimodal, 0.5 + unimodal[:2000]])
    t = otsu_threshold(bimodal)
    assert np.array_equal(bimodal > t, np.arange(bimodal.size) >= unimodal.size)  # the cut separates the two modes
    score = np.zeros((20, 20), np.float32)
    score[3, 3] = 1.0  # speckle
    score[10:15, 10:15] = 1.0
    classes = pixel_classes(np.ones((20, 20), bool), np.ones((20, 20), bool))
    changed = changed_mask(score, classes, 0.1, MorphologyConfig(open_px=3), halo=2)
    assert not changed[3, 3] and changed[8:17, 8:17].all() and changed.sum() == 81  # 5x5 block grown by 2


def test_a_one_pixel_shift_is_detected_and_forces_the_policy() -> None:
    image = scene(128, 128, seed=3)
    ref = _reference(image)
    shifted = np.roll(image, 1, axis=2)  # 1 px east
    dy, dx = phase_correlation_shift(shifted[3].astype(np.float32), image[3].astype(np.float32))
    assert abs(dy) < 0.25 and abs(dx - 1.0) < 0.25
    result = run_change_stage(ref, shifted, np.ones((128, 128), bool), bands=BANDS, cfg=CFG, halo=0)
    assert result.misregistered
    decisions = decide_chips(_chips(128, 128, 32, 0), changed=result.changed, newly_valid=result.classes.newly_valid,
                             valid_now=result.valid_now, cache={}, day=1, model_version="m", preproc_version="p",
                             cfg=CFG.chip, force="misregistered")
    assert all(d.recompute and d.reason == "misregistered" for d in decisions)


def test_unknown_config_keys_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tau'\] in incremental.chip"):
        incremental_config({"chip": {"tau": 0.1}})
    with pytest.raises(ValueError, match="change_score 'ndvi'"):
        incremental_config({"change_score": "ndvi"})
    cfg = incremental_config({"chip": {"tau_chip": 0.01}, "validity": {"scl_valid": [4, 5]}})
    assert cfg.chip.tau_chip == 0.01 and cfg.validity.scl_valid == (4, 5) and cfg.chip.max_age_days == 90


def test_index_delta_is_the_largest_index_difference_with_zero_denominators_at_zero() -> None:
    rng = np.random.default_rng(5)
    bands = ["B03", "B04", "B08", "B12"]
    x_t = rng.integers(0, 4, (4, 20, 30)).astype(np.float32)  # small values: many zero sums
    x_ref = rng.integers(0, 4, (4, 20, 30)).astype(np.float32)

    def nd(x: np.ndarray, a: int, b: int) -> np.ndarray:
        s = x[a] + x[b]
        return np.where(s != 0, (x[a] - x[b]) / np.where(s != 0, s, 1), 0).astype(np.float32)

    pairs = [(2, 1), (0, 2), (2, 3)]  # NDVI, NDWI, NBR in the channel order of `bands`
    expected = np.max([np.abs(nd(x_t, a, b) - nd(x_ref, a, b)) for a, b in pairs], axis=0)
    got = index_delta(x_t, x_ref, bands)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(index_delta(x_t.astype(np.uint16), x_ref, bands), expected)  # stored DNs too

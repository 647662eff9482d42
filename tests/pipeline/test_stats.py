"""Tests for pipeline.stats.BandStats: streaming, nodata-aware, mergeable, JSON-safe, hashable."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from pipeline.stats import BandStats

BANDS = ("B02", "B03", "B04")


def _chips(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 10000, size=(n, 3, 16, 16)).astype(np.uint16)
    valid = rng.random((n, 16, 16)) > 0.3
    for k in range(n):
        images[k][:, ~valid[k]] = 65535
    return images, valid


def _reference(images: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = [images[:, c][valid].astype(np.float64) for c in range(images.shape[1])]
    return (
        np.array([v.size for v in values]),
        np.array([v.mean() for v in values]),
        np.array([v.std() for v in values]),
    )


def test_one_pass_matches_numpy_and_excludes_nodata() -> None:
    images, valid = _chips(0, 5)
    stats = BandStats(BANDS)
    for image, mask in zip(images, valid, strict=True):
        stats.update(image, mask)
    count, mean, std = _reference(images, valid)
    np.testing.assert_array_equal(stats.count, count)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(stats.std, std, rtol=1e-10)
    assert stats.mean.max() < 10000  # the 65535 fill never leaked in


def test_merge_equals_one_pass() -> None:
    images, valid = _chips(1, 8)
    whole = BandStats(BANDS)
    whole.update(images, valid)  # (N, C, H, W) batch form
    parts = [BandStats(BANDS) for _ in range(3)]
    for k in range(8):
        parts[k % 3].update(images[k], valid[k])
    merged = BandStats(BANDS)
    for part in parts:
        merged.merge(part)
    np.testing.assert_array_equal(merged.count, whole.count)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.std, whole.std, rtol=1e-10)
    assert merged.stats_hash == whole.stats_hash


def test_nan_and_inf_are_excluded() -> None:
    image = np.full((1, 2, 2), 2.0, dtype=np.float32)
    image[0, 0, 0] = np.nan
    image[0, 0, 1] = np.inf
    stats = BandStats(["vv"])
    stats.update(image, np.ones((2, 2), dtype=bool))
    assert stats.count.tolist() == [2]
    assert stats.mean.tolist() == [2.0] and stats.std.tolist() == [0.0]


def test_large_offset_values_keep_precision() -> None:
    # Sum-of-squares in float64 would lose the variance here; Welford/Chan keeps it.
    image = (1e9 + np.array([[[0.0, 1.0], [2.0, 3.0]]])).astype(np.float64)
    stats = BandStats(["x"])
    stats.update(image, np.ones((2, 2), dtype=bool))
    assert stats.std[0] == pytest.approx(np.std([0.0, 1.0, 2.0, 3.0]), rel=1e-9)


def test_dict_round_trip_is_json_safe() -> None:
    images, valid = _chips(2, 3)
    stats = BandStats(BANDS)
    stats.update(images, valid)
    text = json.dumps(stats.to_dict())
    again = BandStats.from_dict(json.loads(text))
    np.testing.assert_array_equal(again.count, stats.count)
    np.testing.assert_array_equal(again.mean, stats.mean)
    np.testing.assert_array_equal(again.std, stats.std)
    assert again.stats_hash == stats.stats_hash == json.loads(text)["stats_hash"]


def test_empty_band_is_nan_and_none_in_json() -> None:
    stats = BandStats(["a", "b"])
    image = np.ones((2, 2, 2), dtype=np.uint16)
    stats.update(image, np.zeros((2, 2), dtype=bool))
    assert np.isnan(stats.mean).all()
    data = stats.to_dict()
    assert data["mean"] == [None, None] and data["count"] == [0, 0]
    json.dumps(data, allow_nan=False)
    merged = BandStats.from_dict(data).merge(stats)
    assert merged.count.tolist() == [0, 0]


def test_stats_hash_depends_on_names_and_values() -> None:
    images, valid = _chips(3, 2)
    a, b, c = BandStats(BANDS), BandStats(("B02", "B03", "B08")), BandStats(BANDS)
    a.update(images, valid)
    b.update(images, valid)
    c.update(images[:1], valid[:1])
    assert a.stats_hash != b.stats_hash
    assert a.stats_hash != c.stats_hash
    assert len(a.stats_hash) == 32


def test_shape_and_band_errors() -> None:
    stats = BandStats(BANDS)
    with pytest.raises(ValueError, match="channels"):
        stats.update(np.zeros((2, 4, 4)), np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="valid"):
        stats.update(np.zeros((3, 4, 4)), np.ones((5, 4), dtype=bool))
    with pytest.raises(ValueError, match="Cannot merge"):
        stats.merge(BandStats(["x"]))


def test_nan_mean_and_zero_std_warn_instead_of_silently_becoming_0_and_1() -> None:
    from pipeline.stats import normalization_constants, warn_degenerate
    from pipeline.warnings import DegenerateStatsWarning

    stats = BandStats(["empty", "flat", "ok"])
    image = np.stack([np.zeros((4, 4)), np.full((4, 4), 3.0), np.arange(16.0).reshape(4, 4)]).astype(np.float32)
    image[0] = np.nan  # no valid value in band "empty"
    stats.update(image, np.ones((4, 4), bool))
    with pytest.warns(DegenerateStatsWarning, match=r"2 band\(s\): empty: no valid pixel \(mean is NaN\); flat: "
                                                     r"constant values \(std 0\)"):
        assert warn_degenerate(stats, "collection 'x'") == ["empty: no valid pixel (mean is NaN)",
                                                            "flat: constant values (std 0)"]
    with pytest.warns(DegenerateStatsWarning, match="using mean 0 / std 1|uses mean 0 / std 1"):
        mean, std = normalization_constants(stats.to_dict()["mean"], stats.to_dict()["std"], stats.bands)
    assert mean.tolist()[:2] == [0.0, 3.0] and std.tolist()[:2] == [1.0, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalization_constants([1.0], [2.0])  # usable stats: silent

"""Reference state: rolling median of the last N clear observations, invalid pixels keep their state, storage."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.change.reference import ReferenceState, day_number


def test_rolling_median_of_the_last_n_valid_observations(tmp_path: Path) -> None:
    ref = ReferenceState.empty(3, (1, 2, 2), np.dtype(np.uint16), {"tile": "t"})
    all_valid = np.ones((2, 2), bool)
    only_left = np.array([[True, False], [True, False]])
    for value, valid, day in ((10, all_valid, 1), (20, all_valid, 2), (90, only_left, 3), (30, all_valid, 4)):
        ref.fold(np.full((1, 2, 2), value, np.uint16), valid, day)
    med = ref.median()
    # left column saw 10, 20, 90, 30 -> the last three are 20, 90, 30 -> 30; right column 10, 20, 30 -> 20
    np.testing.assert_array_equal(med[0], [[30, 20], [30, 20]])
    np.testing.assert_array_equal(ref.last_valid, [[4, 4], [4, 4]])
    ref.fold(np.full((1, 2, 2), 5, np.uint16), np.zeros((2, 2), bool), 5)  # a cloudy scene: nothing changes
    np.testing.assert_array_equal(ref.median()[0], [[30, 20], [30, 20]])
    np.testing.assert_array_equal(ref.last_valid, [[4, 4], [4, 4]])
    ref.save(tmp_path / "ref")
    back = ReferenceState.load(tmp_path / "ref")
    assert back.version == 5 and back.meta == {"tile": "t"}
    np.testing.assert_array_equal(back.median(), ref.median())
    back.fold(np.full((1, 2, 2), 7, np.uint16), all_valid, 6)  # left column writes slot 4 % 3, right 3 % 3
    assert back.dirty == {0, 1}
    clean = (tmp_path / "ref" / "obs_2.npy").stat().st_ino
    back.save(tmp_path / "ref")  # replacing an existing state leaves no temporary siblings behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"]
    again = ReferenceState.load(tmp_path / "ref")
    np.testing.assert_array_equal(again.obs, back.obs)  # clean slots were linked, the dirty one rewritten
    assert (tmp_path / "ref" / "obs_2.npy").stat().st_ino == clean  # the unchanged slot is the same file


def test_median_in_strips_equals_one_pass() -> None:
    rng = np.random.default_rng(0)
    ref = ReferenceState.empty(4, (2, 600, 7), np.dtype(np.uint16), {})
    for day in range(3):
        ref.fold(rng.integers(1, 1000, (2, 600, 7)).astype(np.uint16), rng.random((600, 7)) > 0.3, day)
    assert np.array_equal(ref.median(), ref.median(slice(0, 600)))
    never = ~ref.valid
    assert np.all(ref.median()[:, never] == 0)


def test_a_scene_on_another_grid_is_refused() -> None:
    ref = ReferenceState.empty(1, (1, 4, 4), np.dtype(np.uint16), {})
    with pytest.raises(ValueError, match="tile grid changed"):
        ref.fold(np.zeros((1, 5, 4), np.uint16), np.ones((5, 4), bool), 0)
    with pytest.raises(FileNotFoundError, match="no reference state"):
        ReferenceState.load("/nonexistent/ref")


def test_day_number() -> None:
    assert day_number(date(1970, 1, 11)) == 10
    assert day_number(datetime(2024, 1, 2, 23, tzinfo=UTC)) - day_number(date(2024, 1, 1)) == 1


@pytest.mark.parametrize("n_obs", [1, 2, 3, 4, 5, 6])
def test_median_equals_numpy_median_of_the_filled_slots(n_obs: int) -> None:
    """The min/max network (up to 4 values) and the sort (more) give the exact median for every count, including
    pixels that have fewer observations than their neighbours and pixels never observed (0)."""
    rng = np.random.default_rng(n_obs)
    ref = ReferenceState.empty(n_obs, (2, 30, 11), np.dtype(np.uint16), {})
    for day in range(n_obs + 2):
        image = rng.integers(0, 65535, (2, 30, 11)).astype(np.uint16)
        valid = rng.random((30, 11)) > 0.3
        valid[0, 0] = False  # never observed
        ref.fold(image, valid, day)
        med = ref.median()
        for r in range(30):
            for c in range(11):
                k = min(int(ref.count[r, c]), n_obs)
                expected = np.median(ref.obs[:k, :, r, c].astype(np.float64), axis=0) if k else np.zeros(2)
                np.testing.assert_array_equal(med[:, r, c], expected.astype(np.float32))
    assert med.dtype == np.float32 and np.all(med[:, 0, 0] == 0)


def test_median_of_strided_rows_and_columns_equals_the_slice() -> None:
    rng = np.random.default_rng(3)
    ref = ReferenceState.empty(4, (3, 530, 40), np.dtype(np.uint16), {})
    for day in range(3):
        ref.fold(rng.integers(1, 5000, (3, 530, 40)).astype(np.uint16), rng.random((530, 40)) > 0.2, day)
    full = ref.median()
    np.testing.assert_array_equal(ref.median(rows=slice(None, None, 4), cols=slice(None, None, 4)),
                                  full[:, ::4, ::4])
    np.testing.assert_array_equal(ref.median(rows=slice(3, 500, 7), cols=slice(5, 31)), full[:, 3:500:7, 5:31])
    with pytest.raises(ValueError, match="positive step"):
        ref.median(rows=slice(None, None, -1))

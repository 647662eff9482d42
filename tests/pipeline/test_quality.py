"""Tests for pipeline.quality: SCL classes and Landsat qa_pixel bits to cloud/nodata masks and percentages."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.quality import SCL_CLOUD_CLASSES, cloud_percent, nodata_percent, quality_fill, quality_masks


def test_scl_classes() -> None:
    scl = np.arange(12, dtype=np.uint8)
    cloud, nodata = quality_masks("scl", scl)
    assert set(np.flatnonzero(cloud).tolist()) == {1, 3, 8, 9, 10} == set(SCL_CLOUD_CLASSES)
    assert np.flatnonzero(nodata).tolist() == [0]


@pytest.mark.parametrize(
    ("value", "cloud", "nodata"),
    [
        (0b0000_0000, False, False),
        (0b0000_0001, False, True),  # bit 0 fill
        (0b0000_0010, True, False),  # bit 1 dilated cloud
        (0b0000_0100, False, False),  # bit 2 cirrus: not counted
        (0b0000_1000, True, False),  # bit 3 cloud
        (0b0001_0000, True, False),  # bit 4 cloud shadow
        (0b0010_0000, False, False),  # bit 5 snow
        (0b0100_0000, False, False),  # bit 6 clear
        (21824, False, False),  # a real "clear land" qa_pixel value (bits 6, 8, 10, 12, 14)
        (22280, True, False),  # a real "high-confidence cloud" value (bits 3, 8, 9, 10, 12, 14)
        (0b0000_1001, False, True),  # fill wins over cloud
    ],
)
def test_landsat_qa_pixel_bits(value: int, cloud: bool, nodata: bool) -> None:
    c, n = quality_masks("landsat_qa_pixel", np.array([value], dtype=np.uint16))
    assert (bool(c[0]), bool(n[0])) == (cloud, nodata)


def test_rules_from_sensors_yaml_replace_the_defaults() -> None:
    scl = np.arange(12, dtype=np.uint8)
    cloud, nodata = quality_masks("scl", scl, cloud=(8, 9), nodata=(0, 1))
    assert np.flatnonzero(cloud).tolist() == [8, 9] and np.flatnonzero(nodata).tolist() == [0, 1]
    qa = np.array([0b0010, 0b0100, 0b1000_0000], dtype=np.uint16)
    cloud, nodata = quality_masks("landsat_qa_pixel", qa, cloud=(2,), nodata=(7,))  # cirrus as cloud, bit 7 as fill
    assert cloud.tolist() == [False, True, False] and nodata.tolist() == [False, False, True]
    assert quality_fill("scl") == 0 and quality_fill("landsat_qa_pixel") == 1
    assert quality_fill("landsat_qa_pixel", (7,)) == 128


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="landsat_qa_pixel"):
        quality_masks("fmask", np.zeros(3, dtype=np.uint8))  # type: ignore[arg-type]


def test_nodata_percent() -> None:
    valid = np.ones((4, 4), dtype=bool)
    valid[:, :1] = False
    assert nodata_percent(valid) == pytest.approx(25.0)
    assert nodata_percent(np.zeros((2, 2), dtype=bool)) == 100.0
    assert nodata_percent(np.ones((2, 2), dtype=bool)) == 0.0


def test_cloud_percent_counts_only_usable_pixels() -> None:
    usable = np.zeros((4, 4), dtype=bool)
    usable[:2] = True  # half the chip has data
    cloud = np.zeros((4, 4), dtype=bool)
    cloud[0] = True
    cloud[3] = True  # cloud flagged where there is no data: ignored
    assert cloud_percent(cloud, usable) == pytest.approx(50.0)
    assert cloud_percent(cloud, np.zeros((4, 4), dtype=bool)) == 0.0

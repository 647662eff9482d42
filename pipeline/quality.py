"""Per-chip quality statistics: nodata and cloud percentages from band masks and quality rasters.

Cloud comes from the item's quality raster, resampled (nearest) onto the chip grid:

* Sentinel-2 L2A ``SCL`` (Scene Classification Layer). Classes per the ESA Sentinel-2 L2A Product Specification
  (S2-PDGS-MPC-L2A-PDD, table "Scene Classification values"): 0 no data, 1 saturated or defective, 2 dark area
  pixels, 3 cloud shadows, 4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 8 cloud medium probability,
  9 cloud high probability, 10 thin cirrus, 11 snow. Cloud = {1, 3, 8, 9, 10}, the set stacchip uses.
* Landsat Collection 2 ``qa_pixel`` bit flags (USGS Landsat 8-9 C2 L2 Science Product Guide, LSDS-1619, and the
  item's ``classification:bitfields``): bit 0 fill, bit 1 dilated cloud, bit 3 cloud, bit 4 cloud shadow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.records import QualityKind

__all__ = [
    "LANDSAT_QA_CLOUD_BITS",
    "LANDSAT_QA_FILL_BIT",
    "SCL_CLOUD_CLASSES",
    "SCL_NODATA",
    "cloud_percent",
    "nodata_percent",
    "quality_fill",
    "quality_masks",
]

SCL_NODATA = 0
SCL_CLOUD_CLASSES: frozenset[int] = frozenset({1, 3, 8, 9, 10})
LANDSAT_QA_FILL_BIT = 0
LANDSAT_QA_CLOUD_BITS: tuple[int, ...] = (1, 3, 4)  # dilated cloud, cloud, cloud shadow


def _rule(kind: QualityKind, cloud: Sequence[int], nodata: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    match kind:
        case "scl":
            defaults = (tuple(sorted(SCL_CLOUD_CLASSES)), (SCL_NODATA,))
        case "landsat_qa_pixel":
            defaults = (LANDSAT_QA_CLOUD_BITS, (LANDSAT_QA_FILL_BIT,))
        case _:
            raise ValueError(f"Unknown quality raster kind {kind!r}; expected 'scl' or 'landsat_qa_pixel'.")
    return tuple(cloud) or defaults[0], tuple(nodata) or defaults[1]


def quality_masks(
    kind: QualityKind, qa: np.ndarray, *, cloud: Sequence[int] = (), nodata: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Cloud and no-data masks of a quality raster.

    Args:
        kind: ``"scl"`` (Sentinel-2 scene classification) or ``"landsat_qa_pixel"`` (bit flags).
        qa: the quality raster, any shape, integer dtype.
        cloud: class values (``scl``) or bit numbers (``landsat_qa_pixel``) that mean cloud, as ``sensors.yaml``
            gives them; empty: the module defaults.
        nodata: likewise for no data.

    Returns:
        ``(cloud, nodata)`` bool arrays of ``qa``'s shape.
    """
    cloud_rule, nodata_rule = _rule(kind, cloud, nodata)
    if kind == "scl":
        return np.isin(qa, np.asarray(cloud_rule, dtype=np.int64)), np.isin(qa, np.asarray(nodata_rule, dtype=np.int64))
    bits = qa.astype(np.uint32, copy=False)
    missing = (bits & np.uint32(sum(1 << b for b in nodata_rule))) != 0
    flagged = (bits & np.uint32(sum(1 << b for b in cloud_rule))) != 0
    return flagged & ~missing, missing


def quality_fill(kind: QualityKind, nodata: Sequence[int] = ()) -> int:
    """The quality value that means "no data", for target pixels outside the quality raster's extent."""
    _, nodata_rule = _rule(kind, (), nodata)
    return nodata_rule[0] if kind == "scl" else 1 << nodata_rule[0]


def nodata_percent(valid: np.ndarray) -> float:
    """Percentage of pixels that are not valid (0 for an all-valid chip, 100 for an empty one)."""
    if valid.size == 0:
        return 100.0
    return float(100.0 * (1.0 - np.count_nonzero(valid) / valid.size))


def cloud_percent(cloud: np.ndarray, usable: np.ndarray) -> float:
    """Percentage of usable pixels flagged as cloud.

    The denominator is the pixels with data (bands valid and quality raster not nodata), so a half-empty chip that is
    all cloud reports 100. A chip without any usable pixel reports 0; its ``nodata_pct`` of 100 decides its fate.

    Args:
        cloud: ``(H, W)`` bool cloud mask.
        usable: ``(H, W)`` bool mask of pixels with data.
    """
    n = np.count_nonzero(usable)
    if n == 0:
        return 0.0
    return float(100.0 * np.count_nonzero(cloud & usable) / n)

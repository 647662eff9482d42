"""Validity masks and pixel classes (docs/change-aware.md §Validity masks).

A pixel carries information when it has data in every band and the quality source calls it clear; clouds and
shadows are dilated (their edges are hazy). Compared with the reference, a pixel is *scored* (valid in both), *newly
valid* (valid now, never clear in the reference: counted as changed) or *uninformative* (invalid now: never changed,
its cached output stays and ages).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.change.config import ValidityConfig
from pipeline.change.morphology import dilate

__all__ = ["PixelClasses", "pixel_classes", "validity_mask"]


def validity_mask(
    data_valid: np.ndarray,
    cfg: ValidityConfig,
    *,
    scl: np.ndarray | None = None,
    cloud_prob: np.ndarray | None = None,
) -> np.ndarray:
    """``(H, W)`` bool: True where the pixel has data and is clear.

    Args:
        data_valid: ``(H, W)`` True where every band has data (the shards' ``valid``).
        cfg: which quality source, its valid classes or probability cut, and the dilation radius.
        scl: ``(H, W)`` Sentinel-2 scene classification, needed for ``source: scl``.
        cloud_prob: ``(H, W)`` s2cloudless probability in [0, 1], needed for ``source: s2cloudless``.

    Raises:
        ValueError: the configured source's raster was not given (the message names it).
    """
    match cfg.source:
        case "nodata":
            return data_valid.copy()
        case "scl":
            if scl is None:
                raise ValueError(
                    "validity.source is 'scl' but the scene has no SCL raster; use validity.source: nodata (no cloud "
                    "masking) or s2cloudless with a probability raster"
                )
            unclear = ~np.isin(scl, np.asarray(cfg.scl_valid))
        case "s2cloudless":
            if cloud_prob is None:
                raise ValueError("validity.source is 's2cloudless' but no cloud probability raster was given")
            unclear = ~(cloud_prob < cfg.cloud_prob_max)
        case _:
            raise ValueError(f"validity.source {cfg.source!r} is not one of scl, s2cloudless, nodata")
    unclear &= data_valid  # no-data is invalid anyway; dilating it would eat valid pixels along scene edges
    return data_valid & ~dilate(unclear, cfg.dilate_px)


@dataclass(frozen=True)
class PixelClasses:
    """The three pixel classes of one scene against the reference, each ``(H, W)`` bool."""

    scored: np.ndarray
    newly_valid: np.ndarray
    invalid_now: np.ndarray


def pixel_classes(valid_now: np.ndarray, valid_ref: np.ndarray) -> PixelClasses:
    """Split pixels into scored (valid in both), newly valid (only now) and invalid now."""
    return PixelClasses(scored=valid_now & valid_ref, newly_valid=valid_now & ~valid_ref, invalid_now=~valid_now)


"""The change stage of one scene against its tile's reference: validity → co-registration → score → threshold and
morphology → changed mask (docs/change-aware.md §Pipeline design). The chip decision (:mod:`pipeline.change.decision`)
runs on its result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.change.config import IncrementalConfig
from pipeline.change.coreg import misregistration
from pipeline.change.reference import ReferenceState
from pipeline.change.scores import NIR, RED, band_index, change_score
from pipeline.change.threshold import changed_mask, pixel_threshold
from pipeline.change.validity import PixelClasses, pixel_classes, validity_mask

__all__ = ["ChangeResult", "run_change_stage"]

_MIN_COREG_PIXELS = 64 * 64  # fewer common valid pixels than this: the phase correlation says nothing


@dataclass(frozen=True)
class ChangeResult:
    """Everything the change stage found for one scene (masks ``(H, W)``)."""

    valid_now: np.ndarray
    classes: PixelClasses
    score: np.ndarray
    tau_pix: float
    changed: np.ndarray
    shift_px: tuple[float, float] | None
    misregistered: bool
    cpu_seconds: float

    @property
    def changed_pixel_frac(self) -> float:
        """Changed pixels over valid-now pixels."""
        n = int(self.valid_now.sum())
        return 0.0 if n == 0 else float((self.changed & self.valid_now).sum()) / n


def _coreg_band(bands: Sequence[str]) -> int:
    found = band_index(bands, NIR)
    found = band_index(bands, RED) if found is None else found
    return 0 if found is None else found


def run_change_stage(
    reference: ReferenceState,
    image: np.ndarray,
    data_valid: np.ndarray,
    *,
    bands: Sequence[str],
    cfg: IncrementalConfig,
    halo: int,
    scl: np.ndarray | None = None,
    cloud_prob: np.ndarray | None = None,
    features: tuple[np.ndarray, np.ndarray] | None = None,
) -> ChangeResult:
    """Compare one scene with the tile's reference.

    Args:
        reference: the tile's state (empty on its first scene: every valid pixel is then newly valid); it may keep
            only the score's bands (:func:`pipeline.change.scores.score_bands`).
        image: ``(C, H, W)`` the scene on the tile grid (stored units), all bands.
        data_valid: ``(H, W)`` pixels with data in every band.
        bands: band names in channel order (for the index and co-registration bands).
        cfg: the ``incremental:`` configuration.
        halo: the model's halo in pixels (R in sub-chip crop mode, 0 for chip-level reuse).
        scl, cloud_prob: the quality raster of ``cfg.validity.source``.
        features: stage-1 features of scene and reference, for ``embed_delta``.
    """
    start = time.process_time()
    valid_now = validity_mask(data_valid, cfg.validity, scl=scl, cloud_prob=cloud_prob)
    classes = pixel_classes(valid_now, reference.valid)
    h, w = valid_now.shape
    score = np.zeros((h, w), np.float32)
    shift: tuple[float, float] | None = None
    misregistered = False
    tau = float(cfg.tau_pix.value)
    if classes.scored.any():
        kept = reference.meta.get("band_index")
        names = list(bands) if kept is None else [bands[i] for i in kept]
        x_t = reference.bands_of(image)
        x_ref = reference.median()  # (C_kept, H, W) float32
        if classes.scored.sum() >= _MIN_COREG_PIXELS:
            b = _coreg_band(names)
            shift, misregistered = misregistration(x_t[b], x_ref[b], classes.scored, cfg.coreg.max_shift_px)
        score = change_score(cfg.change_score, x_t, x_ref, bands=names, sigma=reference.sigma, features=features)
        score = np.asarray(score, np.float32)  # every score returns a fresh float32 map: zeroed in place
        score[~classes.scored] = 0.0
        tau = pixel_threshold(score, classes.scored, cfg.tau_pix)
    changed = changed_mask(score, classes, tau, cfg.morphology, halo)
    return ChangeResult(
        valid_now=valid_now, classes=classes, score=score, tau_pix=tau, changed=changed, shift_px=shift,
        misregistered=misregistered, cpu_seconds=time.process_time() - start,
    )

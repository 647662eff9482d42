"""write_changed_copy: a later copy of a real-format S2 item with one block changed, and its ground-truth mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.change.config import IncrementalConfig, ValidityConfig
from pipeline.change.coreg import misregistration, phase_correlation_shift
from pipeline.change.reference import ReferenceState
from pipeline.change.stage import run_change_stage
from pipeline.items import resolve_item
from pipeline.stac import read_catalog
from pipeline.synthetic_change import write_changed_copy
from pipeline.tiling import cut_item

SYNTHETIC = Path(__file__).resolve().parents[1] / "data" / "synthetic"


def _s2_item() -> dict:
    return next(it for it in read_catalog(SYNTHETIC / "items-fc.json").items if it["collection"] == "sentinel-2-l2a")


def test_changed_copy_alters_exactly_the_block_and_is_detected(tmp_path: Path) -> None:
    base = _s2_item()
    copy = write_changed_copy(base, tmp_path / "later", fraction=0.1, days_later=5, seed=1)
    a, b = resolve_item(base), resolve_item(copy.item)
    assert (b.datetime - a.datetime).days == 5 and b.item_id != a.item_id
    assert [x.name for x in b.bands] == [x.name for x in a.bands] and b.quality is not None
    (chip_a,) = cut_item(a, chip_size=128)
    (chip_b,) = cut_item(b, chip_size=128)
    with rasterio.open(copy.change_mask_path) as ds:
        mask = ds.read(1).astype(bool)
        assert ds.crs.to_epsg() == 32618 and ds.shape == (128, 128)
    r0, c0, r1, c1 = copy.block
    assert (r1 - r0) * (c1 - c0) == round(np.sqrt(0.1 * 128 * 128)) ** 2
    differs = (chip_a.image != chip_b.image).any(axis=0)
    assert np.array_equal(differs, mask) and mask.sum() == copy.changed_pixels > 0
    assert not (mask & ~chip_a.valid).any()  # only pixels with data in every band are altered
    assert not mask[:r0].any() and not mask[r1:].any()

    # The change stage finds it (index_delta, default threshold), and does not mistake it for a misregistration
    # although it moves the whitened phase-correlation peak of the co-registration band.
    bands = [x.name for x in a.bands]
    nir = bands.index("B08")
    valid = chip_a.valid & chip_b.valid
    peak = phase_correlation_shift(chip_b.image[nir].astype(float), chip_a.image[nir].astype(float), valid)
    assert max(map(abs, peak)) > 0.5
    assert not misregistration(chip_b.image[nir].astype(float), chip_a.image[nir].astype(float), valid, 0.5)[1]
    cfg = IncrementalConfig(validity=ValidityConfig(source="nodata"))
    ref = ReferenceState.empty(cfg.n_obs, chip_a.image.shape, chip_a.image.dtype, {})
    ref.fold(np.ascontiguousarray(chip_a.image), chip_a.valid, 0)
    result = run_change_stage(ref, np.ascontiguousarray(chip_b.image), chip_b.valid, bands=bands, cfg=cfg, halo=0)
    assert not result.misregistered
    np.testing.assert_array_equal(result.changed & valid, mask & valid)


def test_bad_fraction_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        write_changed_copy(_s2_item(), tmp_path, fraction=0.0, days_later=1)

"""Decay fields and heat-diffusion responses per stage, and their PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rsvheat
from rsvheat.interpret import stage_heat_maps, write_heat_map_pngs
from rsvheat.models.vheat import stage_sizes


def _model(**kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = rsvheat.create_model("vheat_test", **kwargs).eval()
    with torch.no_grad():  # a visibly diffusing operator: k ≈ 0.2–0.5 instead of ≈ 0 at init
        for stage in model.stages:
            for block in stage.blocks:
                if block.hco.to_k is not None:
                    block.hco.to_k.bias.uniform_(0.2, 0.5)
    return model


@pytest.mark.parametrize("kwargs", [{}, {"fixed_k": 0.5}])
def test_stage_maps_have_stage_shapes_and_peak_at_the_point(kwargs: dict[str, object]) -> None:
    model = _model(**kwargs)
    size, point = (72, 56), (41, 13)
    maps = stage_heat_maps(model, size, point)
    assert [m.size for m in maps] == stage_sizes(*size)
    for entry, dim in zip(maps, model.dims, strict=True):
        h, w = entry.size
        assert entry.decay.shape == (h, w, dim if not kwargs else 1)
        assert entry.decay.dtype == torch.float32
        assert entry.decay[0, 0].eq(1.0).all()  # DC is never damped
        assert (entry.decay > 0).all() and (entry.decay <= 1).all()
        assert entry.point == (point[0] // entry.stride, point[1] // entry.stride)
        assert entry.response.shape == (h, w)
        # NOTE: with a wide kernel (2k > 1 px²) heat piles up against an insulated border next to the point, so
        # the peak sits at the point only while the spread is small against the distance to the border.
        peak = divmod(int(entry.response.argmax()), w)
        assert peak == entry.point
        assert entry.response.sum().item() == pytest.approx(1.0, abs=1e-5)  # heat is conserved
    assert maps[0].response.max() < 0.9  # it really diffused


def test_fused_model_gives_the_same_maps() -> None:
    model = _model()
    before = stage_heat_maps(model, 64, (10, 50))
    model.fuse_decay(drop_fve=True)
    after = stage_heat_maps(model, 64, (10, 50))
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a.decay, b.decay) and torch.allclose(a.response, b.response, atol=1e-6)


def test_pngs_exist_have_the_chip_size_and_peak_at_the_point(tmp_path: Path) -> None:
    model = _model()
    chip = torch.rand(4, 80, 64)
    point = (23, 47)
    maps = stage_heat_maps(model, tuple(chip.shape[-2:]), point)
    paths = write_heat_map_pngs(chip, maps, tmp_path / "maps", rgb_bands=(2, 1, 0))
    assert len(paths) == 2 * len(maps)
    for path in paths:
        assert path.is_file()
        with Image.open(path) as image:
            assert image.size == (64, 80) and image.mode == "RGB"
    # On a blank chip the overlay brightness follows the response: brightest near the point at stage 0.
    blank = np.zeros((1, 80, 64), dtype=np.float32)
    written = write_heat_map_pngs(blank, maps[:1], tmp_path / "blank", alpha=1.0)
    with Image.open(written[0]) as image:
        brightness = np.asarray(image, dtype=np.float64).sum(axis=-1)
    row, col = divmod(int(brightness.argmax()), brightness.shape[1])
    assert abs(row - point[0]) <= maps[0].stride and abs(col - point[1]) <= maps[0].stride


def test_point_outside_the_chip_is_rejected() -> None:
    with pytest.raises(ValueError, match="outside the 64×64 chip"):
        stage_heat_maps(_model(), 64, (64, 3))

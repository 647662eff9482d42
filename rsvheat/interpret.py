"""Interpretability for vHeat: learned decay fields and heat-diffusion responses per stage, written as PNGs.

Each HCO multiplies the cosine spectrum of its input by ``exp(−k ⊙ Λ)``. The decay field shows which frequencies a
block damps (axes are frequency indices ``n, m``, not pixels). The response shows how heat put at one point of the
input chip spreads through one block's operator at each stage's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rsvheat.layers.heat2d import apply_decay
from rsvheat.models._backbone import format_size, stage_sizes
from rsvheat.models.vheat import VHeat

__all__ = ["StageHeatMaps", "stage_heat_maps", "write_heat_map_pngs"]

# Anchor colours of a perceptually ordered dark-to-bright palette (close to matplotlib's "inferno").
_PALETTE = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)


@dataclass(frozen=True)
class StageHeatMaps:
    """One stage's decay field and impulse response.

    Attributes:
        stage: stage index.
        size: stage map size ``(H_i, W_i)`` for the given input size.
        stride: input pixels per stage cell.
        point: the impulse location on the stage grid ``(row, col)``.
        decay: ``(H_i, W_i, C_i)`` decay ``exp(−k ⊙ Λ)`` of the chosen block, indexed by frequency ``(n, m)``.
        decay_mean: ``(H_i, W_i)`` channel mean of ``decay``.
        response: ``(H_i, W_i)`` channel mean of the diffused impulse, in stage-grid pixels.
    """

    stage: int
    size: tuple[int, int]
    stride: int
    point: tuple[int, int]
    decay: torch.Tensor
    decay_mean: torch.Tensor
    response: torch.Tensor


@torch.no_grad()
def stage_heat_maps(
    model: VHeat, image_size: int | tuple[int, int], point: tuple[int, int], *, block: int = 0
) -> list[StageHeatMaps]:
    """Per stage, the learned decay of one block and its response to an impulse at ``point`` of the input chip.

    The impulse is placed in the stage cell that covers input pixel ``point`` (``row // stride``,
    ``col // stride``) and diffused with that block's decay at the stage size of this input.

    Args:
        model: a vHeat / RS-vHeat model (training or fused inference mode).
        image_size: input chip size ``H`` or ``(H, W)``.
        point: ``(row, col)`` in input pixels.
        block: block index within each stage (negative counts from the end).

    Returns:
        One :class:`StageHeatMaps` per stage.
    """
    height, width = format_size(image_size)
    row, col = point
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"point {point} lies outside the {height}×{width} chip; use 0 <= row < H, 0 <= col < W.")
    results = []
    for i, (stage, (h, w)) in enumerate(zip(model.stages, stage_sizes(height, width, len(model.stages)), strict=True)):
        hco = stage.blocks[block].hco
        fve = None if hco.has_decay(h, w) else stage.embedding("fve", h, w)
        decay = hco.resolve_decay(h, w, fve).float()
        decay = decay.expand(h, w, decay.shape[-1])  # (H, W, 1) for fixed_k stays one channel
        stride = 4 * 2**i
        cell = (min(row // stride, h - 1), min(col // stride, w - 1))
        impulse = torch.zeros(1, h, w, decay.shape[-1], device=decay.device)  # (1, H_i, W_i, C_i)
        impulse[0, cell[0], cell[1], :] = 1.0
        spread = apply_decay(impulse, decay, dct_impl=hco.dct_impl, fft_threshold=hco.fft_threshold)
        results.append(
            StageHeatMaps(
                stage=i,
                size=(h, w),
                stride=stride,
                point=cell,
                decay=decay.cpu(),
                decay_mean=decay.mean(dim=-1).cpu(),
                response=spread[0].mean(dim=-1).cpu(),  # (1, H, W, C) -> (H, W)
            )
        )
    return results


def _colorize(values: np.ndarray) -> np.ndarray:
    """Map ``(H, W)`` values to ``(H, W, 3)`` uint8 colours, stretched to the value range."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    position = scaled * (len(_PALETTE) - 1)
    index = np.clip(np.floor(position).astype(int), 0, len(_PALETTE) - 2)
    frac = (position - index)[..., None]
    colours = _PALETTE[index] * (1 - frac) + _PALETTE[index + 1] * frac
    return np.clip(np.rint(colours), 0, 255).astype(np.uint8)


def _chip_rgb(chip: np.ndarray, rgb_bands: tuple[int, int, int] | None) -> np.ndarray:
    """``(C, H, W)`` chip → ``(H, W, 3)`` uint8 with a 2–98 % stretch per band."""
    if rgb_bands is None:
        rgb_bands = (0, 1, 2) if chip.shape[0] >= 3 else (0, 0, 0)
    if max(rgb_bands) >= chip.shape[0]:
        raise ValueError(f"rgb_bands {rgb_bands} out of range for a chip with {chip.shape[0]} bands.")
    bands = chip[list(rgb_bands)].astype(np.float64)  # (3, H, W)
    out = np.empty(bands.shape[1:] + (3,), dtype=np.uint8)
    for i, band in enumerate(bands):
        finite = band[np.isfinite(band)]
        low, high = np.percentile(finite, (2, 98)) if finite.size else (0.0, 1.0)
        scaled = np.clip((np.nan_to_num(band, nan=low) - low) / max(high - low, 1e-12), 0, 1)
        out[..., i] = np.rint(scaled * 255).astype(np.uint8)
    return out


def _upsample(values: torch.Tensor, size: tuple[int, int], mode: str) -> np.ndarray:
    grid = values[None, None].float()  # (H_i, W_i) -> (1, 1, H_i, W_i)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(grid, size=size, mode=mode, **kwargs)[0, 0].numpy()


def write_heat_map_pngs(
    chip: torch.Tensor | np.ndarray,
    maps: list[StageHeatMaps],
    out_dir: str | Path,
    *,
    rgb_bands: tuple[int, int, int] | None = None,
    alpha: float = 0.6,
) -> list[Path]:
    """Write ``stage{i}_response.png`` (response over the chip) and ``stage{i}_decay.png`` per stage.

    Both have the chip's size. The response is bilinearly upsampled and alpha-blended over the stretched chip; the
    decay field is a frequency-domain map, so it is drawn on its own (nearest-neighbour upsampled), not over the chip.

    Args:
        chip: ``(C, H, W)`` input chip.
        maps: output of :func:`stage_heat_maps` for this chip's size.
        out_dir: folder to write into (created if missing).
        rgb_bands: chip bands shown as red, green, blue; default the first three (or band 0 as grey).
        alpha: opacity of the response overlay.

    Returns:
        The written paths, response then decay for each stage.
    """
    array = chip.detach().cpu().numpy() if isinstance(chip, torch.Tensor) else np.asarray(chip)
    if array.ndim != 3:
        raise ValueError(f"Expected a (C, H, W) chip, got shape {array.shape}.")
    size = (int(array.shape[1]), int(array.shape[2]))
    base = _chip_rgb(array, rgb_bands).astype(np.float64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in maps:
        response = _colorize(_upsample(entry.response, size, "bilinear")).astype(np.float64)
        blended = np.rint((1 - alpha) * base + alpha * response).astype(np.uint8)
        paths.append(out / f"stage{entry.stage}_response.png")
        Image.fromarray(blended).save(paths[-1])
        paths.append(out / f"stage{entry.stage}_decay.png")
        Image.fromarray(_colorize(_upsample(entry.decay_mean, size, "nearest"))).save(paths[-1])
    return paths

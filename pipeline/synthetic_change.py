"""A later acquisition of a scene with a known change: the same COGs, dated ``days_later``, with one block altered.

Used to benchmark incremental processing (benchmarks/incremental.py) and to build change-detection samples: the
returned change mask is the ground truth on the scene's own grid.

The block is a square of ``round(sqrt(fraction · H · W))`` pixels at a seeded random position inside the scene.
Optical scenes get a strong vegetation change in the near-infrared band (harmonised DNs, so the S2 offset is
respected): where NDVI was positive it becomes -0.5 (B08 = B04 / 3), elsewhere +0.7 (B08 = 5.67 · B04), so
|ΔNDVI| > 0.5 on every valid pixel of the block. SAR scenes get +6 dB in every polarisation. Other bands are copied
byte for byte. Only pixels with data in every band are altered (a pixel missing a band carries no information for
the change stage, docs/change-aware.md §Validity masks), and the mask marks exactly the altered pixels.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from pipeline.ids import safe_id
from pipeline.items import resolve_item
from pipeline.records import ResolvedBand, ResolvedItem
from pipeline.samples import write_cog
from pipeline.tiling import cut_item, scene_grid

__all__ = ["ChangedCopy", "write_changed_copy"]

_NDVI_LOW, _NDVI_HIGH = -0.5, 0.7  # targets: water-like where it was vegetated, dense vegetation elsewhere
_SAR_GAIN = 10.0 ** 0.6  # +6 dB in linear power


@dataclass(frozen=True)
class ChangedCopy:
    """What :func:`write_changed_copy` wrote: the STAC item (dict), its file, the mask and the block."""

    item: dict[str, Any]
    item_path: Path
    change_mask_path: Path
    block: tuple[int, int, int, int]  # (row0, col0, row1, col1) on the scene grid
    changed_pixels: int


def _local(href: str) -> Path:
    path = Path(href.removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"asset {href!r} is not a local file; write_changed_copy copies local COGs only")
    return path


def _band(item: ResolvedItem, *names: str) -> ResolvedBand | None:
    for band in item.bands:
        if band.name.lower() in names or (band.common_name or "").lower() in names:
            return band
    return None


def _block_on(src: Any, grid: Any, block: tuple[int, int, int, int]) -> tuple[slice, slice]:
    """The scene-grid block in the pixels of dataset ``src`` (another resolution of the same grid)."""
    r0, c0, r1, c1 = block
    x0, y0 = grid.transform @ (c0, r0)
    x1, y1 = grid.transform @ (c1, r1)
    inv = ~src.transform
    ca, ra = inv @ (x0, y0)
    cb, rb = inv @ (x1, y1)
    return (slice(max(0, round(min(ra, rb))), min(src.height, round(max(ra, rb)))),
            slice(max(0, round(min(ca, cb))), min(src.width, round(max(ca, cb)))))


def _read(band: ResolvedBand) -> tuple[np.ndarray, Any]:
    with rasterio.open(_local(band.href)) as src:
        return src.read(band.band_index), src.profile


def write_changed_copy(
    item: Mapping[str, Any],
    out_dir: str | Path,
    fraction: float,
    days_later: int,
    seed: int = 0,
    *,
    base_href: str | None = None,
) -> ChangedCopy:
    """Write a later copy of ``item`` with a block of ``fraction`` of its area changed.

    Args:
        item: a STAC item (dict) whose assets are local COGs (absolute hrefs, or relative with ``base_href``).
        out_dir: where the COGs, ``<id>.json`` and ``change_mask.tif`` go (created).
        fraction: changed area as a fraction of the scene, in (0, 1].
        days_later: the copy's acquisition is this many days after the source's.
        seed: block position.
        base_href: the item file's location, for relative asset hrefs.

    Raises:
        ValueError: a fraction outside (0, 1], or a scene with neither red + NIR bands on one grid nor SAR bands.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    resolved = resolve_item(dict(item), base_href=base_href)
    grid = scene_grid(resolved)
    side = min(round(math.sqrt(fraction * grid.width * grid.height)), grid.width, grid.height)
    rng = np.random.default_rng(seed)
    r0 = int(rng.integers(0, grid.height - side + 1))
    c0 = int(rng.integers(0, grid.width - side + 1))
    block = (r0, c0, r0 + side, c0 + side)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    new_id = safe_id(f"{resolved.item_id}-changed{fraction:g}-{days_later}d-s{seed}")
    altered: dict[str, tuple[np.ndarray, Any]] = {}
    mask = np.zeros((grid.height, grid.width), bool)
    (whole,) = cut_item(resolved, chip_size=max(grid.width, grid.height))  # one chip: every band on the scene grid
    data_valid = whole.valid[: grid.height, : grid.width]  # (H, W) True where every band has data
    del whole
    red, nir = _band(resolved, "b04", "red"), _band(resolved, "b08", "nir")
    sar = [b for b in resolved.bands if b.name.lower() in ("vv", "vh", "hh", "hv")]
    if red is not None and nir is not None:
        r, _ = _read(red)
        n, nir_profile = _read(nir)
        if r.shape != n.shape:
            raise ValueError(f"red {red.name} {r.shape} and NIR {nir.name} {n.shape} are on different grids")
        with rasterio.open(_local(nir.href)) as src:
            rows, cols = _block_on(src, grid, block)
        if n.shape != (grid.height, grid.width):
            raise ValueError(f"NIR band {nir.name} {n.shape} is not on the scene grid {(grid.height, grid.width)}")
        valid = data_valid
        r_h = r[rows, cols].astype(np.float64) + red.dn_offset  # harmonised DNs (the S2 baseline offset)
        n_h = n[rows, cols].astype(np.float64) + nir.dn_offset
        ndvi = np.divide(n_h - r_h, n_h + r_h, out=np.zeros_like(r_h), where=(n_h + r_h) != 0)
        target = np.where(ndvi > 0, _NDVI_LOW, _NDVI_HIGH)
        new_h = np.maximum(r_h, 1.0) * (1 + target) / (1 - target)
        new = np.clip(np.rint(new_h - nir.dn_offset), 1, np.iinfo(n.dtype).max if n.dtype.kind in "ui" else None)
        ok = valid[rows, cols]
        patch = n[rows, cols].copy()
        patch[ok] = new[ok].astype(n.dtype)
        n = n.copy()
        n[rows, cols] = patch
        altered[nir.asset_key] = (n, nir_profile)
        mask[rows, cols] = ok
    elif sar:
        for band in sar:
            x, profile = _read(band)
            with rasterio.open(_local(band.href)) as src:
                rows, cols = _block_on(src, grid, block)
            if x.shape != (grid.height, grid.width):
                raise ValueError(f"SAR band {band.name} {x.shape} is not on the scene grid")
            valid = data_valid & np.isfinite(x) & (x > 0)
            x = x.copy()
            sub = x[rows, cols]
            sub[valid[rows, cols]] *= _SAR_GAIN
            x[rows, cols] = sub
            altered[band.asset_key] = (x, profile)
            mask[rows, cols] |= valid[rows, cols]
    else:
        raise ValueError(
            f"item {resolved.item_id!r} has neither red + NIR bands ({[b.name for b in resolved.bands]}) nor SAR "
            "polarisations; write_changed_copy alters one of those"
        )
    hrefs = {b.asset_key: b.href for b in resolved.bands}
    if resolved.quality is not None:
        hrefs[resolved.quality.asset_key] = resolved.quality.href
    assets: dict[str, Any] = {}
    for key, asset in (item.get("assets") or {}).items():
        if key not in hrefs:
            continue  # previews, metadata: not part of the copy
        name = f"{safe_id(key)}.tif"
        if key in altered:
            pixels, profile = altered[key]
            write_cog(pixels, out / name, crs=profile["crs"], transform=profile["transform"],
                      nodata=profile.get("nodata"))
        else:
            shutil.copyfile(_local(hrefs[key]), out / name)
        assets[key] = {**asset, "href": f"./{name}"}
    with rasterio.open(
        out / "change_mask.tif", "w", driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint8",
        crs=rasterio.crs.CRS.from_epsg(grid.epsg), transform=grid.transform, tiled=True, blockxsize=256,
        blockysize=256, compress="deflate",
    ) as dst:
        dst.write(mask.astype(np.uint8)[None])  # (H, W) -> (1, H, W)
    when = (resolved.datetime + timedelta(days=days_later)).astimezone(UTC)
    properties = {k: v for k, v in (item.get("properties") or {}).items()
                  if k not in ("start_datetime", "end_datetime")}
    properties["datetime"] = when.isoformat().replace("+00:00", "Z")
    properties["rs:synthetic_change"] = {
        "source_item": resolved.item_id, "fraction": fraction, "changed_pixels": int(mask.sum()),
        "block_rows_cols": list(block), "days_later": days_later, "seed": seed, "mask": "./change_mask.tif",
    }
    item_path = out / f"{new_id}.json"
    new_item = {
        **{k: v for k, v in item.items() if k not in ("links", "assets", "properties", "id")},
        "id": new_id, "properties": properties, "assets": assets,
        "links": [{"rel": "self", "href": str(item_path.resolve()), "type": "application/geo+json"}],
    }
    item_path.write_text(json.dumps(new_item, indent=2))
    return ChangedCopy(item=new_item, item_path=item_path, change_mask_path=out / "change_mask.tif", block=block,
                       changed_pixels=int(mask.sum()))

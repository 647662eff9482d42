"""Hand-made S2-like scenes for the change-stage tests: smooth vegetation / soil / water patterns in DN."""

from __future__ import annotations

import numpy as np

BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]


def scene(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """``(6, h, w)`` uint16 reflectance-like DNs with texture and a vegetation gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    veg = 0.5 + 0.4 * np.sin(6 * xx) * np.cos(4 * yy)  # (h, w) in [0.1, 0.9]
    red = 600 + 1200 * (1 - veg) + rng.normal(0, 20, (h, w))
    nir = 1500 + 2500 * veg + rng.normal(0, 20, (h, w))
    out = np.stack([red * 0.8, red * 0.9, red, nir, nir * 0.6, red * 1.3])  # (6, h, w)
    return np.clip(out, 1, 10000).astype(np.uint16)


def alter_block(image: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """A copy with the block's NIR forced to a third of red: NDVI drops below -0.4 there (a strong change)."""
    out = image.copy()
    b4, b8 = BANDS.index("B04"), BANDS.index("B08")
    out[b8, rows, cols] = np.maximum(out[b4, rows, cols] // 3, 1)
    return out

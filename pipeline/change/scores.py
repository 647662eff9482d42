"""The four per-pixel change scores (docs/change-aware.md §Change score); one is chosen per run and recorded.

All take the scene and the reference on the same grid, ``(C, H, W)`` in the stored units (DN for optical, dB for SAR
after ingest), and return ``(H, W)`` float32 scores, 0 where the inputs give no answer (a zero denominator).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "band_index", "change_score", "embed_delta", "index_delta", "norm_diff", "sar_logratio", "score_bands",
]

# Band names per role: Sentinel-2 names first, then STAC common names (eo:bands).
GREEN, RED, NIR, SWIR2 = ("B03", "green"), ("B04", "red"), ("B08", "nir", "B8A", "nir08"), ("B12", "swir22")
SAR_POLS = ("vv", "vh", "hh", "hv")
SAR_BOXCAR = 5  # 5x5 boxcar speckle filter before the log ratio
_STRIP = 64  # rows per strip of a pointwise score: 64 x 10980 float32 temporaries fit in cache


def band_index(bands: Sequence[str], names: Sequence[str]) -> int | None:
    """Position of the first of ``names`` in ``bands`` (case-insensitive), or ``None``."""
    lowered = [b.lower() for b in bands]
    return next((lowered.index(n.lower()) for n in names if n.lower() in lowered), None)


def score_bands(score_id: str, bands: Sequence[str]) -> list[int] | None:
    """The channels a score reads (so the reference keeps only those), ``None`` for all of them."""
    match score_id:
        case "index_delta":
            found = [band_index(bands, names) for names in (GREEN, RED, NIR, SWIR2)]
            return sorted({i for i in found if i is not None})
        case "sar_logratio":
            return [i for i, b in enumerate(bands) if b.lower() in SAR_POLS] or None
        case _:
            return None


def norm_diff(x_t: np.ndarray, x_ref: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """d = √((1/B)·Σ_b ((x_t,b - x_ref,b)/sigma_b)²): cheap, sensitive to phenology and atmosphere."""
    diff = (x_t.astype(np.float32) - x_ref.astype(np.float32)) / sigma.astype(np.float32)[:, None, None]
    return np.sqrt(np.mean(diff * diff, axis=0)).astype(np.float32)  # (C, H, W) -> (H, W)


def _nd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b)/(a + b) in float32, 0 where a + b is 0 (inputs float32 already are not copied)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    s = a + b
    return np.divide(a - b, s, out=np.zeros_like(s), where=s != 0)


def _index_pairs(bands: Sequence[str]) -> list[tuple[int, int]]:
    """The (a, b) channels of each normalised difference (a - b)/(a + b) index_delta reads: NDVI, then NDWI and NBR
    when their bands exist."""
    red, nir, green, swir = (band_index(bands, n) for n in (RED, NIR, GREEN, SWIR2))
    if red is None or nir is None:
        raise ValueError(
            f"index_delta needs red (B04) and near-infrared (B08) bands; the data has {list(bands)}. Use "
            "change_score: norm_diff for other sensors."
        )
    pairs = [(nir, red)]  # NDVI = (B8 - B4)/(B8 + B4)
    if green is not None:
        pairs.append((green, nir))  # NDWI = (B3 - B8)/(B3 + B8)
    if swir is not None:
        pairs.append((nir, swir))  # NBR = (B8 - B12)/(B8 + B12); B12 is on the 10 m grid after ingest
    return pairs


def index_delta(x_t: np.ndarray, x_ref: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """d = max(|ΔNDVI|, |ΔNDWI|, |ΔNBR|) (those whose bands exist; NDVI is required): robust to illumination.

    Pointwise, so computed in strips of ``_STRIP`` rows (the float32 temporaries stay in cache), one index at a time
    into a running maximum; inputs in any numeric dtype are read as float32.
    """
    first, *rest = _index_pairs(bands)

    def delta(t: np.ndarray, ref: np.ndarray, a: int, b: int) -> np.ndarray:
        d = _nd(t[a], t[b])
        d -= _nd(ref[a], ref[b])
        return np.abs(d, out=d)

    out = np.empty(x_t.shape[-2:], np.float32)
    for r in range(0, out.shape[0], _STRIP):
        t, ref = x_t[:, r : r + _STRIP], x_ref[:, r : r + _STRIP]
        part = delta(t, ref, *first)
        for a, b in rest:
            np.maximum(part, delta(t, ref, a, b), out=part)
        out[r : r + _STRIP] = part
    return out


def embed_delta(f_t: np.ndarray, f_ref: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """d = 1 - cos(f(x_t), f(x_ref)) over channels of a cheap feature map ``(D, h, w)``, upsampled (nearest) to
    ``shape``."""
    f_t, f_ref = f_t.astype(np.float32), f_ref.astype(np.float32)
    norm = np.linalg.norm(f_t, axis=0) * np.linalg.norm(f_ref, axis=0)
    cos = np.divide((f_t * f_ref).sum(axis=0), norm, out=np.ones(norm.shape, np.float32), where=norm > 0)
    d = (1.0 - cos).astype(np.float32)  # (h, w)
    rows = np.minimum((np.arange(shape[0]) * d.shape[0]) // shape[0], d.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * d.shape[1]) // shape[1], d.shape[1] - 1)
    return d[rows][:, cols]  # (h, w) -> (H, W)


def sar_logratio(x_t: np.ndarray, x_ref: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """d = max over polarisations of |10·log10(sigma0_t/sigma0_ref)| after a 5x5 boxcar
    in linear power (inputs in dB)."""
    pols = [i for i, b in enumerate(bands) if b.lower() in SAR_POLS]
    if not pols:
        raise ValueError(f"sar_logratio needs SAR polarisation bands {SAR_POLS}; the data has {list(bands)}")
    out = []
    for i in pols:
        lin_t = ndimage.uniform_filter(10.0 ** (x_t[i].astype(np.float64) / 10.0), SAR_BOXCAR, mode="nearest")
        lin_r = ndimage.uniform_filter(10.0 ** (x_ref[i].astype(np.float64) / 10.0), SAR_BOXCAR, mode="nearest")
        out.append(np.abs(10.0 * np.log10(np.maximum(lin_t, 1e-10) / np.maximum(lin_r, 1e-10))))
    return np.max(np.stack(out), axis=0).astype(np.float32)  # (P, H, W) -> (H, W)


def change_score(
    score_id: str,
    x_t: np.ndarray,
    x_ref: np.ndarray,
    *,
    bands: Sequence[str],
    sigma: np.ndarray,
    features: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Dispatch on ``score_id`` (``norm_diff``, ``index_delta``, ``embed_delta``, ``sar_logratio``)."""
    match score_id:
        case "norm_diff":
            return norm_diff(x_t, x_ref, sigma)
        case "index_delta":
            return index_delta(x_t, x_ref, bands)
        case "embed_delta":
            if features is None:
                raise ValueError("embed_delta needs the stage-1 features of the scene and of the reference")
            return embed_delta(features[0], features[1], x_t.shape[-2:])
        case "sar_logratio":
            return sar_logratio(x_t, x_ref, bands)
        case _:
            raise ValueError(f"change score {score_id!r} is not one of norm_diff, index_delta, embed_delta, "
                             "sar_logratio")

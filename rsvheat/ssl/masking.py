"""Frequency-domain hierarchical masking: band-pass views of an image cut in its orthonormal DCT spectrum.

``docs/pretraining.md`` §2 describes the recipe and marks every design choice. In short, per sample:

1. pad ``(H, W)`` to the next powers of two (``pad_mode="zero"`` as upstream RS-vHeat, ``"reflect"``, or ``"none"``);
2. ``X = DCT2(x_pad)`` (orthonormal, ``rsvheat.layers.dct``), with invalid pixels set to 0 first;
3. ``D(u, v) = √(u² + v²)`` from DC in index units; cut radii ``r = ρ·√(H_p² + W_p²)`` with ``ρ = |g|``,
   ``g ~ N(μ, σ)``, clipped to ``[ρ_min, ρ_max]`` (``radius_mode="diag"``), or ``r = √(4a·H_p·W_p/π)`` with
   ``a ~ U(a_min, a_max)`` so the quarter disc holds a fraction ``a`` of the coefficients (``radius_mode="area"``);
4. ``num_bands = K`` nested views: ``D ≤ r₁``, ``r_k ≤ D ≤ r_{k+1}``, …, ``D ≥ r_{K−1}``; each keeps DC, and a
   coefficient exactly on a cut is kept on both sides (upstream's strict inequalities). With ``annulus=True`` the two
   views are "everything but a random annulus ``a₁ < D < a₂``" and "that annulus plus DC";
5. each view is ``crop_{H×W}(IDCT2(X ⊙ M_k))``.

The draw (:class:`MaskDraw`) holds relative radii only, so the optical and SAR parts of a pair share them even when
their chip sizes differ. Everything is deterministic for a given ``torch.Generator``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from rsvheat.layers.dct import dct2d, idct2d
from rsvheat.ssl._options import options_from_dict, options_to_dict

__all__ = [
    "FrequencyMasking",
    "MaskDraw",
    "MaskingConfig",
    "PadMode",
    "RadiusMode",
    "apply_valid",
    "band_masks",
    "frequency_distance",
    "pad_image",
    "padded_size",
    "valid_mask",
]

RadiusMode = Literal["diag", "area"]
PadMode = Literal["zero", "reflect", "none"]


@dataclass(frozen=True)
class MaskingConfig:
    """Options of the frequency masking (docs/pretraining.md §2); defaults reproduce upstream's demo.

    Args:
        radius_mode: ``"diag"`` (``r = ρ·diag``, upstream) or ``"area"`` (the quarter disc covers a fraction ``a``).
        pad_mode: ``"zero"`` (bottom/right zeros to powers of two, upstream), ``"reflect"`` or ``"none"``.
        num_bands: number ``K >= 2`` of nested band-pass views.
        annulus: two views "all but a random annulus" / "the annulus + DC" instead of nested discs (needs K = 2).
        rho_mean: ``μ_ρ`` of ``g ~ N(μ_ρ, σ_ρ)``, ``ρ = |g|``.
        rho_std: ``σ_ρ`` (unknown upstream; its demo uses 0.3).
        rho_min: lower clip of ``ρ``.
        rho_max: upper clip of ``ρ``.
        area_min: lower bound of ``a ~ U(area_min, area_max)`` in ``"area"`` mode.
        area_max: upper bound of ``a``.
    """

    radius_mode: RadiusMode = "diag"
    pad_mode: PadMode = "zero"
    num_bands: int = 2
    annulus: bool = False
    rho_mean: float = 0.1
    rho_std: float = 0.3
    rho_min: float = 0.02
    rho_max: float = 0.5
    area_min: float = 0.2
    area_max: float = 0.3

    def __post_init__(self) -> None:
        if self.radius_mode not in ("diag", "area"):
            raise ValueError(f"masking radius_mode={self.radius_mode!r}; expected 'diag' or 'area'.")
        if self.pad_mode not in ("zero", "reflect", "none"):
            raise ValueError(f"masking pad_mode={self.pad_mode!r}; expected 'zero', 'reflect' or 'none'.")
        if not isinstance(self.num_bands, int) or isinstance(self.num_bands, bool) or self.num_bands < 2:
            raise ValueError(f"masking num_bands={self.num_bands!r}; expected an int >= 2 (2 = low and high views).")
        if not isinstance(self.annulus, bool):
            raise ValueError(f"masking annulus={self.annulus!r}; expected true or false.")
        if self.annulus and self.num_bands != 2:
            raise ValueError(f"masking annulus=True makes exactly 2 views; got num_bands={self.num_bands}.")
        if not 0 < self.rho_min <= self.rho_max < 1:
            raise ValueError(
                f"masking rho_min={self.rho_min}, rho_max={self.rho_max}; expected 0 < rho_min <= rho_max < 1 "
                "(radii are fractions of the padded diagonal)."
            )
        if self.rho_std < 0:
            raise ValueError(f"masking rho_std={self.rho_std}; expected >= 0.")
        if not 0 < self.area_min <= self.area_max < math.pi / 4:
            raise ValueError(
                f"masking area_min={self.area_min}, area_max={self.area_max}; expected 0 < area_min <= area_max "
                "< π/4 (a quarter disc inside the spectrum)."
            )

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> MaskingConfig:
        """Build from a user mapping (e.g. YAML); unknown keys raise :class:`UnknownOptionError` listing the known."""
        return options_from_dict(cls, "masking", options)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (for checkpoints and logs)."""
        return options_to_dict(self)


@dataclass(frozen=True)
class MaskDraw:
    """One draw of cut radii for a batch, in units of the padded diagonal ``√(H_p² + W_p²)`` (float64).

    Attributes:
        rho: ``(B,)`` the low/high cut ``ρ`` per sample (the inner annulus radius with ``annulus=True``).
        cuts: ``(B, K − 1)`` increasing cut radii (``(B, 2)`` annulus radii with ``annulus=True``).
        area: ``(B,)`` the drawn quarter-disc fraction ``a`` in ``"area"`` mode, else ``None``.
    """

    rho: torch.Tensor
    cuts: torch.Tensor
    area: torch.Tensor | None = None


def padded_size(height: int, width: int, pad_mode: PadMode) -> tuple[int, int]:
    """``(2^⌈log₂H⌉, 2^⌈log₂W⌉)``, or ``(H, W)`` for ``pad_mode="none"``."""
    if pad_mode == "none":
        return height, width
    return 1 << max(0, math.ceil(math.log2(height))), 1 << max(0, math.ceil(math.log2(width)))


def pad_image(x: torch.Tensor, size: tuple[int, int], pad_mode: PadMode) -> torch.Tensor:
    """Pad a ``(B, C, H, W)`` image at the bottom and right to ``size`` with zeros or by reflection."""
    pad_h, pad_w = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if pad_h == pad_w == 0 or pad_mode == "none":
        return x
    # NOTE: next power of two < 2n, so the reflect pad is always shorter than the side it mirrors.
    return F.pad(x, (0, pad_w, 0, pad_h), mode="constant" if pad_mode == "zero" else "reflect")


def frequency_distance(
    height: int, width: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``D(u, v) = √(u² + v²)``, shape ``(H, W)``, DC at ``(0, 0)``, in DCT index units."""
    u = torch.arange(height, device=device, dtype=dtype)
    v = torch.arange(width, device=device, dtype=dtype)
    return torch.sqrt(u[:, None] ** 2 + v[None, :] ** 2)


def band_masks(distance: torch.Tensor, radii: torch.Tensor, *, annulus: bool = False) -> torch.Tensor:
    """Keep-masks of the views, ``(K, B, 1, H, W)`` bool, for cut radii ``(B, K − 1)`` in index units.

    Nested mode: view 0 is ``D ≤ r₁``, view ``k`` is ``r_k ≤ D ≤ r_{k+1}``, the last is ``D ≥ r_{K−1}``; every view
    keeps DC. Annulus mode (``radii`` = ``(a₁, a₂)``): view 0 is ``D ≤ a₁ or D ≥ a₂``, view 1 is ``a₁ ≤ D ≤ a₂`` + DC.
    """
    d = distance[None, None]  # (H, W) -> (1, 1, H, W)
    r = radii[:, :, None, None]  # (B, K−1) -> (B, K−1, 1, 1)
    dc = d == 0
    if annulus:
        inner, outer = r[:, 0:1], r[:, 1:2]
        masks = [(d <= inner) | (d >= outer), ((d >= inner) & (d <= outer)) | dc]
    else:
        edges = [None, *r.unbind(1), None]  # each (B, 1, 1)
        masks = []
        for lo, hi in itertools.pairwise(edges):
            keep = dc.expand(r.shape[0], -1, -1, -1)
            inside = torch.ones_like(keep)
            if lo is not None:
                inside = inside & (d >= lo[:, None])
            if hi is not None:
                inside = inside & (d <= hi[:, None])
            masks.append(keep | inside)
    return torch.stack([m.expand(r.shape[0], 1, *distance.shape) for m in masks])  # K × (B, 1, H, W)


def apply_valid(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Zero the invalid pixels of ``(B, C, H, W)`` (0 is the band mean after normalisation).

    ``valid`` is ``(B, H, W)`` (per pixel) or ``(B, C, H, W)`` (per band) bool, or ``None`` for all valid.
    """
    if valid is None:
        return x
    mask = valid_mask(x, valid)
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def valid_mask(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``valid`` (``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)`` bool) as a 4-D mask broadcastable to ``x``."""
    batch, channels, height, width = x.shape
    if valid.dtype != torch.bool:
        raise ValueError(f"valid mask has dtype {valid.dtype}; expected torch.bool (True = usable pixel).")
    if valid.shape == (batch, height, width):
        return valid[:, None]  # (B, H, W) -> (B, 1, H, W)
    if valid.shape in ((batch, channels, height, width), (batch, 1, height, width)):
        return valid
    raise ValueError(
        f"valid mask of shape {tuple(valid.shape)} does not match the image {tuple(x.shape)}; expected "
        f"({batch}, {height}, {width}) per pixel or ({batch}, {channels}, {height}, {width}) per band."
    )


class FrequencyMasking:
    """Draws cut radii and turns images into ``K`` band-pass views (no parameters; see the module docstring).

    Args:
        config: a :class:`MaskingConfig`, a mapping of its options, or ``None`` for the defaults.
    """

    def __init__(self, config: MaskingConfig | Mapping[str, Any] | None = None) -> None:
        self.config = config if isinstance(config, MaskingConfig) else MaskingConfig.from_dict(config)

    @property
    def num_views(self) -> int:
        """Views per image."""
        return self.config.num_bands

    def draw(
        self,
        batch: int,
        size: tuple[int, int],
        generator: torch.Generator | None = None,
        *,
        rho: torch.Tensor | None = None,
    ) -> MaskDraw:
        """Draw the relative cut radii of ``batch`` samples.

        Args:
            batch: number of samples ``B``.
            size: the input ``(H, W)``; in ``"area"`` mode ``a`` is converted to ``ρ`` at its padded size.
            generator: source of randomness (its device is used); ``None`` for torch's default generator.
            rho: ``(B,)`` fixed ``ρ`` instead of a draw (tests and ablations); clipped like a draw.
        """
        cfg = self.config
        device = generator.device if generator is not None else torch.device("cpu")
        h_p, w_p = padded_size(*size, cfg.pad_mode)
        diag = math.hypot(h_p, w_p)
        area = None
        if cfg.annulus:
            pair = torch.rand(batch, 2, generator=generator, device=device, dtype=torch.float64)
            cuts = pair.sort(dim=1).values  # a₁ ≤ a₂, each ~ U(0, diag) in diagonal units
            return MaskDraw(rho=cuts[:, 0], cuts=cuts)
        if rho is None:
            if cfg.radius_mode == "area":
                area = cfg.area_min + (cfg.area_max - cfg.area_min) * torch.rand(
                    batch, generator=generator, device=device, dtype=torch.float64
                )
                rho = torch.sqrt(4 * area * h_p * w_p / math.pi) / diag
            else:
                g = torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
                rho = (cfg.rho_mean + cfg.rho_std * g).abs()
        rho = torch.as_tensor(rho, dtype=torch.float64).reshape(batch).clamp(cfg.rho_min, cfg.rho_max)
        # Cuts k = 1..K−1 spaced geometrically from ρ to the diagonal: ρ^(1 − (k−1)/(K−1)); K = 2 gives just ρ.
        steps = torch.arange(cfg.num_bands - 1, dtype=torch.float64, device=rho.device) / (cfg.num_bands - 1)
        cuts = rho[:, None] ** (1 - steps[None, :])  # (B, 1) ** (1, K−1) -> (B, K−1)
        return MaskDraw(rho=rho, cuts=cuts, area=area)

    def views(self, x: torch.Tensor, draw: MaskDraw, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The ``K`` band-pass views of ``x``, ``(K, B, C, H, W)``, in ``x``'s dtype.

        Args:
            x: ``(B, C, H, W)`` normalised image.
            draw: radii from :meth:`draw` (shared by the modalities of a pair).
            valid: ``(B, H, W)`` or ``(B, C, H, W)`` bool; invalid pixels are set to 0 before the DCT.
        """
        if x.ndim != 4:
            raise ValueError(f"Expected a (B, C, H, W) image to mask, got shape {tuple(x.shape)}.")
        batch, channels, height, width = x.shape
        if draw.cuts.shape[0] != batch:
            raise ValueError(f"The mask draw is for {draw.cuts.shape[0]} samples but the image batch has {batch}.")
        cfg = self.config
        work_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        size = padded_size(height, width, cfg.pad_mode)
        # NOTE: the DCT runs in fp32 even under autocast: bf16 GEMMs would add ~3e-3 relative error to the views.
        with torch.autocast(device_type=x.device.type, enabled=False):
            image = pad_image(apply_valid(x, valid).to(work_dtype), size, cfg.pad_mode)
            spectrum = dct2d(image, layout="bchw")  # (B, C, H_p, W_p)
            distance = frequency_distance(*size, device=x.device, dtype=work_dtype)
            radii = draw.cuts.to(device=x.device, dtype=work_dtype) * math.hypot(*size)  # (B, K−1) index units
            masks = band_masks(distance, radii, annulus=cfg.annulus)  # (K, B, 1, H_p, W_p)
            masked = (spectrum[None] * masks).reshape(-1, channels, *size)  # (K, B, C, H_p, W_p) -> (K·B, C, ...)
            views = idct2d(masked, layout="bchw")[..., :height, :width]  # crop back to (H, W)
        return views.reshape(masks.shape[0], batch, channels, height, width).to(x.dtype)

    def __call__(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, MaskDraw]:
        """Draw radii for ``x`` and return its views ``(K, B, C, H, W)`` with the draw."""
        draw = self.draw(x.shape[0], (x.shape[-2], x.shape[-1]), generator)
        return self.views(x, draw, valid), draw

"""Heracles-TS: the Heracles block applied along time, for Sentinel pixel/parcel series and chip sequences.

Our design (``docs/heracles_ts.md``, which also lists what differs from the paper): the paper's
time-series architecture (arXiv 2403.18063 v2) was not recovered. The image block's mechanisms are kept and applied
over the time axis of a regular time grid:

- :class:`HeraclesTS` takes ``(B, T, bands)`` with a validity mask ``(B, T)`` (False = cloudy/missing date) and an
  optional day of year ``(B, T)``. Masked dates are linearly interpolated from their valid neighbours, a validity
  channel is appended (``Linear(bands + 1 → d)``), then ``k`` local ∥ global (DCT-1D or DHT) layers and ``n − k``
  MHSA layers run over ``T``; attention keys and the mean pool exclude masked dates.
- :class:`HeraclesChipSequence` takes ``(B, T, C, H, W)``: any registered 2-D backbone (by name) embeds each date
  with shared weights, batched as ``B·T``; the pooled embeddings then go through a :class:`HeraclesTS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from rsvheat._registry import create_model, register_model
from rsvheat.errors import BandCountMismatchError
from rsvheat.layers.drop import drop_path_rates
from rsvheat.layers.spectral_mixer import SpectralSizePolicy, SpectralTransform, check_size_policy, check_transform
from rsvheat.models._backbone import checkpointing_policy
from rsvheat.models.heracles import HeraclesBlock, _init_weights

__all__ = [
    "DayOfYearEncoding",
    "HeraclesChipSequence",
    "HeraclesTS",
    "fill_masked_dates",
    "heracles_chipseq",
    "heracles_chipseq_test",
    "heracles_ts",
    "heracles_ts_test",
]

_DAYS_PER_YEAR = 365.25


def _format_mask(mask: torch.Tensor | None, batch: int, steps: int, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    if tuple(mask.shape) != (batch, steps):
        raise ValueError(f"Validity mask must have shape (B, T) = ({batch}, {steps}), got {tuple(mask.shape)}.")
    return mask.to(device=device, dtype=torch.bool)


def fill_masked_dates(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Linearly interpolate masked dates of ``(B, T, F)`` series from the nearest valid dates before and after.

    Leading/trailing masked dates take the nearest valid value; a series with no valid date becomes zeros. Values at
    masked dates are never read, so NaN nodata there is harmless.

    Args:
        x: series on a regular time grid.
        valid: ``(B, T)`` bool, True where the date is usable.
    """
    batch, steps, _ = x.shape
    t = torch.arange(steps, device=x.device).expand(batch, steps)  # (B, T)
    prev = torch.where(valid, t, -1).cummax(dim=1).values  # last valid index ≤ t, −1 if none
    nxt = torch.where(valid, t, steps).flip(1).cummin(dim=1).values.flip(1)  # first valid index ≥ t, T if none
    has_prev, has_next = prev >= 0, nxt < steps
    x_prev = x.gather(1, prev.clamp(min=0)[..., None].expand_as(x))  # (B, T, F)
    x_next = x.gather(1, nxt.clamp(max=steps - 1)[..., None].expand_as(x))
    span = (nxt - prev).clamp(min=1)
    weight = ((t - prev) / span).to(x.dtype)[..., None]  # (B, T, 1); 0 at valid dates
    both = (has_prev & has_next)[..., None]
    filled = torch.where(both, x_prev + weight * (x_next - x_prev), torch.where(has_prev[..., None], x_prev, x_next))
    filled = torch.where((has_prev | has_next)[..., None], filled, torch.zeros_like(x))
    return torch.where(valid[..., None], x, filled)


class DayOfYearEncoding(nn.Module):
    """Annual Fourier features of the day of year, ``[sin, cos](2π k · doy / 365.25)`` for k = 1..K, → Linear(2K → d).

    Args:
        dim: output width ``d``.
        harmonics: number of annual harmonics ``K``.
    """

    def __init__(self, dim: int, harmonics: int = 8) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.arange(1, harmonics + 1, dtype=torch.float32), persistent=False)
        self.proj = nn.Linear(2 * harmonics, dim)

    def forward(self, doy: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` day of year (1..366, fractional allowed) -> ``(B, T, d)``."""
        angle = 2 * math.pi * doy.float()[..., None] * self.freqs / _DAYS_PER_YEAR  # (B, T, K)
        return self.proj(torch.cat((angle.sin(), angle.cos()), dim=-1))


class HeraclesTS(nn.Module):
    """Heracles over time for ``(B, T, bands)`` series with a ``(B, T)`` validity mask and optional day of year.

    Args:
        in_chans: bands per date (the validity channel is added internally).
        num_classes: outputs of the pooled head (classes, or regression targets); 0 returns the embedding.
        seq_len: the time-grid length ``T`` the spectral weights are built for (e.g. 36 ten-day composites).
        dim: token width ``d`` (even).
        depths: ``(k, n − k)``: local ∥ global spectral layers, then MHSA layers.
        num_heads: attention heads; default ``d / 32``.
        mlp_ratios: ConvFFN expansion for the spectral and the attention layers.
        transform: ``"dct"`` (no wrap-around between the season's end and start) or ``"dht"``.
        spectral_size_policy: another ``T`` raises (``"strict"``, default) or resizes the weights (``"interpolate"``).
        drop_path_rate: stochastic depth, rising linearly over the layers.
        doy_harmonics: annual harmonics of the day-of-year encoding (used when ``doy`` is passed).
        fill_masked: interpolate masked dates from valid neighbours before embedding (else zero them).
    """

    def __init__(
        self,
        in_chans: int = 10,
        num_classes: int = 0,
        seq_len: int = 36,
        dim: int = 128,
        depths: Sequence[int] = (2, 2),
        num_heads: int | None = None,
        mlp_ratios: Sequence[float] = (4, 4),
        transform: SpectralTransform = "dct",
        spectral_size_policy: SpectralSizePolicy = "strict",
        drop_path_rate: float = 0.0,
        doy_harmonics: int = 8,
        fill_masked: bool = True,
    ) -> None:
        super().__init__()
        depths, mlp_ratios = tuple(depths), tuple(mlp_ratios)
        if len(depths) != 2 or len(mlp_ratios) != 2:
            raise ValueError(
                f"depths and mlp_ratios need 2 entries (spectral layers, attention layers), got {depths}, {mlp_ratios}."
            )
        if in_chans < 1 or seq_len < 1:
            raise ValueError(f"in_chans and seq_len must be positive, got in_chans={in_chans}, seq_len={seq_len}.")
        self.in_chans = in_chans
        self.seq_len = seq_len
        self.transform = check_transform(transform)
        self.spectral_size_policy = check_size_policy(spectral_size_policy)
        self.num_features = dim
        self.fill_masked = fill_masked
        self.grad_checkpointing = False
        heads = num_heads if num_heads is not None else max(1, dim // 32)
        self.embed = nn.Linear(in_chans + 1, dim)
        self.doy_embed = DayOfYearEncoding(dim, doy_harmonics)
        rates = drop_path_rates(drop_path_rate, sum(depths))
        kinds = ["spectral"] * depths[0] + ["attention"] * depths[1]
        self.blocks = nn.ModuleList(
            HeraclesBlock(
                dim,
                mlp_ratios[0] if kind == "spectral" else mlp_ratios[1],
                kind,
                (seq_len,),
                transform,
                spectral_size_policy,
                heads,
                rates[i],
            )
            for i, kind in enumerate(kinds)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.num_classes = num_classes
        self.head: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)
        self.apply(_init_weights)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the pooled head for ``num_classes`` outputs; 0 removes it."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def set_grad_checkpointing(self, enable: bool | Literal["blocks"] = True) -> None:
        """Recompute each layer's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = checkpointing_policy(enable, type(self).__name__) == "blocks"

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, doy: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-date tokens ``(B, T, d)`` after the final norm.

        Args:
            x: ``(B, T, bands)`` series on a regular time grid.
            mask: ``(B, T)`` bool, True = valid date; default all valid.
            doy: ``(B, T)`` day of year; default no date encoding.
        """
        if x.ndim != 3:
            raise ValueError(f"HeraclesTS expects (B, T, bands) input, got shape {tuple(x.shape)}.")
        if x.shape[-1] != self.in_chans:
            raise BandCountMismatchError("time series", self.in_chans, x.shape[-1])
        batch, steps, _ = x.shape
        valid = _format_mask(mask, batch, steps, x.device)
        x = fill_masked_dates(x, valid) if self.fill_masked else torch.where(valid[..., None], x, 0.0)
        tokens = self.embed(torch.cat((x, valid[..., None].to(x.dtype)), dim=-1))  # (B, T, bands + 1) -> (B, T, d)
        if doy is not None:
            if tuple(doy.shape) != (batch, steps):
                raise ValueError(f"doy must have shape (B, T) = ({batch}, {steps}), got {tuple(doy.shape)}.")
            tokens = tokens + self.doy_embed(doy).to(tokens.dtype)
        # NOTE: a series with no valid date would leave attention with no key (NaN); it attends to all dates instead.
        key_mask = valid | ~valid.any(dim=1, keepdim=True)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, (steps,), key_mask, use_reentrant=False)
            else:
                tokens = block(tokens, (steps,), key_mask)
        return self.norm(tokens)

    def forward_head(
        self, tokens: torch.Tensor, mask: torch.Tensor | None = None, pre_logits: bool = False
    ) -> torch.Tensor:
        """Mean over valid dates of ``(B, T, d)`` tokens, then the head; ``pre_logits`` returns ``(B, d)``."""
        batch, steps, _ = tokens.shape
        valid = _format_mask(mask, batch, steps, tokens.device)
        valid = valid | ~valid.any(dim=1, keepdim=True)
        weight = valid.to(tokens.dtype)[..., None]  # (B, T, 1)
        pooled = (tokens * weight).sum(dim=1) / weight.sum(dim=1)
        return pooled if pre_logits else self.head(pooled)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, doy: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, T, bands)`` -> ``(B, num_classes)``, or the ``(B, d)`` embedding when ``num_classes == 0``."""
        return self.forward_head(self.forward_features(x, mask, doy), mask)


class HeraclesChipSequence(nn.Module):
    """Space-then-time model for ``(B, T, C, H, W)`` chip sequences with a ``(B, T)`` validity mask.

    A registered 2-D backbone (any model with ``forward_intermediates``/``forward_head(pre_logits=True)``) embeds every
    valid date with shared weights (batched as ``B·T``; masked dates are skipped and filled by the temporal model),
    then a :class:`HeraclesTS` runs over the ``T`` pooled embeddings. Memory is linear in ``T``.

    Args:
        encoder: registry name of the per-date backbone, e.g. ``"heracles_test"`` or ``"vheat_test"``.
        encoder_kwargs: extra constructor arguments of the encoder (``num_classes`` is forced to 0).
        in_chans: encoder band count or dict modality -> band count.
        num_classes: outputs of the temporal head; 0 returns the embedding.
        **temporal_kwargs: :class:`HeraclesTS` arguments for the temporal model (``seq_len``, ``dim``, ``depths``,
            ``num_heads``, ``mlp_ratios``, ``transform``, ``spectral_size_policy``, ``drop_path_rate``, ...); its
            ``in_chans`` is the encoder's ``num_features``.
    """

    def __init__(
        self,
        encoder: str = "heracles_test",
        encoder_kwargs: Mapping[str, Any] | None = None,
        in_chans: int | Mapping[str, int] = 3,
        num_classes: int = 0,
        **temporal_kwargs: Any,
    ) -> None:
        super().__init__()
        self.encoder = create_model(encoder, **{**dict(encoder_kwargs or {}), "in_chans": in_chans, "num_classes": 0})
        for required in ("forward_intermediates", "forward_head", "num_features", "feature_info"):
            if not hasattr(self.encoder, required):
                raise TypeError(
                    f"Encoder {encoder!r} ({type(self.encoder).__name__}) has no {required!r}; pass a 2-D backbone "
                    "with the rsvheat backbone interface, e.g. 'heracles_test' or 'vheat_test'."
                )
        if "in_chans" in temporal_kwargs:
            raise ValueError("The temporal model's in_chans is the encoder's num_features; do not pass it.")
        self.temporal = HeraclesTS(in_chans=self.encoder.num_features, num_classes=num_classes, **temporal_kwargs)
        self.num_features = self.temporal.num_features
        self.num_classes = num_classes

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the temporal head for ``num_classes`` outputs; 0 removes it."""
        self.num_classes = num_classes
        self.temporal.reset_classifier(num_classes)

    def set_grad_checkpointing(self, enable: bool | Literal["blocks"] = True) -> None:
        """Gradient checkpointing in both the per-date encoder and the temporal model."""
        self.temporal.set_grad_checkpointing(enable)  # first: it refuses a policy it lacks before anything changes
        if hasattr(self.encoder, "set_grad_checkpointing"):
            self.encoder.set_grad_checkpointing(enable)

    def embed_dates(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, modality: str | None = None
    ) -> torch.Tensor:
        """Per-date pooled encoder embeddings ``(B, T, F)``; masked dates are not encoded and left at zero."""
        if x.ndim != 5:
            raise ValueError(f"HeraclesChipSequence expects (B, T, C, H, W) input, got shape {tuple(x.shape)}.")
        batch, steps = x.shape[:2]
        valid = _format_mask(mask, batch, steps, x.device).flatten()  # (B·T,)
        flat = x.flatten(0, 1)  # (B, T, C, H, W) -> (B·T, C, H, W)
        keep = flat if bool(valid.all()) else flat[valid]  # (N_valid, C, H, W)
        if keep.shape[0]:
            last = self.encoder.forward_intermediates(keep, [-1], modality)[-1]  # only the last stage is pooled
            emb = self.encoder.forward_head(last, pre_logits=True)
        else:
            emb = flat.new_zeros(0, self.encoder.num_features)
        if keep is not flat:
            emb = emb.new_zeros(batch * steps, emb.shape[-1]).index_put((valid,), emb)
        return emb.reshape(batch, steps, -1)  # (B·T, F) -> (B, T, F)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        doy: torch.Tensor | None = None,
        modality: str | None = None,
    ) -> torch.Tensor:
        """``(B, T, C, H, W)`` -> ``(B, num_classes)``, or the ``(B, dim)`` embedding when ``num_classes == 0``."""
        return self.temporal(self.embed_dates(x, mask, modality), mask, doy)


_TS_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"in_chans": 10, "seq_len": 36, "dim": 128, "depths": (2, 2), "mlp_ratios": (4, 4)},
    "test": {"in_chans": 4, "seq_len": 12, "dim": 32, "depths": (1, 1), "num_heads": 2, "mlp_ratios": (2, 2)},
}
_CHIPSEQ_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"encoder": "heracles_small", "in_chans": 10, "seq_len": 12, "dim": 256, "depths": (2, 2)},
    "test": {
        "encoder": "heracles_test",
        "in_chans": 4,
        "seq_len": 6,
        "dim": 32,
        "depths": (1, 1),
        "num_heads": 2,
        "mlp_ratios": (2, 2),
    },
}


@register_model
def heracles_ts(**kwargs: Any) -> HeraclesTS:
    """Heracles-TS for ``(B, 36, 10)`` ten-day Sentinel-2 series: d = 128, 2 spectral + 2 attention layers."""
    return HeraclesTS(**{**_TS_VARIANTS["default"], **kwargs})


@register_model
def heracles_ts_test(**kwargs: Any) -> HeraclesTS:
    """Tiny Heracles-TS for CI: 4 bands, T = 12, d = 32, one spectral and one attention layer."""
    return HeraclesTS(**{**_TS_VARIANTS["test"], **kwargs})


@register_model
def heracles_chipseq(**kwargs: Any) -> HeraclesChipSequence:
    """Chip-sequence model: a per-date encoder (default ``heracles_small``) then Heracles-TS over T = 12 dates."""
    return HeraclesChipSequence(**{**_CHIPSEQ_VARIANTS["default"], **kwargs})


@register_model
def heracles_chipseq_test(**kwargs: Any) -> HeraclesChipSequence:
    """Tiny chip-sequence model for CI: ``heracles_test`` per date, T = 6, d = 32."""
    return HeraclesChipSequence(**{**_CHIPSEQ_VARIANTS["test"], **kwargs})

"""The vHeat stem (two stride-2 3×3 convolutions, output stride 4), one stem per input modality, and the loader of an
RGB checkpoint into an N-band stem (shared by every backbone family)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from rsvheat.layers.norm import LayerNorm2d
from rsvheat.models._backbone import format_in_chans

__all__ = ["StemLayer", "adapt_rgb_filters", "adapt_stem_weights", "build_stems"]


class StemLayer(nn.Module):
    """Conv3×3 s2 (in → C/2) → LN → GELU → Conv3×3 s2 (C/2 → C) → LN, eps 1e-6 (docs/hco.md §Network).

    A stride-2 conv with padding 1 maps ``n`` to ``⌈n/2⌉``, so any ``H×W`` gives ``(⌈⌈H/2⌉/2⌉, ⌈⌈W/2⌉/2⌉)``.

    Args:
        in_chans: input bands.
        out_chans: output width ``C``.
    """

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, out_chans // 2, kernel_size=3, stride=2, padding=1)
        self.norm1 = LayerNorm2d(out_chans // 2, eps=1e-6)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chans // 2, out_chans, kernel_size=3, stride=2, padding=1)
        self.norm2 = LayerNorm2d(out_chans, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, C, ⌈H/4⌉, ⌈W/4⌉)``."""
        x = self.act(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(x))


def build_stems(in_chans: Mapping[str, int], out_chans: int) -> nn.ModuleDict:
    """One :class:`StemLayer` per modality, e.g. ``{"optical": 13, "sar": 2}``; all feed the same trunk.

    Args:
        in_chans: band count per modality name.
        out_chans: trunk width ``C``.
    """
    return nn.ModuleDict({name: StemLayer(bands, out_chans) for name, bands in format_in_chans(in_chans).items()})


# The RGB slots of an ImageNet-style checkpoint (input channels in R, G, B order) and the band names that take them.
_RGB_COMMON_NAMES = ("red", "green", "blue")


def _band_key(name: str) -> str:
    """Case-insensitive band id with Sentinel-2 zero padding: ``"B4"``, ``"b04"`` and ``"B04"`` all give ``"b04"``."""
    key = name.strip().lower()
    if len(key) >= 2 and key[0] == "b" and key[1:].isdigit():
        return f"b{int(key[1:]):02d}"
    return key


def adapt_rgb_filters(
    weight: torch.Tensor, band_names: Sequence[str], rgb_bands: tuple[str, str, str] = ("B04", "B03", "B02")
) -> torch.Tensor:
    """Turn the first conv of an RGB stem into one for ``band_names`` (docs/hco.md §RS-vHeat).

    The R, G and B filters go to the bands named in ``rgb_bands`` (or named ``red``/``green``/``blue``); every other
    band gets the mean RGB filter; the result is scaled by ``3/N``. A grey input (all bands equal) then gives the same
    conv output as the RGB stem on the same grey image.

    Args:
        weight: ``(out, 3, k, k)`` filters, input channels in R, G, B order.
        band_names: the ``N`` target bands, in the order of the new input channels.
        rgb_bands: target band names that receive the R, G and B filters.

    Returns:
        ``(out, N, k, k)`` filters.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(
            f"Expected RGB conv filters of shape (out, 3, k, k), got {tuple(weight.shape)}; adapt from a 3-band stem."
        )
    if not band_names:
        raise ValueError("band_names is empty; pass the target stem's bands in input order, e.g. ['B02', 'B03', ...].")
    slots = {
        key: channel
        for channel, names in enumerate(zip(rgb_bands, _RGB_COMMON_NAMES, strict=True))
        for key in map(_band_key, names)
    }
    mean = weight.mean(dim=1)  # (out, 3, k, k) -> (out, k, k)
    columns = [weight[:, slots[key]] if (key := _band_key(name)) in slots else mean for name in band_names]
    return torch.stack(columns, dim=1) * (3.0 / len(band_names))  # N × (out, k, k) -> (out, N, k, k)


def adapt_stem_weights(
    state_dict: Mapping[str, torch.Tensor],
    band_names: Sequence[str],
    *,
    modality: str = "optical",
    source_modality: str | None = None,
    rgb_bands: tuple[str, str, str] = ("B04", "B03", "B02"),
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Load an RGB checkpoint into an ``N``-band stem (docs/hco.md §RS-vHeat).

    ``stems.<modality>.conv1.weight`` is rebuilt by :func:`adapt_rgb_filters`. Works for every backbone whose stems
    live in ``stems.<name>`` with a first conv ``conv1`` (vHeat, RS-vHeat, Heracles).

    Args:
        state_dict: weights with a 3-band stem; not modified.
        band_names: bands of the target stem, in input order (``len(band_names)`` is its ``in_chans``).
        modality: the target stem's name.
        source_modality: the RGB stem's name in ``state_dict`` when it differs from ``modality``; its keys are renamed
            to ``modality`` (the source stem's other layers are copied unchanged).
        rgb_bands: target band names that receive the R, G and B filters.
        prefix: key prefix of the backbone inside ``state_dict``, e.g. ``"encoder."`` for a task model.

    Returns:
        A new state dict for a model built with ``in_chans={modality: len(band_names), ...}``.
    """
    source = modality if source_modality is None else source_modality
    stem_prefix, target_prefix = f"{prefix}stems.{source}.", f"{prefix}stems.{modality}."
    conv_key = f"{stem_prefix}conv1.weight"
    if conv_key not in state_dict:
        stems = sorted({key[len(prefix) :].split(".")[1] for key in state_dict if key.startswith(f"{prefix}stems.")})
        raise KeyError(
            f"No {conv_key!r} in the state dict; its stems are {stems or 'none'}. Pass source_modality= naming the "
            "RGB stem (and prefix= if the backbone is nested)."
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(stem_prefix):
            key = target_prefix + key[len(stem_prefix) :]
        out[key] = value
    out[f"{target_prefix}conv1.weight"] = adapt_rgb_filters(state_dict[conv_key], band_names, rgb_bands)
    return out

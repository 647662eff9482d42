"""Reusable layers: DCT transforms, the Heat Conduction Operator, norms, DropPath and stems."""

from rsvheat.layers.dct import DCTImpl, dct1d, dct2d, dct_matrix, idct1d, idct2d, resolve_dct_impl
from rsvheat.layers.drop import DropPath, drop_path, drop_path_rates
from rsvheat.layers.heat2d import (
    HCOCoreDtype,
    HeatConduction2d,
    apply_decay,
    decay_from_conductivity,
    decay_grid,
    heat_conduction,
)
from rsvheat.layers.norm import LayerNorm2d
from rsvheat.layers.precision import autocast_enabled, autocast_off
from rsvheat.layers.stem import StemLayer, adapt_rgb_filters, adapt_stem_weights, build_stems

__all__ = [
    "DCTImpl",
    "DropPath",
    "HCOCoreDtype",
    "HeatConduction2d",
    "LayerNorm2d",
    "StemLayer",
    "adapt_rgb_filters",
    "adapt_stem_weights",
    "apply_decay",
    "autocast_enabled",
    "autocast_off",
    "build_stems",
    "dct1d",
    "dct2d",
    "dct_matrix",
    "decay_from_conductivity",
    "decay_grid",
    "drop_path",
    "drop_path_rates",
    "heat_conduction",
    "idct1d",
    "idct2d",
    "resolve_dct_impl",
]

"""The Heat Conduction Operator (HCO) of vHeat: one step of the 2-D heat equation with Neumann boundaries.

``U_t = IDCT2(DCT2(U_0) ⊙ exp(−k ⊙ Λ))`` with ``Λ[n, m] = (πn/H)² + (πm/W)²``
(``docs/hco.md`` §Operator, §DCT, §Decay and conductivity, §HCO layer, §Mixed precision, §FFT path).
The conductivity ``k = ReLU(to_k(FVE))`` is learned per frequency and channel from a Frequency Value Embedding.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsvheat.errors import DecayNotAvailableError
from rsvheat.layers.dct import DEFAULT_FFT_THRESHOLD, DCTImpl, dct2d, idct2d, resolve_dct_impl
from rsvheat.layers.heat_core import fve_core, multiplier_core
from rsvheat.layers.lean_ops import gate_linear, recompute_linear
from rsvheat.layers.norm import LayerNorm2d
from rsvheat.layers.precision import autocast_enabled, autocast_off

__all__ = [
    "HCOCoreDtype",
    "HeatConduction2d",
    "apply_decay",
    "decay_from_conductivity",
    "decay_grid",
    "heat_conduction",
]

HCOCoreDtype = Literal["fp32", "autocast"]


@lru_cache(maxsize=128)
def _decay_grid_cached(height: int, width: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        # NOTE: ω = πn/H as upstream's linspace(0, π, H+1)[:H]; not (n+½) and not 2πn/H
        # (docs/hco.md §Decay and conductivity).
        omega_h = math.pi * torch.arange(height, dtype=torch.float64) / height
        omega_w = math.pi * torch.arange(width, dtype=torch.float64) / width
        grid = omega_h[:, None] ** 2 + omega_w[None, :] ** 2  # (H, W)
        return grid.to(device=device, dtype=torch.float32)


def decay_grid(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Eigenvalues ``Λ[n, m] = (πn/H)² + (πm/W)²`` of the Neumann Laplacian, fp32, shape ``(H, W)``.

    Cached per ``(H, W, device)`` outside any module, so it never enters a ``state_dict``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"Decay grid needs a positive size, got height={height}, width={width}.")
    return _decay_grid_cached(int(height), int(width), torch.device(device if device is not None else "cpu"))


def decay_from_conductivity(
    k: torch.Tensor | float, height: int, width: int, device: torch.device | None = None
) -> torch.Tensor:
    """``exp(−k ⊙ Λ)`` in fp32 with autocast disabled.

    Args:
        k: conductivity ``≥ 0``, a float or a tensor broadcastable to ``(H, W, C)``.
        height: map height ``H``.
        width: map width ``W``.
        device: device of the result when ``k`` is a float.

    Returns:
        The decay, ``(H, W, C)`` for a tensor ``k`` of that shape, ``(H, W, 1)`` for a float.
    """
    if isinstance(k, torch.Tensor):
        device = k.device
    grid = decay_grid(height, width, device)[..., None]  # (H, W) -> (H, W, 1)
    with autocast_off(grid.device):
        if isinstance(k, torch.Tensor):
            return torch.exp(-k.float() * grid)
        return torch.exp(-float(k) * grid)


def apply_decay(
    x: torch.Tensor,
    decay: torch.Tensor,
    *,
    dct_impl: DCTImpl = "matmul",
    fft_threshold: int = DEFAULT_FFT_THRESHOLD,
    core_dtype: HCOCoreDtype = "fp32",
) -> torch.Tensor:
    """The spectral core ``IDCT2(DCT2(x) ⊙ decay)`` of a channels-last map.

    Args:
        x: ``(B, H, W, C)`` map.
        decay: ``(H, W, C)`` or ``(H, W, 1)`` multiplier in ``(0, 1]``.
        dct_impl: ``"matmul"``, ``"fft"`` or ``"auto"`` (FFT when ``max(H, W) > fft_threshold``).
        fft_threshold: switch size for ``"auto"``.
        core_dtype: ``"fp32"`` runs the core in fp32 with autocast disabled; ``"autocast"`` lets autocast pick the
            GEMM dtype (relative error about 3e-3 in bf16,
            docs/hco.md §Mixed precision). The FFT path always runs in fp32.

    Returns:
        The filtered map; fp32 for ``core_dtype="fp32"``.
    """
    match core_dtype:
        case "fp32":
            # One autograd function: saves at most the spectrum (only when the decay needs a gradient).
            return multiplier_core(x, decay, dct_impl=dct_impl, fft_threshold=fft_threshold)
        case "autocast":
            spectrum = dct2d(x, "bhwc", dct_impl, fft_threshold)
            if resolve_dct_impl(dct_impl, max(x.shape[1], x.shape[2]), fft_threshold) == "matmul":
                # NOTE: keep the spectrum's dtype so the inverse GEMM runs in the autocast dtype as well.
                return idct2d(spectrum * decay.to(spectrum.dtype), "bhwc", dct_impl, fft_threshold)
            return idct2d(spectrum * decay, "bhwc", dct_impl, fft_threshold)
        case _:
            raise ValueError(f"Unknown hco_core_dtype {core_dtype!r}; expected 'fp32' or 'autocast'.")


def heat_conduction(
    x: torch.Tensor,
    k: torch.Tensor | float,
    *,
    dct_impl: DCTImpl = "matmul",
    fft_threshold: int = DEFAULT_FFT_THRESHOLD,
) -> torch.Tensor:
    """One heat-conduction step ``IDCT2(DCT2(x) ⊙ exp(−k ⊙ Λ))`` on a channels-last map.

    The DC term has decay 1, so every channel's mean is conserved; no mode is amplified because ``k ≥ 0``.

    Args:
        x: ``(B, H, W, C)`` map.
        k: conductivity ``≥ 0``: a float or a tensor broadcastable to ``(H, W, C)``.
        dct_impl: ``"matmul"``, ``"fft"`` or ``"auto"``.
        fft_threshold: switch size for ``"auto"``.

    Returns:
        The diffused map, ``(B, H, W, C)`` in ``x``'s dtype.
    """
    if x.ndim != 4:
        raise ValueError(f"heat_conduction expects a (B, H, W, C) map, got shape {tuple(x.shape)}.")
    negative = (k < 0).any().item() if isinstance(k, torch.Tensor) else k < 0
    if negative:
        raise ValueError("Conductivity k must be >= 0 (a negative k amplifies modes); clamp it, e.g. with ReLU.")
    decay = decay_from_conductivity(k, x.shape[1], x.shape[2], device=x.device)
    out = apply_decay(x, decay, dct_impl=dct_impl, fft_threshold=fft_threshold, core_dtype="fp32")
    return out.to(x.dtype)


def _dwconv_channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise 3x3 conv (pad 1) of ``(B, C, H, W)``, returned as ``(B, H, W, C)`` (a free view for channels-last)."""
    return F.conv2d(x, weight, bias, padding=1, groups=weight.shape[0]).permute(0, 2, 3, 1)


def _corrected_dwconv(
    x: torch.Tensor,
    sce: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """RS-vHeat: ``dwconv(LayerNorm2d(ReLU(x + SCE)))`` as ``(B, H, W, C)``."""
    corrected = F.relu(x + sce).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
    corrected = F.layer_norm(corrected, (corrected.shape[-1],), norm_weight, norm_bias, eps)
    return _dwconv_channels_last(corrected.permute(0, 3, 1, 2), weight, bias)  # back to (B, C, H, W)


class HeatConduction2d(nn.Module):
    """The HCO block operator, exactly as ``docs/hco.md`` §HCO layer (and §RS-vHeat with ``spatial_correction``).

    dwconv3×3 → Linear(C, 2C) → split ``u, z`` → DCT2 → ``⊙ exp(−k ⊙ Λ)`` → IDCT2 → LayerNorm → ``⊙ SiLU(z)`` →
    Linear(C, C). The conductivity ``k = ReLU(to_k(FVE))`` comes from the stage's Frequency Value Embedding, which
    the caller passes already resized to the map size. Parameters: ``4C² + 16C`` (``+ 2C`` with spatial correction).

    Args:
        dim: width ``C``.
        dct_impl: ``"matmul"``, ``"fft"`` or ``"auto"``.
        fft_threshold: switch size for ``"auto"``.
        hco_core_dtype: ``"fp32"`` (default) or ``"autocast"`` for the DCT → decay → IDCT core.
        fixed_k: ablation: a constant conductivity for all frequencies and channels; no ``to_k`` is built.
        spatial_correction: RS-vHeat: ``x ← LayerNorm2d(ReLU(x + SCE))`` before the dwconv.
    """

    def __init__(
        self,
        dim: int,
        *,
        dct_impl: DCTImpl = "matmul",
        fft_threshold: int = DEFAULT_FFT_THRESHOLD,
        hco_core_dtype: HCOCoreDtype = "fp32",
        fixed_k: float | None = None,
        spatial_correction: bool = False,
    ) -> None:
        super().__init__()
        resolve_dct_impl(dct_impl, 1)  # validates the option early
        if hco_core_dtype not in ("fp32", "autocast"):
            raise ValueError(f"Unknown hco_core_dtype {hco_core_dtype!r}; expected 'fp32' or 'autocast'.")
        if fixed_k is not None and fixed_k < 0:
            raise ValueError(f"fixed_k must be >= 0, got {fixed_k}; a negative conductivity amplifies modes.")
        self.dim = dim
        self.dct_impl: DCTImpl = dct_impl
        self.fft_threshold = fft_threshold
        self.hco_core_dtype: HCOCoreDtype = hco_core_dtype
        self.fixed_k = fixed_k
        self.sce_norm = LayerNorm2d(dim) if spatial_correction else None
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.linear = nn.Linear(dim, 2 * dim)
        self.to_k: nn.Linear | None = nn.Linear(dim, dim) if fixed_k is None else None
        self.out_norm = nn.LayerNorm(dim)
        self.out_linear = nn.Linear(dim, dim)
        # Inference mode: frozen decays keyed by (H, W); None while training mode. Derived data, never saved.
        self._frozen: dict[tuple[int, int], torch.Tensor] | None = None
        # Eval without autograd: the last decay computed, with what it was computed from (see `_eval_decay`).
        self._eval_cache: tuple[torch.Tensor, tuple[Any, ...], torch.Tensor] | None = None
        # Frozen decays cast to an autocast dtype (``hco_core_dtype="autocast"``), keyed by (H, W, dtype).
        self._cast_cache: dict[tuple[int, int, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        for linear in (self.linear, self.to_k, self.out_linear):
            if linear is not None:  # docs/hco.md §Network: Linear trunc_normal(0.02), bias 0
                nn.init.trunc_normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)

    @property
    def needs_fve(self) -> bool:
        """Whether :meth:`forward` reads the FVE (false for ``fixed_k``)."""
        return self.fixed_k is None

    @property
    def frozen(self) -> bool:
        """Whether the decay is precomputed (inference mode)."""
        return self._frozen is not None

    def _serves_frozen(self) -> bool:
        # NOTE: in training mode a fused operator that still has to_k recomputes the decay, so the FVE and to_k keep
        # learning (docs/hco.md §Resolution changes); frozen decays serve eval, or training only once to_k is gone.
        return self._frozen is not None and (not self.training or self.to_k is None)

    def has_decay(self, height: int, width: int) -> bool:
        """Whether the decay for an ``H × W`` map is available without the FVE (frozen size or ``fixed_k``)."""
        return self.fixed_k is not None or (
            self._serves_frozen() and self._frozen is not None and (height, width) in self._frozen
        )

    def conductivity(self, fve: torch.Tensor | None) -> torch.Tensor:
        """``k = ReLU(to_k(FVE))`` in fp32 with autocast disabled.

        Args:
            fve: ``(H, W, C)`` Frequency Value Embedding at the map size; ignored with ``fixed_k``.

        Returns:
            ``(H, W, C)``, or a 0-d tensor for ``fixed_k``.
        """
        if self.fixed_k is not None:
            return torch.tensor(float(self.fixed_k))
        return F.relu(self.pre_conductivity(fve))

    def pre_conductivity(self, fve: torch.Tensor | None) -> torch.Tensor:
        """``to_k(FVE)`` before the ReLU, fp32 with autocast disabled: ``(H, W, C)``."""
        if self.to_k is None:
            raise DecayNotAvailableError(
                "This HCO has no to_k to compute the conductivity from (dropped by fuse_decay(drop_fve=True)); "
                "rebuild the model from its checkpoint to get it back."
            )
        if fve is None:
            raise DecayNotAvailableError(
                "The conductivity k = ReLU(to_k(FVE)) needs the stage's FVE at the map size; pass `fve` (the HCO "
                "has no frozen decay for this size)."
            )
        with autocast_off(fve.device):
            return F.linear(fve.float(), self.to_k.weight.float(), self.to_k.bias.float())

    def decay(self, height: int, width: int, fve: torch.Tensor | None) -> torch.Tensor:
        """``exp(−k ⊙ Λ)`` for an ``H × W`` map, fp32: ``(H, W, C)``, or ``(H, W, 1)`` for ``fixed_k``."""
        if self.fixed_k is not None:
            device = fve.device if fve is not None else self.linear.weight.device
            return decay_from_conductivity(float(self.fixed_k), height, width, device=device)
        return decay_from_conductivity(self.conductivity(fve), height, width)

    def freeze(self, sizes: list[tuple[int, int]], fves: list[torch.Tensor | None]) -> None:
        """Switch to inference mode: precompute the decay for each ``(H, W)`` in ``sizes``.

        Args:
            sizes: map sizes.
            fves: the FVE resized to each size (``None`` entries are fine with ``fixed_k``).
        """
        self._frozen = {} if self._frozen is None else self._frozen
        for size, fve in zip(sizes, fves, strict=True):
            self._frozen[size] = self._detached_decay(size, fve)

    def unfreeze(self) -> None:
        """Back to training mode: the decay is recomputed from the FVE on every forward."""
        if self.to_k is None and self.fixed_k is None:
            raise DecayNotAvailableError("to_k was dropped by fuse_decay(drop_fve=True); training mode needs it.")
        self._frozen = None
        self._cast_cache.clear()

    def drop_conductivity(self) -> None:
        """Delete ``to_k`` (inference mode only); unlisted sizes then raise :class:`DecayNotAvailableError`."""
        if self._frozen is None:
            raise DecayNotAvailableError("Call freeze() before dropping to_k, otherwise the decay cannot be computed.")
        self.to_k = None

    def _detached_decay(self, size: tuple[int, int], fve: torch.Tensor | None) -> torch.Tensor:
        # NOTE: outside inference mode so the frozen tensor stays usable in later autograd-enabled forwards.
        with torch.inference_mode(False), torch.no_grad():
            return self.decay(size[0], size[1], fve).detach()

    def resolve_decay(
        self, height: int, width: int, fve: torch.Tensor | None, device: torch.device | None = None
    ) -> torch.Tensor:
        """The decay this operator applies to an ``H × W`` map: frozen (inference mode) or computed from ``fve``."""
        if self._frozen is None or not self._serves_frozen():
            return self._eval_decay(height, width, fve)
        cached = self._frozen.get((height, width))
        if cached is None:
            if self.fixed_k is None and (fve is None or self.to_k is None):
                raise DecayNotAvailableError(
                    f"No frozen decay for a {height}×{width} map (frozen sizes: {sorted(self._frozen)}) and the "
                    "FVE/to_k were dropped; list this size in fuse_decay(sizes=...) before dropping them."
                )
            cached = self._detached_decay((height, width), fve)
            self._frozen[(height, width)] = cached
        if device is not None and cached.device != device:
            cached = cached.to(device)
            self._frozen[(height, width)] = cached
        return cached

    def _eval_decay(self, height: int, width: int, fve: torch.Tensor | None) -> torch.Tensor:
        """The decay from ``fve``; in eval without autograd, reused while the FVE tensor and ``to_k`` are unchanged.

        The key holds the FVE tensor itself (the stage passes the same resized tensor, or the parameter, until the
        parameter changes) and the in-place versions of the FVE and ``to_k``, so EMA updates and ``load_state_dict``
        are seen. One entry: evaluation at a fixed size pays ``to_k`` and ``exp`` once instead of every forward.
        """
        if self.training or self._decay_needs_graph(fve) or fve is None or self.to_k is None or fve.is_inference():
            return self.decay(height, width, fve)
        key = (height, width, fve.device, fve._version, self.to_k.weight._version, self.to_k.bias._version)
        cached = self._eval_cache
        if cached is not None and cached[0] is fve and cached[1] == key:
            return cached[2]
        decay = self._detached_decay((height, width), fve)
        self._eval_cache = (fve, key, decay)
        return decay

    def _decay_needs_graph(self, fve: torch.Tensor | None) -> bool:
        """Whether the decay computed from ``fve`` and ``to_k`` is part of the autograd graph."""
        return torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (fve, *(self.to_k.parameters() if self.to_k else ()))
        )

    def _spectral_core(self, u: torch.Tensor, height: int, width: int, fve: torch.Tensor | None) -> torch.Tensor:
        """``IDCT2(DCT2(u) ⊙ decay)`` for this operator's decay (docs/hco-training.md).

        In a training step the decay is built inside one autograd function from ``to_k(FVE)`` and freed again:
        backward keeps the spectrum (or ``u``) and the stage's shared FVE only, and rebuilds ``to_k(FVE)``. Frozen,
        cached or fixed decays go through the same function as a constant multiplier.
        """
        autocast_core = self.hco_core_dtype == "autocast" and autocast_enabled(u.device)
        served = self.fixed_k is not None or (self._serves_frozen() and (height, width) in (self._frozen or {}))
        learned = fve is not None and self.to_k is not None and self._decay_needs_graph(fve)
        if learned and not autocast_core and not served:
            # NOTE: fve None falls through to resolve_decay, which raises the error that names the missing FVE.
            grid = decay_grid(height, width, u.device)[..., None]  # (H, W) -> (H, W, 1)
            weight, bias = self.to_k.weight, self.to_k.bias
            return fve_core(u, fve, weight, bias, grid, dct_impl=self.dct_impl, fft_threshold=self.fft_threshold)
        decay = self.resolve_decay(height, width, fve, u.device)
        if autocast_core and u.dtype != decay.dtype:
            decay = self._cast_decay(height, width, decay, u.dtype)
        return apply_decay(
            u, decay, dct_impl=self.dct_impl, fft_threshold=self.fft_threshold, core_dtype=self.hco_core_dtype
        )

    def train(self, mode: bool = True) -> HeatConduction2d:
        """Set the mode and drop the eval-time decay caches."""
        self._eval_cache = None
        self._cast_cache.clear()
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> HeatConduction2d:
        # `.to()`/`.half()` swap parameter data without a version bump: drop the eval caches.
        self._eval_cache = None
        self._cast_cache.clear()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # New weights invalidate frozen decays; they are recomputed lazily (while to_k is present).
        self._eval_cache = None
        self._cast_cache.clear()
        if self._frozen is not None and self.to_k is not None:
            self._frozen.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def forward(
        self,
        x: torch.Tensor,
        fve: torch.Tensor | None = None,
        sce: torch.Tensor | None = None,
        post_norm: LayerNorm2d | None = None,
        post_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the operator.

        Args:
            x: ``(B, C, H, W)``.
            fve: ``(H, W, C)`` FVE resized to the map size (unused with ``fixed_k`` or a frozen decay for this size).
            sce: ``(1, C, H, W)`` spatial correction embedding resized to the map size (RS-vHeat only).
            post_norm: a post-norm block's LayerNorm2d, applied to the output here (``post_norm(hco(x),
                post_scale)``) so that training does not keep its input (docs/hco-training.md).
            post_scale: ``(C,)`` layer scale folded into ``post_norm``.

        Returns:
            ``(B, C, H, W)``.
        """
        _, _, height, width = x.shape
        if self.sce_norm is not None and sce is None:
            raise ValueError("This HCO was built with spatial_correction=True but received no SCE.")
        # dwconv (after the RS-vHeat correction) -> Linear(C, 2C) as two GEMMs on the weight halves (contiguous u and
        # z); in training only x is kept, the depthwise conv is recomputed in backward (docs/hco-training.md).
        if autocast_enabled(x.device) and torch.is_grad_enabled():
            # NOTE: keep the autocast-dtype copy the depthwise conv reads anyway (bf16: half the bytes of the fp32
            # residual stream); for RS-vHeat the correction x + SCE then starts from it too.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self.sce_norm is not None:
            norm = self.sce_norm
            inputs = (x, sce, norm.weight, norm.bias, self.dwconv.weight, self.dwconv.bias)
            prefix = partial(_corrected_dwconv, eps=norm.eps)
        else:
            inputs = (x, self.dwconv.weight, self.dwconv.bias)
            prefix = _dwconv_channels_last
        u, z = recompute_linear(prefix, inputs, self.linear.weight, self.linear.bias, parts=2)  # 2 x (B, H, W, C)
        u = self._spectral_core(u, height, width, fve)
        # NOTE: back to the activation dtype right after the core (bf16 under autocast or with bf16 weights): the
        # LayerNorm, the gate and out_linear then run without mixed-dtype copies; the DCT/decay stayed fp32.
        tail = None
        if post_norm is not None:
            weight, bias = post_norm.weight, post_norm.bias
            if post_scale is not None:  # LayerNorm2d(.) * scale as one LayerNorm, scaled affine
                weight, bias = weight * post_scale, bias * post_scale
            tail = (weight, bias, post_norm.eps)
        out = gate_linear(u.to(z.dtype), z, self.out_norm, self.out_linear, tail)  # keeps only u and z for backward
        return out.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W), channels-last memory

    def _cast_decay(self, height: int, width: int, decay: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The decay in the autocast ``dtype`` for ``hco_core_dtype="autocast"``; frozen decays are cast once.

        Without autograd through it the cast is exact enough (decay ∈ (0, 1], relative rounding 2⁻⁸ in bf16) and
        keeps the decay multiply and both DCT GEMMs in one dtype. Only eval/inference serves the cached copy.
        """
        frozen = self._frozen.get((height, width)) if self._frozen is not None else None
        if decay.requires_grad or self.training or frozen is not decay:
            return decay.to(dtype)
        key = (height, width, dtype)
        cached = self._cast_cache.get(key)
        if cached is None or cached[0] is not decay:
            cached = (decay, decay.to(dtype))
            self._cast_cache[key] = cached
        return cached[1]

    def extra_repr(self) -> str:
        """Show the operator options in ``repr``."""
        return (
            f"dim={self.dim}, dct_impl={self.dct_impl!r}, core={self.hco_core_dtype!r}, fixed_k={self.fixed_k}, "
            f"frozen={self.frozen}"
        )

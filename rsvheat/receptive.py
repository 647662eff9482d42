"""Receptive field and locality of a model, from its modules (docs/change-aware.md §Crop + receptive-field halo).

A model supports sub-chip reuse (crop + halo) only when every output pixel depends on a bounded input window: a chain
(``nn.Sequential``, nested) of convolutions, pools, pointwise activations, eval-mode batch norm and per-pixel channel
LayerNorm. For such a chain, with layers l = 1..L of kernel k_l, stride s_l, dilation d_l::

    S_l = Π_{j≤l} s_j      R = ⌈ Σ_l reach_l · S_{l-1} ⌉,   reach_l = max(p_l, d_l·(k_l - 1) - p_l)

which is d_l·(k_l - 1)/2 for centred ("same") padding. Anything else (attention, global or adaptive pooling, SE,
GroupNorm / InstanceNorm, batch norm in training mode, the HCO's DCT decay, a Heracles spectral branch, a module with
its own ``forward`` whose body cannot be read) makes the model non-local: ``supports_subchip`` is False and the
planner reuses whole chips only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from rsvheat.layers.norm import LayerNorm2d

__all__ = ["Locality", "ReuseMode", "locality", "receptive_field", "reuse_mode", "supports_subchip"]

_POINTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d,
)


@dataclass(frozen=True)
class Locality:
    """What :func:`locality` found: ``local`` (with ``halo`` R and ``stride`` S in input pixels) or the reasons not."""

    local: bool
    halo: int
    stride: int
    reasons: tuple[str, ...]


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def _window(module: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]] | str:
    """``(kernel, stride, dilation, padding)`` per axis of a conv or pool, or why it is not usable."""
    if isinstance(module, nn.Conv2d):
        k, s, d = _pair(module.kernel_size), _pair(module.stride), _pair(module.dilation)
        if isinstance(module.padding, str):
            p = (0, 0) if module.padding == "valid" else (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
        else:
            p = _pair(module.padding)
        return k, s, d, p
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        if getattr(module, "ceil_mode", False):
            return f"{type(module).__name__} with ceil_mode=True (its last window depends on the input size)"
        k = _pair(module.kernel_size)
        s = _pair(module.stride if module.stride is not None else module.kernel_size)
        d = _pair(getattr(module, "dilation", 1))
        return k, s, d, _pair(module.padding)
    return "not a convolution or pool"


def _leaf_reason(module: nn.Module) -> str | None:
    if isinstance(module, _POINTWISE) or isinstance(module, LayerNorm2d):
        return None
    if isinstance(module, nn.BatchNorm2d):
        return "BatchNorm2d in training mode (batch statistics over HxW)" if module.training else None
    return f"{type(module).__name__} is not in the local whitelist (conv, pool, pointwise, eval BN, LayerNorm2d)"


def locality(model: nn.Module) -> Locality:
    """Walk ``model`` in execution order and decide whether it is a chain of local ops; compute R and S if so."""
    reasons: list[str] = []
    halo, stride = 0.0, 1

    def visit(module: nn.Module, path: str) -> None:
        nonlocal halo, stride
        children = list(module.named_children())
        if isinstance(module, nn.Sequential):
            for name, child in children:
                visit(child, f"{path}.{name}" if path else name)
            return
        where = path or type(module).__name__
        window = _window(module)
        if not isinstance(window, str):
            (kh, kw), (sh, sw), (dh, dw), (ph, pw) = window
            if sh != sw:
                reasons.append(f"{where}: unequal strides {sh}, {sw}")
                return
            reach = max(ph, dh * (kh - 1) - ph, pw, dw * (kw - 1) - pw)
            halo += reach * stride
            stride *= sh
            return
        if children:
            reasons.append(f"{where}: {type(module).__name__} has its own forward (not an nn.Sequential chain), so "
                           "its data flow cannot be read from its modules")
            return
        if window != "not a convolution or pool":
            reasons.append(f"{where}: {window}")
            return
        reason = _leaf_reason(module)
        if reason is not None:
            reasons.append(f"{where}: {reason}")

    visit(model, "")
    return Locality(local=not reasons, halo=math.ceil(halo), stride=stride, reasons=tuple(reasons))


def supports_subchip(model: nn.Module) -> bool:
    """True when crop + halo reuse is exact for ``model`` (only local ops; docs/change-aware.md §Chip-level reuse)."""
    return locality(model).local


def receptive_field(model: nn.Module) -> tuple[int, int]:
    """``(R, S)``: halo and output stride in input pixels.

    Raises:
        ValueError: the model has a non-local op (the message names the modules and why).
    """
    found = locality(model)
    if not found.local:
        raise ValueError(f"{type(model).__name__} has no bounded receptive field: {'; '.join(found.reasons)}")
    return found.halo, found.stride


@dataclass(frozen=True)
class ReuseMode:
    """How incremental processing reuses a model's outputs: ``subchip`` (crop + halo inside a chip, with ``halo`` R
    and ``stride`` S) or whole chips (``halo`` 0: a global op makes each chip's output depend on the whole chip)."""

    subchip: bool
    halo: int
    stride: int
    reasons: tuple[str, ...]


def reuse_mode(model: nn.Module) -> ReuseMode:
    """The planner's choice for ``model``: crop + halo when it is local, chip-level reuse otherwise."""
    found = locality(model)
    if found.local:
        return ReuseMode(subchip=True, halo=found.halo, stride=found.stride, reasons=())
    return ReuseMode(subchip=False, halo=0, stride=1, reasons=found.reasons)

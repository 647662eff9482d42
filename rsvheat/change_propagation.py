"""Per-location change-map propagation (method 1 of Borji, arXiv 2407.01782; code ``aliborji/spatial_attention``
``cnn3.py``), as a reference implementation for tests (docs/change-aware.md §Exactness limits).

Each layer keeps its previous output; an output position is recomputed (all channels) when the summed input change
map over its receptive window exceeds θ, and is otherwise copied from the previous frame. With θ = 0 and the change
window taken in the same padded coordinates as the patch, the result equals a dense recompute; θ = 1 ignores single
changed cells and is approximate. It never pays on a GPU (dense kernels skip nothing), which is why the jobs reuse
whole chips or crop + halo instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["dense_forward", "propagate_mask", "propagated_forward"]


def _geometry(layer: nn.Module) -> tuple[int, int, int]:
    if isinstance(layer, nn.Conv2d):
        return int(layer.kernel_size[0]), int(layer.stride[0]), int(layer.padding[0])  # type: ignore[index]
    if isinstance(layer, nn.MaxPool2d):
        k = int(layer.kernel_size) if isinstance(layer.kernel_size, int) else int(layer.kernel_size[0])
        s = layer.stride if layer.stride is not None else k
        p = layer.padding
        return k, int(s if isinstance(s, int) else s[0]), int(p if isinstance(p, int) else p[0])
    raise TypeError(f"method 1 handles Conv2d and MaxPool2d layers, got {type(layer).__name__}")


def propagate_mask(mask: Tensor, layer: nn.Module) -> Tensor:
    """``(H, W)`` bool changed inputs → ``(h, w)`` bool outputs that can change: 1[maxpool_{k,s,p}(M) > 0]."""
    k, s, p = _geometry(layer)
    m = F.max_pool2d(mask[None, None].float(), k, s, p)  # (1, 1, h, w); zero padding never marks a position
    return m[0, 0] > 0


def _apply(layer: nn.Module, x: Tensor) -> Tensor:
    out = layer(x)
    return F.relu(out) if isinstance(layer, nn.Conv2d) else out  # conv → ReLU, as in the published toy


def dense_forward(layers: Sequence[nn.Module], x: Tensor) -> list[Tensor]:
    """Every layer's output for ``(1, C, H, W)`` ``x`` (convs followed by ReLU)."""
    outs = []
    for layer in layers:
        x = _apply(layer, x)
        outs.append(x)
    return outs


def _per_location(layer: nn.Module, x: Tensor, where: Tensor) -> Tensor:
    """The layer's output at the ``(L,)`` bool positions ``where`` only, one patch per position: ``(C_out, n)``."""
    k, s, p = _geometry(layer)
    patches = F.unfold(x, k, padding=p, stride=s)[0][:, where]  # (C·k², L) -> (C·k², n)
    if isinstance(layer, nn.Conv2d):
        weight = layer.weight.reshape(layer.out_channels, -1)  # (C_out, C, k, k) -> (C_out, C·k²)
        out = weight @ patches + (layer.bias[:, None] if layer.bias is not None else 0.0)
        return F.relu(out)
    c = x.shape[1]
    return patches.reshape(c, k * k, -1).amax(dim=1)  # (C·k², n) -> (C, k², n) -> (C, n)


def propagated_forward(
    layers: Sequence[nn.Module], x: Tensor, prev_outs: Sequence[Tensor], change: Tensor, theta: float
) -> tuple[list[Tensor], list[Tensor]]:
    """Method 1: recompute only positions whose windowed input change exceeds ``theta``.

    Args:
        layers: Conv2d (followed by ReLU) and MaxPool2d layers, in order.
        x: ``(1, C, H, W)`` the new frame.
        prev_outs: each layer's output on the previous frame.
        change: ``(H, W)`` float input change map M₀ (e.g. mean over channels of |I_t - I_{t-1}|; ones on frame 1).
        theta: the threshold (θ = 0 exact; the published code uses 1).

    Returns:
        ``(outputs, recomputed masks)`` per layer.
    """
    outs, masks = [], []
    m = change.float()
    for layer, prev in zip(layers, prev_outs, strict=True):
        k, s, p = _geometry(layer)
        # The change window in padded coordinates, aligned with the patch (the repo's off-by-one, fixed).
        window_sum = F.avg_pool2d(m[None, None], k, s, p, count_include_pad=True)[0, 0] * (k * k)  # (h, w)
        where = window_sum > theta
        out = prev.clone()
        if where.any():
            flat = out.reshape(out.shape[1], -1)  # (1, C_out, h, w) -> (C_out, h·w)
            flat[:, where.reshape(-1)] = _per_location(layer, x, where.reshape(-1))
        outs.append(out)
        masks.append(where)
        x, m = out, where.float()
    return outs, masks


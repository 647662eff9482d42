"""Heracles / SCT: local ∥ global spectral mixing in stages 1–2, global attention in stages 3–4.

Paper: "Heracles: A Hybrid SSM-Transformer Model for High-Resolution Image and Time-Series Analysis" (v1: "Spectral
Convolutional Transformer"), Patro, Ranganath, Namboodiri, Agneeswaran, arXiv 2403.18063. Upstream code:
``badripatro/heracles`` and ``badripatro/sct`` (read for the architecture only; nothing is copied). Spec and our
deviations: ``docs/heracles.md`` and ``docs/heracles_ts.md``.

As a remote-sensing backbone the model has one stem per input modality and a shared trunk, returns four dense NCHW
maps (strides 4/8/16/32, after the stage norms) and pools the stage-4 map for an embedding. The spectral weights
``W_g`` are sized from ``img_size``; other input sizes resize them (``spectral_size_policy="interpolate"``, the
registry default, so any chip size works) or raise (``"strict"``). The optional ImageNet-style head (class-attention
block, ``head``, ``aux_head``) exists for parameter parity with the paper.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rsvheat._registry import register_model
from rsvheat.layers.drop import DropPath, drop_path_rates
from rsvheat.layers.norm import LayerNorm2d
from rsvheat.layers.spectral_mixer import (
    LocalGlobalMixer,
    SpectralSizePolicy,
    SpectralTransform,
    check_size_policy,
    check_transform,
)
from rsvheat.models._backbone import (
    SizeLike,
    check_modality_input,
    checkpointing_policy,
    format_in_chans,
    format_size,
    pick_default_modality,
    resolve_stage_indices,
    stage_sizes,
)

__all__ = [
    "Attention",
    "ClassAttentionBlock",
    "ConvFFN",
    "Heracles",
    "HeraclesBlock",
    "HeraclesStage",
    "HeraclesStem",
    "checkpoint_filter_fn",
    "heracles_base",
    "heracles_large",
    "heracles_small",
    "heracles_test",
]

MixerKind = Literal["spectral", "attention"]


def _tokens_to_map(x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)  # (B, N, C) -> (B, C, *grid)


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, *grid) -> (B, N, C)


class ConvFFN(nn.Module):
    """PVTv2-style FFN on tokens: Linear(C → hidden) → depthwise Conv(k = 3) on the grid → GELU → Linear(hidden → C).

    Args:
        dim: token width ``C``.
        hidden_dim: expanded width (``r·C``).
        ndim: 1 for sequences, 2 for image grids.
    """

    def __init__(self, dim: int, hidden_dim: int, ndim: int = 2) -> None:
        super().__init__()
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = conv(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim, bias=True)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """``(B, N, C) -> (B, N, C)`` with ``N = Π grid``."""
        x = self.fc1(x)
        x = _map_to_tokens(self.dwconv(_tokens_to_map(x, grid)))
        return self.fc2(self.act(x))


class Attention(nn.Module):
    """Multi-head attention with ``q = Linear(C, C)``, ``kv = Linear(C, 2C)``, ``proj = Linear(C, C)``.

    Keys and values come from ``context`` (default: the queries' own tokens). ``key_mask`` (B, N_kv), True = valid,
    removes invalid keys; every row must keep at least one valid key.

    Args:
        dim: token width ``C``.
        num_heads: heads; ``C`` must divide evenly.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"Attention width {dim} is not divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, N_q, C)`` queries over ``(B, N_kv, C)`` context -> ``(B, N_q, C)``."""
        context = x if context is None else context
        batch, n_q, dim = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(batch, n_q, heads, dim // heads).transpose(1, 2)  # (B, N_q, C) -> (B, h, N_q, d)
        # (B, N_kv, 2C) -> (2, B, h, N_kv, d)
        kv = self.kv(context).reshape(batch, context.shape[1], 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, N_kv) -> (B, 1, 1, N_kv)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, n_q, dim))  # (B, h, N_q, d) -> (B, N_q, C)


class HeraclesBlock(nn.Module):
    """``x += DP(Mixer(LN₁ x))``; ``x += DP(ConvFFN(LN₂ x))`` with LN eps 1e-6; tokens ``(B, N, C)``.

    Args:
        dim: token width ``C``.
        mlp_ratio: ConvFFN expansion ``r``.
        mixer: ``"spectral"`` (:class:`LocalGlobalMixer`) or ``"attention"`` (:class:`Attention`).
        grid_size: the grid the spectral weights are built for; its length (1 or 2) sets 1-D vs 2-D convolutions.
        transform: spectral transform, ``"dct"`` or ``"dht"``.
        size_policy: spectral weights on another grid: ``"strict"`` or ``"interpolate"``.
        num_heads: attention heads (attention mixer only).
        drop_path: stochastic-depth probability.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        mixer: MixerKind,
        grid_size: tuple[int, ...],
        transform: SpectralTransform = "dct",
        size_policy: SpectralSizePolicy = "strict",
        num_heads: int = 1,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.mixer_kind = mixer
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        match mixer:
            case "spectral":
                self.mixer: nn.Module = LocalGlobalMixer(dim, grid_size, transform, size_policy)
            case "attention":
                self.mixer = Attention(dim, num_heads)
            case _:
                raise ValueError(f"Unknown mixer {mixer!r}; expected one of 'spectral', 'attention'.")
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ConvFFN(dim, round(dim * mlp_ratio), ndim=len(grid_size))

    def forward(
        self, x: torch.Tensor, grid: tuple[int, ...], key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, N, C) -> (B, N, C)``; ``key_mask`` (B, N) only affects the attention mixer."""
        y = self.norm1(x)
        if self.mixer_kind == "spectral":
            y = _map_to_tokens(self.mixer(_tokens_to_map(y, grid)))
        else:
            y = self.mixer(y, key_mask=key_mask)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x), grid))


class ClassAttentionBlock(nn.Module):
    """Class attention: the class token attends to ``[cls; tokens]``, then an MLP (ratio 4); both residual on cls.

    Args:
        dim: token width ``C``.
        num_heads: attention heads.
        mlp_ratio: MLP expansion.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = round(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``cls`` (B, 1, C) and ``tokens`` (B, N, C) -> updated ``cls`` (B, 1, C)."""
        context = self.norm1(torch.cat((cls, tokens), dim=1))  # (B, 1 + N, C)
        cls = cls + self.attn(context[:, :1], context=context)
        return cls + self.mlp(self.norm2(cls))


class HeraclesStem(nn.Module):
    """Conv7×7 s2 → BN → ReLU → 2 × [Conv3×3 → BN → ReLU] → Conv3×3 s2 → LayerNorm; output stride 4.

    Args:
        in_chans: input bands (only ``conv1`` depends on it).
        hidden: stem width ``S_h``.
        dim: stage-1 width ``C1``.
    """

    def __init__(self, in_chans: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, hidden, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(hidden)
        self.proj = nn.Conv2d(hidden, dim, kernel_size=3, stride=2, padding=1)
        self.norm = LayerNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, C1, ⌈⌈H/2⌉/2⌉, ⌈⌈W/2⌉/2⌉)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.norm(self.proj(x))


class HeraclesStage(nn.Module):
    """Optional downsample (Conv3×3 s2 + LayerNorm), ``depth`` blocks, then LayerNorm(eps 1e-6); NCHW in and out.

    Args:
        in_dim: input width (ignored without downsampling).
        dim: stage width.
        depth: number of blocks.
        mixer: ``"spectral"`` or ``"attention"``.
        grid_size: the stage grid at the built ``img_size`` (sizes the spectral weights).
        downsample: whether the stage starts with a stride-2 conv.
        mlp_ratio: ConvFFN expansion.
        num_heads: attention heads.
        drop_path: per-block stochastic-depth probabilities.
        transform: spectral transform.
        size_policy: spectral weights on another grid.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        mixer: MixerKind,
        grid_size: tuple[int, int],
        downsample: bool,
        mlp_ratio: float,
        num_heads: int,
        drop_path: Sequence[float],
        transform: SpectralTransform = "dct",
        size_policy: SpectralSizePolicy = "strict",
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_dim, dim, kernel_size=3, stride=2, padding=1), LayerNorm2d(dim))
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.ModuleList(
            HeraclesBlock(dim, mlp_ratio, mixer, grid_size, transform, size_policy, num_heads, drop_path[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, C, H', W')`` with ``H' = ⌈H/2⌉`` when downsampling."""
        x = self.downsample(x)
        grid = (x.shape[2], x.shape[3])
        tokens = _map_to_tokens(x)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, grid, use_reentrant=False)
            else:
                tokens = block(tokens, grid)
        return _tokens_to_map(self.norm(tokens), grid)


class Heracles(nn.Module):
    """Heracles backbone: modality stems, two spectral/local stages, two attention stages, dense outputs.

    Args:
        in_chans: band count (one modality, ``"optical"``) or a dict modality -> band count; one stem each.
        num_classes: classifier outputs; 0 makes ``forward`` return the pooled embedding.
        img_size: chip size ``H`` or ``(H, W)`` the spectral weights are built for.
        transform: global operator of the spectral stages, ``"dct"`` (released code) or ``"dht"`` (paper text).
        spectral_stages: stages with index below this use the local ∥ global mixer; the rest use MHSA.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks.
        use_cls_head: pool with a class-attention block instead of the token mean.
        aux_head: add the token-labeling head (``logits = head(cls) + 0.5·max_tokens(aux_head(tokens))``).
        spectral_size_policy: other input sizes ``"interpolate"`` the spectral weights or raise (``"strict"``).
        dims: stage widths ``C1..C4``.
        depths: blocks per stage.
        num_heads: attention heads per stage; default ``C_i / 32`` (head dim 32).
        mlp_ratios: ConvFFN expansion per stage.
        stem_hidden: stem width ``S_h``.
    """

    def __init__(
        self,
        in_chans: int | Mapping[str, int] = 3,
        num_classes: int = 0,
        img_size: SizeLike = 224,
        transform: SpectralTransform = "dct",
        spectral_stages: int = 2,
        drop_path_rate: float = 0.0,
        use_cls_head: bool = False,
        aux_head: bool = False,
        spectral_size_policy: SpectralSizePolicy = "interpolate",
        dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 12, 3),
        num_heads: Sequence[int] | None = None,
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        stem_hidden: int = 64,
    ) -> None:
        super().__init__()
        dims, depths, mlp_ratios = tuple(dims), tuple(depths), tuple(mlp_ratios)
        num_heads = tuple(num_heads) if num_heads is not None else tuple(max(1, d // 32) for d in dims)
        lengths = {len(dims), len(depths), len(mlp_ratios), len(num_heads)}
        if lengths != {4}:
            raise ValueError(
                f"dims, depths, mlp_ratios and num_heads need 4 entries each, got {dims}, {depths}, {mlp_ratios}, "
                f"{num_heads}."
            )
        if not 0 <= spectral_stages <= 4:
            raise ValueError(f"spectral_stages must be in 0..4, got {spectral_stages}.")
        self.in_chans: dict[str, int] = format_in_chans(in_chans)
        self.modalities: tuple[str, ...] = tuple(self.in_chans)
        self.default_modality: str = pick_default_modality(self.in_chans)
        self.img_size = format_size(img_size, "img_size")
        self.num_classes = num_classes
        self.num_features: int = dims[-1]
        self.dims, self.depths = dims, depths
        self.transform = check_transform(transform)
        self.spectral_size_policy = check_size_policy(spectral_size_policy)

        self.stems = nn.ModuleDict({name: HeraclesStem(n, stem_hidden, dims[0]) for name, n in self.in_chans.items()})
        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages: list[HeraclesStage] = []
        for i, grid in enumerate(stage_sizes(*self.img_size, 4)):
            stages.append(
                HeraclesStage(
                    dims[i - 1] if i else dims[0],
                    dims[i],
                    depths[i],
                    "spectral" if i < spectral_stages else "attention",
                    grid,
                    downsample=i > 0,
                    mlp_ratio=mlp_ratios[i],
                    num_heads=num_heads[i],
                    drop_path=rates[sum(depths[:i]) : sum(depths[: i + 1])],
                    transform=transform,
                    size_policy=spectral_size_policy,
                )
            )
        self.stages = nn.ModuleList(stages)
        self.feature_info: list[dict[str, Any]] = [
            {"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"} for i in range(4)
        ]
        self.cls_block = ClassAttentionBlock(dims[-1], num_heads[-1]) if use_cls_head else None
        self._use_aux_head = aux_head
        self.head: nn.Module = nn.Identity()
        self.aux_head: nn.Module | None = None
        self.reset_classifier(num_classes)
        self.apply(_init_weights)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (and the aux head, if enabled) for ``num_classes`` outputs; 0 removes it."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.aux_head = (
            nn.Linear(self.num_features, num_classes) if self._use_aux_head and num_classes > 0 else None
        )
        for module in (self.head, self.aux_head):
            if module is not None:
                module.apply(_init_weights)

    def set_grad_checkpointing(self, enable: bool | Literal["blocks"] = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        enabled = checkpointing_policy(enable, type(self).__name__) == "blocks"
        for stage in self.stages:
            stage.grad_checkpointing = enabled

    def _stem(self, x: torch.Tensor, modality: str | None) -> torch.Tensor:
        modality = self.default_modality if modality is None else modality
        check_modality_input(x, self.in_chans, modality)
        return self.stems[modality](x)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] | None = None, modality: str | None = None
    ) -> list[torch.Tensor]:
        """Selected stage maps ``(B, C_i, H/2^{i+2}, W/2^{i+2})`` after the stage norms.

        Args:
            x: input ``(B, bands, H, W)``.
            indices: stage indices (negative allowed; returned in increasing order), an int ``n`` for the last ``n``
                stages, or None for all four.
            modality: stem to use; default ``default_modality``.
        """
        wanted = resolve_stage_indices(indices, len(self.stages))
        x = self._stem(x, modality)
        maps = []
        for i, stage in enumerate(self.stages[: wanted[-1] + 1]):
            x = stage(x)
            if i in wanted:
                maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor, modality: str | None = None) -> list[torch.Tensor]:
        """The four stage maps (NCHW, strides 4/8/16/32, channels ``C1..C4``) after the stage norms."""
        return self.forward_intermediates(x, modality=modality)

    def _pool(self, x_last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = _map_to_tokens(x_last)
        if self.cls_block is None:
            return tokens.mean(dim=1), tokens
        cls = self.cls_block(tokens.mean(dim=1, keepdim=True), tokens)
        # NOTE: upstream applies the final LN after class attention; the dense stage-4 map is already normed, so the
        # class token goes through the same (shared) final norm here.
        return self.stages[-1].norm(cls).squeeze(1), tokens

    def forward_head(self, x_last: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the stage-4 map ``(B, C4, h, w)`` and classify; ``pre_logits`` returns the ``(B, C4)`` embedding."""
        pooled, tokens = self._pool(x_last)
        if pre_logits:
            return pooled
        logits = self.head(pooled)
        if self.aux_head is not None:
            logits = logits + 0.5 * self.aux_head(tokens).amax(dim=1)
        return logits

    def forward_token_labeling(self, x_last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-labeling training outputs: class logits ``(B, K)`` and per-token aux logits ``(B, h·w, K)``."""
        if self.aux_head is None:
            raise ValueError("forward_token_labeling needs aux_head=True and num_classes > 0.")
        pooled, tokens = self._pool(x_last)
        return self.head(pooled), self.aux_head(tokens)

    def forward(self, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        """Logits ``(B, num_classes)``, or the pooled ``(B, num_features)`` embedding when ``num_classes == 0``."""
        return self.forward_head(self.forward_intermediates(x, [-1], modality)[-1])


def _init_weights(module: nn.Module) -> None:
    """Linear: trunc_normal(0.02). LayerNorm: weight 1. Conv: N(0, √(2/fan_out)). Biases 0
    (docs/heracles.md §Layout)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, nn.Conv1d | nn.Conv2d):
        fan_out = math.prod(module.kernel_size) * module.out_channels // module.groups
        nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


_UPSTREAM_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^patch_embed1\.conv\.0\.", "stems.{modality}.conv1."),
    (r"^patch_embed1\.conv\.1\.", "stems.{modality}.bn1."),
    (r"^patch_embed1\.conv\.3\.", "stems.{modality}.conv2."),
    (r"^patch_embed1\.conv\.4\.", "stems.{modality}.bn2."),
    (r"^patch_embed1\.conv\.6\.", "stems.{modality}.conv3."),
    (r"^patch_embed1\.conv\.7\.", "stems.{modality}.bn3."),
    (r"^patch_embed1\.(proj|norm)\.", r"stems.{modality}.\1."),
    (r"^patch_embed([2-4])\.proj\.", "stages.{stage}.downsample.0."),
    (r"^patch_embed([2-4])\.norm\.", "stages.{stage}.downsample.1."),
    (r"^block([1-4])\.(\d+)\.attn\.conv\.", r"stages.{stage}.blocks.\2.mixer.local."),
    (r"^block([1-4])\.(\d+)\.attn\.weight$", r"stages.{stage}.blocks.\2.mixer.global_filter.weight"),
    (r"^block([1-4])\.(\d+)\.attn\.", r"stages.{stage}.blocks.\2.mixer."),
    (r"^block([1-4])\.(\d+)\.mlp\.dwconv\.dwconv\.", r"stages.{stage}.blocks.\2.mlp.dwconv."),
    (r"^block([1-4])\.(\d+)\.", r"stages.{stage}.blocks.\2."),
    (r"^norm([1-4])\.", "stages.{stage}.norm."),
    (r"^post_network\.0\.mlp\.fc1\.", "cls_block.mlp.0."),
    (r"^post_network\.0\.mlp\.fc2\.", "cls_block.mlp.2."),
    (r"^post_network\.0\.", "cls_block."),
)


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: Heracles) -> dict[str, torch.Tensor]:
    """Map an upstream ``sct.py`` / ``heracles.py`` state dict to our keys (the stem goes to the default modality).

    Keys already in our naming pass through. Upstream ImageNet weights need ``use_cls_head=True, aux_head=True,
    num_classes=1000, in_chans=3``; our class-attention block reads the normed stage-4 tokens, so logits differ slightly
    from upstream's (``docs/heracles_ts.md``).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = key
        for pattern, template in _UPSTREAM_KEY_RULES:
            match = re.match(pattern, key)
            if match is None:
                continue
            stage = int(match.group(1)) - 1 if "{stage}" in template else 0  # upstream stages count from 1
            replacement = template.format(modality=model.default_modality, stage=stage)
            new_key = re.sub(pattern, replacement, key)
            break
        out[new_key] = value
    return out


def _create_heracles(variant: dict[str, Any], **kwargs: Any) -> Heracles:
    """Build a variant preset, with ``kwargs`` overriding its entries."""
    return Heracles(**{**variant, **kwargs})


_VARIANTS: dict[str, dict[str, Any]] = {
    "small": {"dims": (64, 128, 320, 448), "depths": (3, 4, 6, 3), "num_heads": (2, 4, 10, 14), "stem_hidden": 32},
    "base": {"dims": (64, 128, 320, 512), "depths": (3, 4, 12, 3), "num_heads": (2, 4, 10, 16), "stem_hidden": 64},
    "large": {"dims": (96, 192, 384, 512), "depths": (3, 6, 18, 3), "num_heads": (3, 6, 12, 16), "stem_hidden": 64},
    "test": {
        "dims": (16, 32, 48, 64),
        "depths": (1, 1, 1, 1),
        "num_heads": (1, 1, 2, 2),
        "stem_hidden": 8,
        "img_size": 64,
    },
}


@register_model
def heracles_small(**kwargs: Any) -> Heracles:
    """Heracles-S (21.7M params with the ImageNet head; 18.4M backbone at 224)."""
    return _create_heracles(_VARIANTS["small"], **kwargs)


@register_model
def heracles_base(**kwargs: Any) -> Heracles:
    """Heracles-B (32.5M params with the ImageNet head; 28.3M backbone at 224)."""
    return _create_heracles(_VARIANTS["base"], **kwargs)


@register_model
def heracles_large(**kwargs: Any) -> Heracles:
    """Heracles-L (53.7M params with the ImageNet head; 49.5M backbone at 224)."""
    return _create_heracles(_VARIANTS["large"], **kwargs)


@register_model
def heracles_test(**kwargs: Any) -> Heracles:
    """Tiny Heracles for CI: dims (16, 32, 48, 64), one block per stage, built for 64×64 chips."""
    return _create_heracles(_VARIANTS["test"], **kwargs)

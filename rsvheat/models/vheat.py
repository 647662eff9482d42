"""vHeat and RS-vHeat backbones built on the Heat Conduction Operator.

- vHeat: "vHeat: Building Vision Models upon Heat Conduction", arXiv 2405.16555 (CVPR 2025); upstream code
  ``MzeroMiko/vHeat``.
- RS-vHeat: "RS-vHeat: Heat Conduction Guided Efficient Remote Sensing Foundation Model", arXiv 2411.17984
  (ICCV 2025); upstream code ``iecashhy/RS-vHeat``.

An independent re-implementation of ``docs/hco.md`` (no upstream code copied; see the upstream repositories for
their licences). Differences from upstream: any input size (square or not) at any time via FVE/SCE resizing, one stem
per input modality with any band count, inference-mode decays keyed by map size, and no upstream bugs of
docs/hco.md §RS-vHeat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from rsvheat._registry import register_model
from rsvheat.layers.dct import DEFAULT_FFT_THRESHOLD, DCTImpl
from rsvheat.layers.drop import DropPath, drop_path_rates
from rsvheat.layers.heat2d import HCOCoreDtype, HeatConduction2d
from rsvheat.layers.lean_ops import gelu_linear
from rsvheat.layers.norm import LayerNorm2d
from rsvheat.layers.precision import autocast_enabled
from rsvheat.layers.stem import build_stems
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
    "EmbeddingResize",
    "FVEInterp",
    "Mlp2d",
    "VHeat",
    "VHeatBlock",
    "VHeatStage",
    "count_parameters",
    "resize_embeddings",
    "rsvheat_base",
    "rsvheat_test",
    "stage_sizes",
    "vheat_base",
    "vheat_small",
    "vheat_test",
    "vheat_tiny",
]

FVEInterp = Literal["bicubic", "bilinear"]
EmbeddingResize = Literal["bicubic", "bilinear", "zero_pad"]


def _resize_embedding(embedding: torch.Tensor, height: int, width: int, mode: FVEInterp) -> torch.Tensor:
    """Resize an ``(h, w, C)`` embedding to ``(H, W, C)``; returned unchanged when the size already matches."""
    if embedding.shape[0] == height and embedding.shape[1] == width:
        return embedding
    grid = embedding.permute(2, 0, 1).unsqueeze(0)  # (h, w, C) -> (1, C, h, w)
    grid = F.interpolate(grid, size=(height, width), mode=mode, align_corners=False)
    return grid.squeeze(0).permute(1, 2, 0)  # (1, C, H, W) -> (H, W, C)


class Mlp2d(nn.Module):
    """Conv1×1 (C → rC) → GELU → Conv1×1 (rC → C) on NCHW maps (dropout 0).

    The 1×1 convolutions run as GEMMs over the channel axis of a channels-last view (``F.linear`` on the
    conv-shaped weights, so checkpoints keep their ``(rC, C, 1, 1)`` shapes); with channels-last input no copy is made.

    Args:
        dim: width ``C``.
        mlp_ratio: hidden width ratio ``r``.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Conv2d(dim, hidden, kernel_size=1)
        self.fc2 = nn.Conv2d(hidden, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``; the output has channels-last memory."""
        x = x.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        x = F.linear(x, self.fc1.weight.flatten(1), self.fc1.bias)  # (rC, C, 1, 1) -> (rC, C)
        # NOTE: GELU is recomputed in backward: the (B, H, W, rC) activation is not kept (docs/hco-training.md).
        x = gelu_linear(x, self.fc2.weight.flatten(1), self.fc2.bias)  # (C, rC, 1, 1) -> (C, rC)
        return x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


class VHeatBlock(nn.Module):
    """HCO + MLP residual block, pre-norm (vHeat-T) or post-norm with layer scale (vHeat-S/B), docs/hco.md §Block.

    Args:
        dim: width ``C``.
        drop_path: stochastic-depth probability of both branches.
        post_norm: ``x += DP(γ ⊙ LN(f(x)))`` instead of ``x += DP(f(LN(x)))``.
        layer_scale_init: initial ``γ`` (e.g. 1e-5); ``None`` for no layer scale.
        mlp_ratio: MLP hidden width ratio.
        hco_kwargs: options of :class:`HeatConduction2d`.
    """

    def __init__(
        self,
        dim: int,
        *,
        drop_path: float = 0.0,
        post_norm: bool = False,
        layer_scale_init: float | None = None,
        mlp_ratio: float = 4.0,
        hco_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.hco = HeatConduction2d(dim, **dict(hco_kwargs or {}))
        self.norm1 = LayerNorm2d(dim)
        self.mlp = Mlp2d(dim, mlp_ratio)
        self.norm2 = LayerNorm2d(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.recompute_mlp = False  # set by VHeat.set_grad_checkpointing("mlp")
        if layer_scale_init is not None:
            self.gamma1: nn.Parameter | None = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.gamma2: nn.Parameter | None = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.gamma1 = self.gamma2 = None

    @staticmethod
    def _scale(x: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
        return x if gamma is None else x * gamma.view(1, -1, 1, 1)  # (C,) -> (1, C, 1, 1)

    def forward(
        self, x: torch.Tensor, fve: torch.Tensor | None = None, sce: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``; ``fve``/``sce`` are the stage embeddings at this map size."""
        if self.post_norm:
            # NOTE: γ is folded into the LayerNorm affine (one pass fewer over the map than LN(f(x)) * γ); the HCO
            # applies norm1 itself, so that a training step does not keep norm1's input (docs/hco-training.md).
            x = x + self.drop_path(self.hco(x, fve, sce, post_norm=self.norm1, post_scale=self.gamma1))
        else:
            x = x + self.drop_path(self._scale(self.hco(self.norm1(x), fve, sce), self.gamma1))
        if self.recompute_mlp and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return x + self.drop_path(self._recomputed_mlp(x))
        return x + self.drop_path(self._mlp_branch(x))

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            return self.norm2(self.mlp(x), self.gamma2)
        return self._scale(self.mlp(self.norm2(x)), self.gamma2)

    def _recomputed_mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP branch keeping only its input for backward (its GEMMs, GELU and LayerNorm run again there)."""
        if self.post_norm and autocast_enabled(x.device):
            # NOTE: fc1 reads x in the autocast dtype anyway, so keeping that copy (half of fp32) gives the same bits.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        return torch.utils.checkpoint.checkpoint(self._mlp_branch, x, use_reentrant=False)


class VHeatStage(nn.Module):
    """Blocks of one resolution sharing one FVE (and one SCE for RS-vHeat), resized to the actual map size.

    In training mode the resized embeddings are recomputed on every forward; in eval mode (without autograd through
    them) they are cached per ``(H, W)``; the cache is cleared by ``train()``, ``to()`` and ``load_state_dict`` and
    refreshed when the parameter is modified in place.

    Args:
        dim: width ``C``.
        depth: number of blocks.
        resolution: nominal ``(h, w)`` of the FVE/SCE parameters.
        drop_paths: per-block stochastic-depth probabilities.
        spatial_correction: add the RS-vHeat SCE.
        fve_interp: ``"bicubic"`` or ``"bilinear"`` resizing of the FVE/SCE.
        block_kwargs: further :class:`VHeatBlock` options.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        resolution: tuple[int, int],
        *,
        drop_paths: Sequence[float],
        spatial_correction: bool = False,
        fve_interp: FVEInterp = "bicubic",
        block_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        block_kwargs = dict(block_kwargs or {})
        hco_kwargs = {**dict(block_kwargs.pop("hco_kwargs", {})), "spatial_correction": spatial_correction}
        self.dim = dim
        self.resolution = resolution
        self.fve_interp: FVEInterp = fve_interp
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            VHeatBlock(dim, drop_path=drop_paths[i], hco_kwargs=hco_kwargs, **block_kwargs) for i in range(depth)
        )
        needs_fve = any(block.hco.needs_fve for block in self.blocks)
        self.fve = nn.Parameter(torch.empty(*resolution, dim)) if needs_fve else None
        self.sce = nn.Parameter(torch.empty(*resolution, dim)) if spatial_correction else None
        for embedding in (self.fve, self.sce):
            if embedding is not None:
                nn.init.trunc_normal_(embedding, std=0.02)
        self._cache: dict[tuple[str, int, int], tuple[int, torch.Tensor]] = {}

    def embedding(self, name: Literal["fve", "sce"], height: int, width: int) -> torch.Tensor | None:
        """The stage's FVE or SCE resized to ``(H, W, C)``, or ``None`` if the stage has none."""
        param = self.fve if name == "fve" else self.sce
        if param is None:
            return None
        if param.shape[0] == height and param.shape[1] == width:
            return param
        cacheable = not self.training and not (torch.is_grad_enabled() and param.requires_grad)
        if not cacheable:
            return _resize_embedding(param, height, width, self.fve_interp)
        key = (name, height, width)
        cached = self._cache.get(key)
        # NOTE: keyed on the parameter's in-place version too, so an eval-mode EMA copy updated with `copy_()`
        # never reads a stale resize.
        if cached is None or cached[0] != param._version:
            with torch.inference_mode(False), torch.no_grad():
                cached = (param._version, _resize_embedding(param, height, width, self.fve_interp))
            self._cache[key] = cached
        return cached[1]

    def clear_cache(self) -> None:
        """Drop the cached resized embeddings."""
        self._cache.clear()

    def train(self, mode: bool = True) -> VHeatStage:
        """Set the mode and clear the resize cache."""
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> VHeatStage:
        self.clear_cache()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        _, _, height, width = x.shape
        need_fve = any(blk.hco.needs_fve and not blk.hco.has_decay(height, width) for blk in self.blocks)
        fve = self.embedding("fve", height, width) if need_fve else None
        sce = self.embedding("sce", height, width)
        sce = None if sce is None else sce.permute(2, 0, 1).unsqueeze(0)  # (H, W, C) -> (1, C, H, W)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, fve, sce, use_reentrant=False)
            else:
                x = block(x, fve, sce)
        return x


class VHeat(nn.Module):
    """vHeat / RS-vHeat: stem(s) → four HCO stages (strides 4/8/16/32) → LayerNorm2d → GAP → Linear.

    Args:
        in_chans: band count of a single ``"optical"`` input, or ``{modality: band count}`` for one stem per
            modality feeding a shared trunk, e.g. ``{"optical": 13, "sar": 2}``.
        num_classes: classifier outputs; 0 (the default, as for every registry backbone) for no head: ``forward``
            then returns pooled features. 1000 gives upstream's ImageNet network.
        img_size: nominal input size ``H`` or ``(H, W)``; sets the FVE/SCE shapes. Any size runs at any time.
        embed_dim: stage-0 width ``C``; stage ``i`` has ``C·2^i``.
        dims: explicit stage widths (overrides ``embed_dim``).
        depths: blocks per stage.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks.
        layer_scale_init: initial layer scale ``γ`` (1e-5 for S/B), ``None`` for none.
        post_norm: post-norm blocks (S/B) instead of pre-norm (T).
        mlp_ratio: MLP hidden width ratio.
        spatial_correction: RS-vHeat spatial correction embedding (SCE) in every HCO.
        dct_impl: ``"matmul"``, ``"fft"`` or ``"auto"``.
        fft_threshold: with ``"auto"``, use the FFT path when ``max(H, W) > fft_threshold``.
        fve_interp: ``"bicubic"`` or ``"bilinear"`` FVE/SCE resizing.
        hco_core_dtype: ``"fp32"`` or ``"autocast"`` for the DCT → decay → IDCT core.
        fixed_k: ablation: a constant conductivity instead of the learned ``k`` (no FVE, no ``to_k``).
        dense_norms: a LayerNorm2d ("outnorm", docs/hco.md §Network) on the stage 0–2 outputs of ``forward_features``;
            the last stage always has one (it is also the classifier's norm). Off by default: upstream's classifier
            network, and no parameters that a head reading only some stages (e.g. classification) leaves without
            gradient, which DDP rejects. Turn it on for dense heads that read every stage.

    Attributes:
        modalities: stem names, in ``in_chans`` order.
        in_chans: band count per modality.
        default_modality: used when ``modality=None``: ``"optical"`` if present, else the first modality.
        num_features: width of the last stage.
        feature_info: per stage ``{"num_chs", "reduction", "module"}``; reductions 4, 8, 16, 32.
    """

    def __init__(
        self,
        in_chans: int | Mapping[str, int] = 3,
        num_classes: int = 0,
        img_size: SizeLike = 224,
        embed_dim: int = 96,
        dims: Sequence[int] | None = None,
        depths: Sequence[int] = (2, 2, 6, 2),
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        post_norm: bool = False,
        mlp_ratio: float = 4.0,
        spatial_correction: bool = False,
        dct_impl: DCTImpl = "matmul",
        fft_threshold: int = DEFAULT_FFT_THRESHOLD,
        fve_interp: FVEInterp = "bicubic",
        hco_core_dtype: HCOCoreDtype = "fp32",
        fixed_k: float | None = None,
        dense_norms: bool = False,
    ) -> None:
        super().__init__()
        if fve_interp not in ("bicubic", "bilinear"):
            raise ValueError(f"Unknown fve_interp {fve_interp!r}; expected 'bicubic' or 'bilinear'.")
        depths = tuple(int(d) for d in depths)
        dims = tuple(int(d) for d in dims) if dims is not None else tuple(embed_dim * 2**i for i in range(len(depths)))
        if len(dims) != len(depths):
            raise ValueError(f"dims {dims} and depths {depths} must have one entry per stage.")
        self.in_chans: dict[str, int] = format_in_chans(in_chans)
        self.modalities: tuple[str, ...] = tuple(self.in_chans)
        self.default_modality: str = pick_default_modality(self.in_chans)
        self.num_classes = num_classes
        self.img_size = format_size(img_size, "img_size")
        self.dims = dims
        self.depths = depths
        self.num_features: int = dims[-1]
        self.dense_norms = bool(dense_norms)

        self.stems = build_stems(self.in_chans, dims[0])
        rates = drop_path_rates(drop_path_rate, sum(depths))
        hco_kwargs = {
            "dct_impl": dct_impl,
            "fft_threshold": fft_threshold,
            "hco_core_dtype": hco_core_dtype,
            "fixed_k": fixed_k,
        }
        block_kwargs = {
            "post_norm": post_norm,
            "layer_scale_init": layer_scale_init,
            "mlp_ratio": mlp_ratio,
            "hco_kwargs": hco_kwargs,
        }
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        self.feature_info: list[dict[str, Any]] = []
        for i, (dim, depth, res) in enumerate(zip(dims, depths, stage_sizes(*self.img_size, len(dims)), strict=True)):
            start = sum(depths[:i])
            self.stages.append(
                VHeatStage(
                    dim,
                    depth,
                    res,
                    drop_paths=rates[start : start + depth],
                    spatial_correction=spatial_correction,
                    fve_interp=fve_interp,
                    block_kwargs=block_kwargs,
                )
            )
            if i < len(dims) - 1:
                self.downsamples.append(
                    nn.Sequential(
                        nn.Conv2d(dim, dims[i + 1], kernel_size=3, stride=2, padding=1, bias=False),
                        LayerNorm2d(dims[i + 1]),
                    )
                )
            self.feature_info.append({"num_chs": dim, "reduction": 4 * 2**i, "module": f"stages.{i}"})
        # The last outnorm is also the classifier's LayerNorm2d (upstream `classifier.norm`).
        self.outnorms = nn.ModuleList(
            LayerNorm2d(dim) if (self.dense_norms or i == len(dims) - 1) else nn.Identity()
            for i, dim in enumerate(dims)
        )
        self.head: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    # --- modalities -------------------------------------------------------------------------------------------
    def _stem_for(self, x: torch.Tensor, modality: str | None) -> nn.Module:
        name = self.default_modality if modality is None else modality
        check_modality_input(x, self.in_chans, name)
        return self.stems[name]

    # --- features ---------------------------------------------------------------------------------------------
    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] | None = None, modality: str | None = None
    ) -> list[torch.Tensor]:
        """Stage maps after their outnorms, ``(B, C_i, ⌈H/s_i⌉, ⌈W/s_i⌉)`` with strides 4/8/16/32.

        Args:
            x: ``(B, bands, H, W)`` input of ``modality``.
            indices: stages to return: ``None`` for all, ``n`` for the last ``n``, or a sequence of indices.
            modality: stem to use; ``None`` for ``default_modality``.
        """
        take = resolve_stage_indices(indices, len(self.stages))
        # NOTE: stem and trunk run channels-last (NHWC memory): LayerNorm2d, the HCO and the MLP then permute views,
        # not data; the convolutions keep that memory format.
        stem = self._stem_for(x, modality)
        x = stem(x.contiguous(memory_format=torch.channels_last)).contiguous(memory_format=torch.channels_last)
        outputs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in take:
                outputs.append(self.outnorms[i](x))
            if i == take[-1]:
                break
            x = self.downsamples[i](x)
        return outputs

    def forward_features(self, x: torch.Tensor, modality: str | None = None) -> list[torch.Tensor]:
        """The four stage maps after their outnorms (NCHW, strides 4/8/16/32); see :meth:`forward_intermediates`."""
        return self.forward_intermediates(x, None, modality)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the last (outnormed) stage map and classify it.

        Args:
            x: ``forward_features(...)[-1]``, ``(B, num_features, H, W)``.
            pre_logits: return the pooled ``(B, num_features)`` features.
        """
        x = x.mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        """Logits ``(B, num_classes)``, or pooled features ``(B, num_features)`` when ``num_classes == 0``."""
        return self.forward_head(self.forward_intermediates(x, [-1], modality)[-1])

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh ``num_classes``-way one (0 removes it)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def set_grad_checkpointing(self, enable: bool | Literal["blocks", "mlp"] = True) -> None:
        """Recompute activations in the backward pass instead of storing them (timm's call, one more policy).

        Args:
            enable: ``True`` or ``"blocks"``: every block is recomputed (keeps one map per block, about a third more
                work per training step); ``"mlp"``: only each block's MLP branch is (keeps its input instead of its
                4C-wide hidden map and LayerNorm input; the two MLP GEMMs run again, about a quarter more work);
                ``False``: nothing (docs/hco-training.md, "Checkpointing policies").
        """
        policy = checkpointing_policy(enable, type(self).__name__, ("mlp",))
        for stage in self.stages:
            stage.grad_checkpointing = policy == "blocks"
            for block in stage.blocks:
                block.recompute_mlp = policy == "mlp"

    # --- inference mode ---------------------------------------------------------------------------------------
    @property
    def is_fused(self) -> bool:
        """Whether the HCO decays are precomputed (:meth:`fuse_decay`)."""
        return any(block.hco.frozen for stage in self.stages for block in stage.blocks)

    @torch.no_grad()
    def fuse_decay(self, sizes: Sequence[SizeLike] | None = None, drop_fve: bool = False) -> VHeat:
        """Switch to inference mode: precompute ``exp(−k ⊙ Λ)`` per block for the stage sizes of each input size.

        Outputs equal training mode. Sizes not listed are computed lazily on first use while the FVE is present.
        The FVE is resized first and ``to_k``/ReLU/exp applied after, never the decay itself
        (docs/hco.md §Inference mode).

        Args:
            sizes: input sizes ``H`` or ``(H, W)``; default ``[img_size]``.
            drop_fve: delete the FVEs and ``to_k`` (deployment); only listed sizes then run.

        Returns:
            The model itself.
        """
        inputs = [format_size(s) for s in (sizes if sizes is not None else [self.img_size])]
        per_input = [stage_sizes(h, w, len(self.stages)) for h, w in inputs]
        for i, stage in enumerate(self.stages):
            maps = sorted({sizes_i[i] for sizes_i in per_input})
            fves = [stage.embedding("fve", h, w) for h, w in maps]
            for block in stage.blocks:
                block.hco.freeze(maps, fves)
        if drop_fve:
            for stage in self.stages:
                for block in stage.blocks:
                    block.hco.drop_conductivity()
                stage.fve = None
                stage.clear_cache()
        return self

    freeze_decay = fuse_decay

    def unfuse_decay(self) -> VHeat:
        """Back to training mode (the decay is recomputed from the FVE every forward)."""
        for stage in self.stages:
            for block in stage.blocks:
                block.hco.unfreeze()
        return self


def _init_weights(module: nn.Module) -> None:
    """Linear: trunc_normal(0.02), bias 0; LayerNorm: weight 1, bias 0; Conv2d keeps PyTorch's default."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def count_parameters(model: VHeat, mode: Literal["train", "inference"] = "train") -> int:
    """Parameter count as ``docs/hco.md`` §Reference numbers defines it.

    Args:
        model: a vHeat model.
        mode: ``"train"`` counts every parameter; ``"inference"`` counts upstream's inference network: without
            ``to_k`` and the FVEs, plus one frozen ``k_exp`` of ``res_h·res_w·C`` per block at the nominal size.
    """
    match mode:
        case "train":
            return sum(p.numel() for p in model.parameters())
        case "inference":
            kept = sum(
                p.numel()
                for name, p in model.named_parameters()
                if ".to_k." not in name and not name.endswith(".fve")
            )
            frozen = 0
            for stage in model.stages:
                learned = sum(1 for block in stage.blocks if block.hco.needs_fve)
                frozen += learned * stage.resolution[0] * stage.resolution[1] * stage.dim
            return kept + frozen
        case _:
            raise ValueError(f"Unknown mode {mode!r}; expected 'train' or 'inference'.")


def resize_embeddings(
    state_dict: Mapping[str, torch.Tensor], img_size: SizeLike, mode: EmbeddingResize = "bicubic"
) -> dict[str, torch.Tensor]:
    """Resize every stage FVE/SCE of a state dict to the stage sizes of a new nominal ``img_size``
    (docs/hco.md §Resolution changes).

    Use the model's ``fve_interp`` mode to fine-tune at a new size. ``"zero_pad"`` reproduces upstream's
    ``interpolate4downstream.py`` (zeros at the bottom and right; the learned block stays at its indices); it is
    physically wrong for a new size and exists only to load upstream det/seg checkpoints fine-tuned that way.

    Args:
        state_dict: weights of a vHeat model (other keys pass through unchanged).
        img_size: the new nominal input size ``H`` or ``(H, W)``.
        mode: ``"bicubic"``, ``"bilinear"`` or ``"zero_pad"``.

    Returns:
        A new state dict; the input is not modified.
    """
    targets = stage_sizes(*format_size(img_size))
    out = dict(state_dict)
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) < 3 or parts[-1] not in ("fve", "sce") or parts[-3] != "stages" or value.ndim != 3:
            continue
        height, width = targets[int(parts[-2])]
        match mode:
            case "bicubic" | "bilinear":
                out[key] = _resize_embedding(value, height, width, mode).contiguous()
            case "zero_pad":
                if value.shape[0] > height or value.shape[1] > width:
                    raise ValueError(
                        f"Cannot zero-pad {key} of shape {tuple(value.shape)} down to {height}×{width}; "
                        "use mode='bicubic' to shrink."
                    )
                out[key] = F.pad(value, (0, 0, 0, width - value.shape[1], 0, height - value.shape[0]))
            case _:
                raise ValueError(f"Unknown mode {mode!r}; expected 'bicubic', 'bilinear' or 'zero_pad'.")
    return out


def _create_vheat(preset: Mapping[str, Any], **kwargs: Any) -> VHeat:
    """Build a :class:`VHeat` from a preset; ``kwargs`` override it."""
    return VHeat(**{**preset, **kwargs})


_TINY = {"embed_dim": 96, "depths": (2, 2, 6, 2), "drop_path_rate": 0.1, "post_norm": False}
_SMALL = {"embed_dim": 96, "depths": (2, 2, 18, 2), "drop_path_rate": 0.3, "post_norm": True, "layer_scale_init": 1e-5}
_BASE = {"embed_dim": 128, "depths": (2, 2, 18, 2), "drop_path_rate": 0.5, "post_norm": True, "layer_scale_init": 1e-5}
# RS-vHeat's upstream stems: 3-band optical and 1-band SAR.
_RS_BASE = {**_BASE, "spatial_correction": True, "in_chans": {"optical": 3, "sar": 1}}


@register_model
def vheat_tiny(**kwargs: Any) -> VHeat:
    """vHeat-T: C 96, depths (2, 2, 6, 2), pre-norm; 29.56M inference-mode parameters."""
    return _create_vheat(_TINY, **kwargs)


@register_model
def vheat_small(**kwargs: Any) -> VHeat:
    """vHeat-S: C 96, depths (2, 2, 18, 2), post-norm, layer scale 1e-5; 50.05M inference-mode parameters."""
    return _create_vheat(_SMALL, **kwargs)


@register_model
def vheat_base(**kwargs: Any) -> VHeat:
    """vHeat-B: C 128, depths (2, 2, 18, 2), post-norm, layer scale 1e-5; 87.50M inference-mode parameters."""
    return _create_vheat(_BASE, **kwargs)


@register_model
def rsvheat_base(**kwargs: Any) -> VHeat:
    """RS-vHeat-B: vHeat-B with a spatial correction embedding per stage and optical + SAR stems."""
    return _create_vheat(_RS_BASE, **kwargs)


@register_model
def vheat_test(**kwargs: Any) -> VHeat:
    """Tiny pre-norm vHeat for CI: C 16, one block per stage, 64 px."""
    return _create_vheat({"embed_dim": 16, "depths": (1, 1, 1, 1), "img_size": 64}, **kwargs)


@register_model
def rsvheat_test(**kwargs: Any) -> VHeat:
    """Tiny RS-vHeat for CI: C 16, one block per stage, 64 px, post-norm, layer scale, SCE, two stems."""
    preset = {**_RS_BASE, "embed_dim": 16, "depths": (1, 1, 1, 1), "img_size": 64}
    return _create_vheat({**preset, "drop_path_rate": 0.1}, **kwargs)

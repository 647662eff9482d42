"""The frequency pretraining wrapper (docs/pretraining.md §3) around any registry backbone with ``feature_info``.

``FrequencyPretrainer`` holds the shared ``encoder`` (one stem per modality; vHeat, RS-vHeat or Heracles), one
``fuse_frequency`` module per fused stage, one reconstruction decoder per modality and the projection head. Its
forward takes a batch ``{modality: (B, C_m, H, W)}``: every image is split into ``K`` band-pass views
(:mod:`rsvheat.ssl.masking`; the modalities of a pair share the radii), all views of a modality go through the
encoder in one call, the fused stage maps are decoded back to the unmasked image (L_spa, L_fre), and L_con pulls
together the optical and SAR embeddings of a pair, or the lowest and highest views of an unpaired image.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from rsvheat._registry import create_model
from rsvheat.ssl.decoder import (
    DecoderConfig,
    FrequencyFusion,
    Predictor,
    ProjectionConfig,
    ProjectionHead,
    ReconstructionDecoder,
)
from rsvheat.ssl.errors import UnknownOptionError
from rsvheat.ssl.losses import cosine_loss, frequency_loss, info_nce, spatial_loss
from rsvheat.ssl.masking import FrequencyMasking, MaskDraw, MaskingConfig, apply_valid

__all__ = [
    "LOSS_TERMS",
    "PRETRAINER_OPTIONS",
    "ConMode",
    "FrequencyPretrainer",
    "build_pretrainer",
    "build_pretrainer_from_config",
]

ConMode = Literal["infonce", "cosine"]
LOSS_TERMS = ("spa", "fre", "con")


def _format_weights(loss_weights: Mapping[str, float] | None) -> dict[str, float]:
    weights = dict.fromkeys(LOSS_TERMS, 1.0)  # equal weights (docs/pretraining.md §4)
    given = dict(loss_weights or {})
    if unknown := set(given) - set(LOSS_TERMS):
        raise UnknownOptionError("loss_weights", unknown, LOSS_TERMS)
    for term, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"loss_weights[{term!r}] = {value!r}; expected a number >= 0.")
        weights[term] = float(value)
    return weights


def _format_fuse_at(fuse_at: Sequence[int], num_stages: int) -> tuple[int, ...]:
    stages = tuple(sorted({int(s) for s in fuse_at}))
    if not stages or stages[0] < 1 or stages[-1] > num_stages:
        raise ValueError(f"fuse_at={list(fuse_at)} must name stages 1..{num_stages} (1-based, as in the docs).")
    needed = {num_stages - 1, num_stages}
    if not needed <= set(stages):
        raise ValueError(
            f"fuse_at={list(fuse_at)} must include the last two stages {sorted(needed)}: the decoder reconstructs "
            "from the fused stages 3 and 4 (docs/pretraining.md §3); earlier stages are optional skips."
        )
    return stages


class FrequencyPretrainer(nn.Module):
    """Encoder + ``fuse_frequency`` + per-modality decoders + projection head; see the module docstring.

    Args:
        encoder: a registry image backbone (``create_model``) with ``feature_info``, ``forward_features(x,
            modality=)``, ``in_chans`` and ``modalities``, and no classifier.
        masking: masking options.
        fuse_at: 1-based stages whose ``K`` view maps are fused; must include the last two.
        loss_weights: ``{"spa", "fre", "con"}`` weights (missing ones are 1).
        con_mode: ``"infonce"`` or ``"cosine"`` (with a predictor and stop-gradient).
        temperature: InfoNCE ``τ``.
        decoder: decoder widths.
        projection: projection head (and predictor) widths.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        masking: MaskingConfig | Mapping[str, Any] | None = None,
        fuse_at: Sequence[int] = (3, 4),
        loss_weights: Mapping[str, float] | None = None,
        con_mode: ConMode = "infonce",
        temperature: float = 0.1,
        decoder: DecoderConfig | Mapping[str, Any] | None = None,
        projection: ProjectionConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        feature_info = getattr(encoder, "feature_info", None)
        if not feature_info or not callable(getattr(encoder, "forward_features", None)):
            raise ValueError(
                f"{type(encoder).__name__} has no dense `feature_info` / `forward_features`; frequency pretraining "
                "needs an image backbone with dense `feature_info` (vHeat, RS-vHeat, Heracles)."
            )
        if getattr(encoder, "num_classes", 0):
            raise ValueError(
                f"The encoder has a {encoder.num_classes}-class head, which pretraining never trains; build it "
                "with num_classes=0 (the registry default)."
            )
        if con_mode not in ("infonce", "cosine"):
            raise ValueError(f"con_mode={con_mode!r}; expected 'infonce' or 'cosine'.")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r}; expected > 0.")
        self.encoder = encoder
        self.masking = FrequencyMasking(
            masking if isinstance(masking, MaskingConfig) else MaskingConfig.from_dict(masking)
        )
        self.decoder_config = decoder if isinstance(decoder, DecoderConfig) else DecoderConfig.from_dict(decoder)
        self.projection_config = (
            projection if isinstance(projection, ProjectionConfig) else ProjectionConfig.from_dict(projection)
        )
        self.fuse_at = _format_fuse_at(fuse_at, len(feature_info))
        self.loss_weights = _format_weights(loss_weights)
        self.con_mode: ConMode = con_mode
        self.temperature = float(temperature)
        num_views = self.masking.num_views
        self.fuse_frequency = nn.ModuleDict(
            {str(s): FrequencyFusion(int(feature_info[s - 1]["num_chs"]), num_views) for s in self.fuse_at}
        )
        skips = [s - 1 for s in self.fuse_at if s < len(feature_info) - 1]
        self.decoders = nn.ModuleDict(
            {
                name: ReconstructionDecoder(feature_info, bands, self.decoder_config, skip_stages=skips)
                for name, bands in encoder.in_chans.items()
            }
        )
        self.proj = ProjectionHead(int(feature_info[-1]["num_chs"]), self.projection_config)
        self.predictor = Predictor(self.projection_config) if con_mode == "cosine" else None

    @property
    def config(self) -> dict[str, Any]:
        """Plain-data recipe of this pretrainer (stored beside the exported encoder)."""
        kwargs = dict(getattr(self.encoder, "model_kwargs", {}))
        return {
            "backbone": getattr(self.encoder, "model_name", type(self.encoder).__name__),
            "in_chans": dict(self.encoder.in_chans),
            "backbone_kwargs": {k: v for k, v in kwargs.items() if k != "in_chans"},
            "masking": self.masking.config.to_dict(),
            "fuse_at": list(self.fuse_at),
            "loss_weights": dict(self.loss_weights),
            "con_mode": self.con_mode,
            "temperature": self.temperature,
            "decoder": self.decoder_config.to_dict(),
            "projection": self.projection_config.to_dict(),
        }

    def _check_batch(
        self, batch: Mapping[str, torch.Tensor], valid: Mapping[str, torch.Tensor] | None
    ) -> tuple[int, tuple[int, int]]:
        if not isinstance(batch, Mapping) or not batch:
            raise ValueError("The batch must be a non-empty dict {modality: (B, C, H, W) tensor}.")
        if len(batch) > 2:
            raise ValueError(
                f"A batch holds one modality or one optical/SAR pair, got {len(batch)}: {list(batch)}; split it."
            )
        sizes = set()
        for name, x in batch.items():
            if name not in self.encoder.in_chans:
                raise ValueError(
                    f"Batch modality {name!r} has no stem; the encoder's modalities: {list(self.encoder.in_chans)}."
                )
            if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
                raise ValueError(
                    f"batch[{name!r}] must be a float (B, C, H, W) tensor, got {getattr(x, 'shape', x)!r}."
                )
            sizes.add(int(x.shape[0]))
        if len(sizes) != 1:
            raise ValueError(
                f"The paired modalities have different batch sizes {[int(x.shape[0]) for x in batch.values()]}; "
                "row i of each must be the same place."
            )
        for name in valid or {}:
            if name not in batch:
                raise ValueError(f"valid names modality {name!r}, which is not in the batch {list(batch)}.")
        first = next(iter(batch.values()))
        return sizes.pop(), (int(first.shape[-2]), int(first.shape[-1]))

    def make_views(
        self,
        batch: Mapping[str, torch.Tensor],
        valid: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], MaskDraw]:
        """The ``(K, B, C_m, H, W)`` views of every modality, from one radius draw shared by the pair."""
        batch_size, size = self._check_batch(batch, valid)
        valid = dict(valid or {})
        draw = self.masking.draw(batch_size, size, generator)  # one draw: the parts of a pair share ρ
        return {name: self.masking.views(x, draw, valid.get(name)) for name, x in batch.items()}, draw

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        valid: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One pretraining step's losses.

        Args:
            batch: ``{modality: (B, C_m, H, W)}`` normalised images; two modalities are pairs of the same place
                (row ``i`` of each), giving cross-modal positives; one modality uses its low/high views.
            valid: ``{modality: (B, H, W) or (B, C_m, H, W)}`` bool, True where a pixel is usable; missing = all.
            generator: source of the masking radii (deterministic when given).

        Returns:
            ``"loss"`` (weighted sum, with gradient) and the detached terms ``"spa"``, ``"fre"``, ``"con"``.
        """
        all_views, _ = self.make_views(batch, valid, generator)
        valid = dict(valid or {})
        num_views = self.masking.num_views
        spa_terms, fre_terms, pooled = [], [], []
        for name, x in batch.items():
            mask = valid.get(name)
            batch_size = x.shape[0]
            stacked = all_views[name].reshape(num_views * batch_size, *x.shape[1:])  # (K, B, ...) -> (K·B, C, H, W)
            features = self.encoder.forward_features(stacked, modality=name)
            per_view = [f.reshape(num_views, batch_size, *f.shape[1:]) for f in features]  # (K, B, C_i, h, w)
            fused = {s - 1: self.fuse_frequency[str(s)](list(per_view[s - 1].unbind(0))) for s in self.fuse_at}
            recon = self.decoders[name](fused, (x.shape[-2], x.shape[-1]))
            target = apply_valid(x, mask)  # invalid pixels (possibly NaN) -> 0; they are excluded from L_spa
            spa_terms.append(spatial_loss(recon, target, mask))
            fre_terms.append(frequency_loss(recon, target, mask))
            if len(batch) == 2:
                pooled.append(fused[len(per_view) - 1])  # a pair: each modality's fused top map
            else:
                pooled.extend([per_view[-1][0], per_view[-1][-1]])  # unpaired: lowest and highest view
        spa = torch.stack(spa_terms).mean()
        fre = torch.stack(fre_terms).mean()
        z_a, z_b = self.proj(pooled[0]), self.proj(pooled[1])
        if self.predictor is not None:
            con = cosine_loss(self.predictor(z_a), self.predictor(z_b), z_a, z_b)
        else:
            con = info_nce(z_a, z_b, self.temperature)
        w = self.loss_weights
        loss = w["spa"] * spa + w["fre"] * fre + w["con"] * con
        return {"loss": loss, "spa": spa.detach(), "fre": fre.detach(), "con": con.detach()}


def _create_encoder(backbone: str, in_chans: Mapping[str, int], backbone_kwargs: Mapping[str, Any]) -> nn.Module:
    """``create_model(backbone, in_chans=..., **backbone_kwargs)``; an unknown kwarg lists the backbone's options."""
    if "in_chans" in backbone_kwargs:
        raise ValueError("Pass the stems as build_pretrainer(in_chans=...), not inside backbone_kwargs.")
    try:
        return create_model(backbone, in_chans=dict(in_chans), **backbone_kwargs)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise ValueError(
                f"{backbone!r} cannot be built with in_chans={dict(in_chans)} ({err}); frequency pretraining needs "
                "an image backbone with one stem per modality and dense `feature_info` (vHeat, RS-vHeat, Heracles)."
            ) from err
        with torch.device("meta"):  # a parameter-free probe, only to read the constructor's signature
            probe = create_model(backbone, in_chans=dict(in_chans))
        params = inspect.signature(type(probe).__init__).parameters.values()
        known = [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]
        raise UnknownOptionError(f"backbone_kwargs of {backbone!r}", set(backbone_kwargs) - set(known), known) from err


def build_pretrainer(
    backbone: str,
    in_chans: Mapping[str, int],
    *,
    backbone_kwargs: Mapping[str, Any] | None = None,
    masking: Mapping[str, Any] | None = None,
    fuse_at: Sequence[int] = (3, 4),
    loss_weights: Mapping[str, float] | None = None,
    con_mode: ConMode = "infonce",
    temperature: float = 0.1,
    decoder: Mapping[str, Any] | None = None,
    projection: Mapping[str, Any] | None = None,
) -> FrequencyPretrainer:
    """Build the frequency pretrainer around the registry backbone ``backbone``.

    Args:
        backbone: registry name, e.g. ``"rsvheat_base"`` or ``"heracles_test"``.
        in_chans: one stem per modality, e.g. ``{"optical": 13, "sar": 2}``.
        backbone_kwargs: further ``create_model`` options (e.g. ``img_size``, ``drop_path_rate``).
        masking: :class:`MaskingConfig` options (``radius_mode``, ``pad_mode``, ``num_bands``, ``annulus``, …).
        fuse_at: 1-based stages to fuse; must include 3 and 4 (for a 4-stage backbone).
        loss_weights: ``{"spa": 1, "fre": 1, "con": 1}`` overrides.
        con_mode: ``"infonce"`` or ``"cosine"``.
        temperature: InfoNCE ``τ``.
        decoder: :class:`DecoderConfig` options (``fuse_dim``, ``widths``).
        projection: :class:`ProjectionConfig` options (``hidden``, ``dim``, ``predictor_hidden``).

    Raises:
        UnknownOptionError: a block names unknown keys (the message lists the known ones).
        ValueError: an unknown backbone (listing the registered ones), a backbone without dense features, or an
            invalid value.
    """
    if isinstance(in_chans, int) or not isinstance(in_chans, Mapping) or not in_chans:
        raise ValueError(f"in_chans must be a dict modality -> band count, e.g. {{'optical': 13}}; got {in_chans!r}.")
    encoder = _create_encoder(backbone, in_chans, dict(backbone_kwargs or {}))
    return FrequencyPretrainer(
        encoder,
        masking=masking,
        fuse_at=fuse_at,
        loss_weights=loss_weights,
        con_mode=con_mode,
        temperature=temperature,
        decoder=decoder,
        projection=projection,
    )


PRETRAINER_OPTIONS: tuple[str, ...] = tuple(inspect.signature(build_pretrainer).parameters)


def build_pretrainer_from_config(config: Mapping[str, Any]) -> FrequencyPretrainer:
    """:func:`build_pretrainer` from one mapping (e.g. the ``model`` block of a YAML); unknown keys are an error."""
    config = copy.deepcopy(dict(config))
    if unknown := set(config) - set(PRETRAINER_OPTIONS):
        raise UnknownOptionError("pretrainer", unknown, PRETRAINER_OPTIONS)
    for required in ("backbone", "in_chans"):
        if required not in config:
            raise ValueError(f"The pretrainer config needs {required!r}; it has {sorted(config)}.")
    if "fuse_at" in config:
        config["fuse_at"] = tuple(config["fuse_at"])
    return build_pretrainer(config.pop("backbone"), config.pop("in_chans"), **config)

"""The ``incremental:`` configuration of change-aware processing (docs/change-aware.md §Configuration).

One frozen dataclass per block, plain data only, so the whole config is recorded in every run's metadata and in
``DIR/accounting.json``. :func:`incremental_config` builds it from a (YAML) mapping, rejecting unknown keys by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal

__all__ = [
    "AuditConfig",
    "ChangeScoreId",
    "ChipConfig",
    "CoregConfig",
    "IncrementalConfig",
    "MorphologyConfig",
    "ReferenceConfig",
    "TauPixConfig",
    "ValidityConfig",
    "incremental_config",
]

ChangeScoreId = Literal["norm_diff", "index_delta", "embed_delta", "sar_logratio"]
CHANGE_SCORES: tuple[str, ...] = ("norm_diff", "index_delta", "embed_delta", "sar_logratio")

# Sentinel-2 scene classification classes kept as valid: 4 vegetation, 5 not vegetated, 6 water, 7 unclassified,
# 11 snow/ice (ESA Sen2Cor L2A product definition, SCL band).
S2_SCL_VALID: tuple[int, ...] = (4, 5, 6, 7, 11)


@dataclass(frozen=True)
class ReferenceConfig:
    """Per-tile reference: a rolling median of the last ``n_obs`` clear observations (``last_clear``: ``n_obs`` 1)."""

    kind: Literal["rolling_median", "last_clear"] = "rolling_median"
    n_obs: int = 4


@dataclass(frozen=True)
class ValidityConfig:
    """Which pixels carry information: no-data always invalid; ``scl`` / ``s2cloudless`` mark clouds and shadows,
    dilated by ``dilate_px``; ``nodata`` uses the no-data mask alone (no quality raster available)."""

    source: Literal["scl", "s2cloudless", "nodata"] = "scl"
    scl_valid: tuple[int, ...] = S2_SCL_VALID
    cloud_prob_max: float = 0.4
    dilate_px: int = 4


@dataclass(frozen=True)
class CoregConfig:
    """Phase-correlation check against the reference; a larger shift triggers ``misregistration_policy``."""

    max_shift_px: float = 0.5
    misregistration_policy: Literal["full_recompute", "skip"] = "full_recompute"


@dataclass(frozen=True)
class TauPixConfig:
    """Pixel threshold: ``fixed`` ``value``, or ``otsu`` per tile floored at ``floor``."""

    mode: Literal["fixed", "otsu"] = "fixed"
    value: float = 0.1
    floor: float = 0.05


@dataclass(frozen=True)
class MorphologyConfig:
    """Opening (speckle) then dilation by the model halo; ``halo_px`` ``None``: the model's own (R for sub-chip
    crop mode, 0 for chip-level reuse)."""

    open_px: int = 3
    halo_px: int | None = None


@dataclass(frozen=True)
class ChipConfig:
    """Chip decision: recompute when the changed fraction exceeds ``tau_chip`` or the cache is older than
    ``max_age_days``."""

    tau_chip: float = 0.005
    max_age_days: float = 90.0


@dataclass(frozen=True)
class AuditConfig:
    """Drift audit: re-compute ``sample_frac`` of the reused chips, alarm past ``tol_emb`` / ``tol_pix``."""

    sample_frac: float = 0.02
    tol_emb: float = 0.02
    tol_pix: float = 0.98
    seed: int = 0


@dataclass(frozen=True)
class IncrementalConfig:
    """Everything change-aware processing is configured by (docs/change-aware.md §Configuration)."""

    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    validity: ValidityConfig = field(default_factory=ValidityConfig)
    coreg: CoregConfig = field(default_factory=CoregConfig)
    change_score: ChangeScoreId = "index_delta"
    tau_pix: TauPixConfig = field(default_factory=TauPixConfig)
    morphology: MorphologyConfig = field(default_factory=MorphologyConfig)
    chip: ChipConfig = field(default_factory=ChipConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)

    def __post_init__(self) -> None:
        if self.change_score not in CHANGE_SCORES:
            raise ValueError(f"change_score {self.change_score!r} is not one of {', '.join(CHANGE_SCORES)}")
        if self.reference.n_obs < 1:
            raise ValueError(f"reference.n_obs must be >= 1, got {self.reference.n_obs}")
        if not 0.0 <= self.audit.sample_frac <= 1.0:
            raise ValueError(f"audit.sample_frac must be in [0, 1], got {self.audit.sample_frac}")

    @property
    def n_obs(self) -> int:
        """Observations the reference keeps per pixel (1 for ``last_clear``)."""
        return 1 if self.reference.kind == "last_clear" else self.reference.n_obs

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (tuples become lists)."""
        return asdict(self)


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else known[name].default
        if is_dataclass(default) and isinstance(value, Mapping):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def incremental_config(values: Mapping[str, Any] | None = None) -> IncrementalConfig:
    """An :class:`IncrementalConfig` from a mapping (the ``incremental:`` YAML block); missing keys keep defaults.

    Raises:
        ValueError: an unknown key (named, with the valid ones) or an invalid value.
    """
    return _build(IncrementalConfig, dict(values or {}), "incremental") if values else IncrementalConfig()

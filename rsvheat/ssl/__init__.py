"""Self-supervised frequency pretraining (pure PyTorch, no Ray): masking, the pretraining wrapper, losses, export.

The objective and every design choice are described in ``docs/pretraining.md``.
"""

from rsvheat.ssl.decoder import DecoderConfig, ProjectionConfig
from rsvheat.ssl.errors import NonFiniteLossError, UnknownOptionError
from rsvheat.ssl.export import EncoderTransfer, export_encoder, load_encoder_weights
from rsvheat.ssl.losses import cosine_loss, frequency_loss, info_nce, spatial_loss
from rsvheat.ssl.masking import FrequencyMasking, MaskDraw, MaskingConfig
from rsvheat.ssl.pretrainer import (
    PRETRAINER_OPTIONS,
    FrequencyPretrainer,
    build_pretrainer,
    build_pretrainer_from_config,
)

__all__ = [
    "PRETRAINER_OPTIONS",
    "DecoderConfig",
    "EncoderTransfer",
    "FrequencyMasking",
    "FrequencyPretrainer",
    "MaskDraw",
    "MaskingConfig",
    "NonFiniteLossError",
    "ProjectionConfig",
    "UnknownOptionError",
    "build_pretrainer",
    "build_pretrainer_from_config",
    "cosine_loss",
    "export_encoder",
    "frequency_loss",
    "info_nce",
    "load_encoder_weights",
    "spatial_loss",
]

"""rsvheat: remote-sensing backbones built on the Heat Conduction Operator (pure PyTorch; no Ray import)."""

from rsvheat import models as models
from rsvheat import ssl as ssl
from rsvheat._registry import create_model, is_model, list_models, register_model
from rsvheat.checkpoint import check_stats, load_checkpoint, load_checkpoint_meta, save_checkpoint
from rsvheat.tasks import ChangeTaskModel, TaskModel, build_task_model

__all__ = [
    "ChangeTaskModel",
    "TaskModel",
    "build_task_model",
    "check_stats",
    "create_model",
    "is_model",
    "list_models",
    "load_checkpoint",
    "load_checkpoint_meta",
    "register_model",
    "save_checkpoint",
]

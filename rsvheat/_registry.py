"""A timm-style model registry: ``register_model``, ``create_model`` and ``list_models``."""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

__all__ = ["create_model", "is_model", "list_models", "register_model"]

_ModelFn = TypeVar("_ModelFn", bound=Callable[..., nn.Module])
_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: _ModelFn) -> _ModelFn:
    """Register a model factory under its function name. Registering a name twice warns."""
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS and _MODEL_ENTRYPOINTS[name] is not fn:
        warnings.warn(f"Model {name!r} is registered twice; the later definition wins.", stacklevel=2)
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching a shell-style ``pattern``."""
    return sorted(name for name in _MODEL_ENTRYPOINTS if fnmatch.fnmatch(name, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODEL_ENTRYPOINTS


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Keyword arguments whose value is ``None`` are dropped, so an unset CLI flag never overrides a model default.

    Args:
        name: registered model name, e.g. ``"rsvheat_base"``.
        **kwargs: constructor overrides, e.g. ``in_chans={"optical": 13, "sar": 2}`` or ``num_classes=10``.

    Returns:
        The model, with ``model_name`` and ``model_kwargs`` attributes recording how it was built.

    Raises:
        ValueError: ``name`` is not registered; the message lists the registered names.
    """
    if name not in _MODEL_ENTRYPOINTS:
        raise ValueError(f"Unknown model {name!r}; registered models: {', '.join(list_models()) or '(none)'}.")
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    model = _MODEL_ENTRYPOINTS[name](**kwargs)
    # Recorded so a checkpoint can rebuild the model with `create_model(model.model_name, **model.model_kwargs)`.
    model.model_name = name
    model.model_kwargs = copy.deepcopy(kwargs)  # a snapshot: later edits of the caller's dicts do not leak in
    return model

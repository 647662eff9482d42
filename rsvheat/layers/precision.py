"""Local precision control: run a numerically sensitive op in fp32 with autocast switched off
(docs/hco.md §Mixed precision)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["autocast_enabled", "autocast_off"]


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Disable autocast for ``device``; a no-op on devices autocast does not know (e.g. ``meta``)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is active for ``device`` (False on devices autocast does not know)."""
    return torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type)

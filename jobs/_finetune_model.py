"""The fine-tuned model of one trial: the encoder (pretrained or new), the task head, freezing and layer decay.

``--encoder`` modes (docs/finetune-job.md "Encoder"):

- ``frozen``: no encoder parameter trains; the encoder runs in eval mode (norm statistics stay those pretrained), so
  every encoder tensor of ``best.pt`` is bit-identical to the pretrained one. Only the head learns.
- ``full``: everything trains at one learning rate.
- ``layer-decay``: everything trains; the head at ``lr`` and encoder layer ``i`` of ``L`` at
  ``lr * layer_decay ** (L - i)`` (stems are layer 0, each block one layer, the last norms layer ``L``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from rsvheat.tasks import BaseTaskModel, build_task_model
from rsvheat.transfer import TransferReport, load_pretrained_encoder

__all__ = ["ENCODER_MODES", "build_model", "encoder_layer_ids", "freeze_encoder", "param_groups"]

ENCODER_MODES = ("frozen", "full", "layer-decay")
_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")
_STAGE = re.compile(r"^(?:stages|downsamples)\.(\d+)\.")


def build_model(
    *,
    task: str,
    model: str,
    stem: str,
    bands: tuple[str, ...],
    img_size: int,
    num_classes: int | None,
    head_kwargs: Mapping[str, Any],
    pretrained: str | None,
    min_band_overlap: float = 0.5,
) -> tuple[BaseTaskModel, TransferReport | None]:
    """The task model; with ``pretrained`` its encoder is the checkpoint's (``model`` is then ignored).

    Raises:
        rsvheat.errors.BandMatchError: the checkpoint's stems do not fit ``bands``.
    """
    if pretrained is None:
        backbone_kwargs = {"in_chans": {stem: len(bands)}, "img_size": img_size}
        return build_task_model(task, model, num_classes, backbone_kwargs, **head_kwargs), None  # type: ignore[arg-type]
    encoder, report = load_pretrained_encoder(pretrained, stem=stem, bands=bands, img_size=img_size,
                                              min_overlap=min_band_overlap)
    return build_task_model(task, encoder, num_classes, **head_kwargs), report  # type: ignore[arg-type]


def encoder_layer_ids(encoder: nn.Module) -> tuple[dict[str, int], int]:
    """Layer id per encoder parameter name, and the number of layers ``L`` (see the module docstring)."""
    names = [n for n, _ in encoder.named_parameters()]
    blocks: dict[tuple[int, int], None] = {}
    for name in names:
        if (m := _BLOCK.match(name)) is not None:
            blocks[(int(m[1]), int(m[2]))] = None
    order = {block: i + 1 for i, block in enumerate(sorted(blocks))}
    first_of_stage = {}
    for stage, block in sorted(blocks):
        first_of_stage.setdefault(stage, order[(stage, block)])
    last = len(order) + 1
    ids = {}
    for name in names:
        if name.startswith("stems."):
            ids[name] = 0
        elif (m := _BLOCK.match(name)) is not None:
            ids[name] = order[(int(m[1]), int(m[2]))]
        elif (m := _STAGE.match(name)) is not None:  # stage-level tensors (FVE/SCE, downsampling) join its 1st block
            ids[name] = first_of_stage.get(int(m[1]), last)
        else:
            ids[name] = last
    return ids, last


def freeze_encoder(model: BaseTaskModel) -> None:
    """``frozen`` mode: the encoder's parameters stop training (the loop also keeps the encoder in eval mode)."""
    for param in model.encoder.parameters():
        param.requires_grad_(False)


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in ("fve", "sce")


def param_groups(model: BaseTaskModel, *, mode: str, lr: float, weight_decay: float, layer_decay: float
                 ) -> list[dict[str, Any]]:
    """AdamW groups for ``mode``: per (layer, decay or not); no weight decay on biases, norms and FVE/SCE."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}

    def add(params: Iterator[tuple[str, nn.Parameter]], scale_of: Mapping[str, float]) -> None:
        for name, param in params:
            if not param.requires_grad:
                continue
            wd = 0.0 if _no_decay(name, param) else weight_decay
            groups.setdefault((lr * scale_of.get(name, 1.0), wd), []).append(param)

    if mode != "frozen":
        scales: dict[str, float] = {}
        if mode == "layer-decay":
            ids, last = encoder_layer_ids(model.encoder)
            scales = {name: layer_decay ** (last - i) for name, i in ids.items()}
        add(model.encoder.named_parameters(), scales)
    add(model.head.named_parameters(), {})
    return [{"params": p, "lr": group_lr, "initial_lr": group_lr, "weight_decay": wd}
            for (group_lr, wd), p in groups.items()]

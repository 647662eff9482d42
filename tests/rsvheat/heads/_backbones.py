"""Shared helpers for head/task/checkpoint tests: the image backbones' tiny variants and a tiny training loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

import rsvheat


def image_test_backbones() -> list[str]:
    """Every registered ``*_test`` variant that takes (B, C, H, W) images (not the time-series ones)."""
    return [n for n in rsvheat.list_models("*_test") if "_ts" not in n and "chipseq" not in n]


def task_test_backbone() -> str:
    """The backbone the task tests build on: ``vheat_test`` when registered, else the first image test variant."""
    names = image_test_backbones()
    return "vheat_test" if "vheat_test" in names else names[0]


def train_steps(model: torch.nn.Module, step_loss: Callable[[], torch.Tensor], steps: int, lr: float = 3e-3) -> float:
    """Run ``steps`` AdamW steps on ``step_loss()``; return the first loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    first = float("nan")
    for i in range(steps):
        loss = step_loss()
        if i == 0:
            first = loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Run each test on one intra-op thread, then restore the previous setting (autouse where imported).

    NOTE: these tiny models gain nothing from a second thread, and on a busy 2-core machine the OpenMP barriers of
    many small ops made the tests 10-20x slower (measured: the detection overfit took 73 s with 2 threads, 5 s with 1).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""A worker for the two-process gloo test of the gathered InfoNCE (imported by spawned processes)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from rsvheat.ssl.losses import info_nce


def gathered_info_nce(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Each rank takes its rows of a fixed global batch, computes the local InfoNCE and saves loss and grads."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(0)
        z_a, z_b = torch.randn(7, 16, generator=gen), torch.randn(7, 16, generator=gen)
        rows = [slice(0, 4), slice(4, 7)][rank]  # unequal batch sizes per rank (4 and 3)
        local_a = z_a[rows].clone().requires_grad_(True)
        local_b = z_b[rows].clone().requires_grad_(True)
        loss = info_nce(local_a, local_b, 0.1)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad_a": local_a.grad, "grad_b": local_b.grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()

"""Data-parallel training on torch.distributed (gloo on CPU, NCCL on CUDA).

Launched by torchrun (`torchrun --nproc-per-node N -m sae_fast.cli train --parallel data`),
which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Every rank draws the
same global batch (the activation store's order is a pure function of seed and step) and
keeps its own contiguous share of it; gradients are averaged with one all-reduce over a
flat buffer, so with equal shares each step equals the single-process step on the global
batch (the loss is a mean over rows). Dead-latent counters are kept in step by an
all-reduce of the fired mask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import PARALLEL
from ..errors import ConfigError


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank and world size (1 and 0 when not parallel)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(parallel: str, device: torch.device) -> tuple[Group, torch.device]:
    """Join the process group torchrun describes (or the one already initialised); returns
    the group and this rank's device (cuda:LOCAL_RANK for CUDA runs)."""
    if parallel not in PARALLEL:
        raise ConfigError(f"unknown parallel mode {parallel!r}; expected one of {PARALLEL}")
    if parallel == "none":
        return Group(), device
    if not dist.is_initialized():
        missing = [
            v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ
        ]
        if missing:
            raise ConfigError(
                f"--parallel {parallel} needs torchrun (or {', '.join(missing)} set): "
                f"torchrun --nproc-per-node N -m sae_fast.cli train --parallel {parallel} ..."
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return Group(dist.get_rank(), dist.get_world_size(), local), device


def share(rows: Tensor, group: Group) -> Tensor:
    """This rank's contiguous share of a global batch (the batch must split evenly)."""
    if group.world == 1:
        return rows
    n = rows.shape[0]
    if n % group.world:
        raise ConfigError(f"batch_size {n} must be a multiple of the world size {group.world}")
    per = n // group.world
    return rows[group.rank * per : (group.rank + 1) * per]


def average_gradients(params: list[Tensor], group: Group) -> None:
    """grad := mean over ranks, one all-reduce over a flat copy of every gradient."""
    if group.world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= group.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(mask: Tensor, group: Group) -> Tensor:
    """Elementwise OR of a bool mask over ranks."""
    if group.world == 1:
        return mask
    as_int = mask.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.bool()


def mean_logs(logs: dict[str, float], group: Group, device: torch.device) -> dict[str, float]:
    """Per-rank scalar logs averaged over ranks (same keys on every rank)."""
    if group.world == 1:
        return logs
    keys = sorted(logs)
    t = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / group.world for k, v in zip(keys, t.tolist(), strict=True)}


def barrier(group: Group) -> None:
    """Wait for every rank (no-op alone)."""
    if group.world > 1:
        dist.barrier()

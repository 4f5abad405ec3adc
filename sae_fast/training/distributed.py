"""Parallel training on torch.distributed (gloo on CPU, NCCL on CUDA).

Launched by torchrun (`torchrun --nproc-per-node N -m sae_fast.cli train --parallel data`),
which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.

The ranks form a grid of `replicas x shards`: rank r is feature shard `r % shards` of data
replica `r // shards`. `--parallel data` is `shards = 1`; `--parallel features` is one
replica by default, or `world / feature_shards` replicas (a 2D grid).

Data parallel: every replica draws the same global batch (the activation store's order is a
pure function of seed and step) and keeps its own contiguous share of it; gradients are
averaged over replicas with one all-reduce over a flat buffer, so with equal shares each step
equals the single-process step on the global batch (the loss is a mean over rows). Dead-latent
counters are kept in step by an all-reduce of the fired mask; BatchTopK exchanges its
candidates over every rank, so it selects over the global batch. Feature sharding: see
`sharded.py`. Without a cache, `data.collect.collect_shares` splits activation
collection over the ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import PARALLEL
from ..data.collect import barrier  # noqa: F401 (one barrier for the run and the collection)
from ..errors import ConfigError


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank and world size (0 and 1 when not parallel), and
    its cell of the `replicas x shards` grid with the process groups of its row and column."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    shards: int = 1  # feature shards per data replica
    data_pg: Any = field(default=None, compare=False)  # same shard, every replica
    feature_pg: Any = field(default=None, compare=False)  # same replica, every shard
    gather_pg: Any = field(default=None, compare=False)  # feature_pg on gloo (checkpoints)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def replicas(self) -> int:
        return self.world // self.shards

    @property
    def replica(self) -> int:
        return self.rank // self.shards

    @property
    def shard(self) -> int:
        return self.rank % self.shards


def _grid(shards: int, backend: str) -> tuple[Any, Any, Any]:
    """Build every row and column group of the grid (all ranks must create all of them, in
    the same order) and return this rank's (data_pg, feature_pg, gather_pg)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if shards == 1:
        return None, None, None
    mine: dict[str, Any] = {}
    for r in range(world // shards):
        ranks = list(range(r * shards, (r + 1) * shards))
        pg = dist.new_group(ranks)
        gloo = pg if backend == "gloo" else dist.new_group(ranks, backend="gloo")
        if rank in ranks:
            mine["feature"], mine["gather"] = pg, gloo
    for s in range(shards):
        ranks = list(range(s, world, shards))
        pg = dist.new_group(ranks)
        if rank in ranks:
            mine["data"] = pg
    return mine["data"], mine["feature"], mine["gather"]


def init(
    parallel: str, device: torch.device, feature_shards: int = 0
) -> tuple[Group, torch.device]:
    """Join the process group torchrun describes (or the one already initialised) and lay
    the ranks out as a grid; returns the group and this rank's device (cuda:LOCAL_RANK for
    CUDA runs). `feature_shards` (features mode): shards per replica, 0 = every rank."""
    if parallel not in PARALLEL:
        raise ConfigError(f"unknown parallel mode {parallel!r}; expected one of {PARALLEL}")
    if parallel == "none":
        return Group(), device
    if parallel == "data" and feature_shards not in (0, 1):
        raise ConfigError(
            f"feature_shards={feature_shards} needs --parallel features (data parallel "
            "keeps every feature on every rank)"
        )
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
    world = dist.get_world_size()
    shards = 1 if parallel == "data" else (feature_shards or world)
    if world % shards:
        raise ConfigError(
            f"feature_shards={shards} must divide the world size {world} "
            "(the ranks form a replicas x shards grid)"
        )
    data_pg, feature_pg, gather_pg = _grid(shards, dist.get_backend())
    group = Group(dist.get_rank(), world, local, shards, data_pg, feature_pg, gather_pg)
    return group, device


def share(rows: Tensor, group: Group) -> Tensor:
    """This replica's contiguous share of a global batch (the batch must split evenly)."""
    if group.replicas == 1:
        return rows
    n = rows.shape[0]
    if n % group.replicas:
        raise ConfigError(
            f"batch_size {n} must be a multiple of the number of data replicas {group.replicas}"
        )
    per = n // group.replicas
    return rows[group.replica * per : (group.replica + 1) * per]


def average_gradients(params: list[Tensor], group: Group) -> None:
    """grad := mean over data replicas, one all-reduce over a flat copy of every gradient."""
    if group.replicas == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group.data_pg)
    flat /= group.replicas
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(mask: Tensor, group: Group) -> Tensor:
    """Elementwise OR of a bool mask over data replicas."""
    if group.replicas == 1:
        return mask
    as_int = mask.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX, group=group.data_pg)
    return as_int.bool()


def mean_logs(logs: dict[str, float], group: Group, device: torch.device) -> dict[str, float]:
    """Per-replica scalar logs averaged over data replicas (same keys on every rank)."""
    if group.replicas == 1:
        return logs
    keys = sorted(logs)
    t = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group.data_pg)
    return {k: float(v) / group.replicas for k, v in zip(keys, t.tolist(), strict=True)}


def any_flag(flag: bool, group: Group) -> bool:
    """Whether any data replica passed True (every rank gets the same answer)."""
    if group.replicas == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group.data_pg)
    return bool(t.item())


def replica_topk(t: Tensor, m: int, group: Group) -> Tensor:
    """The `m` largest of each column of `t` `[rows, n >= 1]` over the rows of every data replica,
    descending (`[min(m, all rows), n]`; the same on every replica)."""
    top = t.topk(min(m, t.shape[0]), dim=0).values
    if group.replicas == 1:
        return top
    pad = top.new_full((m - top.shape[0], top.shape[1]), -torch.inf)
    mine = torch.cat([top, pad]).contiguous()
    parts = [torch.empty_like(mine) for _ in range(group.replicas)]
    dist.all_gather(parts, mine, group=group.data_pg)
    top = torch.cat(parts).topk(m, dim=0).values
    return top[: int(torch.isfinite(top[:, 0]).sum())]  # fewer rows than m in all: no pad


def replica_mean(t: Tensor, group: Group) -> Tensor:
    """The mean of `t` (float64, CPU) over data replicas."""
    if group.replicas == 1:
        return t
    t = t.to(_collective_device(), copy=True)
    dist.all_reduce(t, group=group.data_pg)
    return (t / group.replicas).cpu()


def _collective_device() -> torch.device:
    """Where a small tensor must live for the default process group's backend."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_objects(obj, group: Group) -> list:
    """`obj` of every rank, by rank (just `[obj]` alone)."""
    if group.world == 1:
        return [obj]
    out: list = [None] * group.world
    dist.all_gather_object(out, obj)
    return out

"""Feature sharding: each rank of a data replica holds `d_sae / shards` consecutive latents
(its columns of W_enc and b_enc, its rows of W_dec, its thresholds); b_dec and a skip
transcoder's W_skip are replicated (W_skip's gradient, through the target, is whole on every
shard).

A sharded step computes exactly the single-process step:
- TopK: every shard takes the top-k of its own latents; the candidates (value, global index)
  are all-gathered and each rank keeps those of its own that are in the global top-k
  (value descending, lower index on ties: the order of `ref.topk_select`). A global winner
  is always in its shard's local top-k, so nothing is lost.
- BatchTopK: the same selection over the whole batch (flat index `b * d_sae + f`).
- Decoding: each shard decodes its winners; the partial reconstructions are summed by an
  all-reduce whose backward is the identity (every shard computes the same loss from the
  sum). b_dec enters the sum on shard 0 alone; after backward its gradient is summed over
  the shards, which also adds up the encoders' partial b_dec gradients.
- Per-latent loss terms (L1, L0) are summed the same way; AuxK selects its dead latents
  across shards with the same candidate exchange (losses.auxk).
- Gradient clipping uses the global norm (sharded squares summed, replicated ones once).

`Shard.whole(d_sae)` is the unsharded case: every method is then the plain local operation,
so the trainer has one code path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..architectures.batchtopk import PAD_INDEX
from ..errors import ConfigError, FormatError
from ..ops import reference as ref
from ..sae import SAEOutput, SparseAutoencoder
from . import distributed

# Global index of a padding candidate: after every real latent on value ties.
# The dim along which each parameter is split over the shards (b_dec is replicated).
SHARD_DIM = {"W_enc": 1, "b_enc": 0, "W_dec": 0}


def shard_dims(sae: SparseAutoencoder) -> dict[str, int]:
    """Parameter name -> the dim split over the shards (the architecture's per-latent
    parameters along dim 0); parameters not named are replicated."""
    return {**SHARD_DIM, **dict.fromkeys(sae.arch.latent_params, 0)}


class _AllReduceSum(torch.autograd.Function):
    """Sum over a process group; the backward passes the gradient through unchanged."""

    @staticmethod
    def forward(ctx, t: Tensor, pg: Any) -> Tensor:
        out = t.clone()
        dist.all_reduce(out, group=pg)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


@dataclass(frozen=True)
class Shard:
    """This rank's latents `[lo, hi)` of `d_sae`, shard `index` of `count` in process group
    `pg` (None and count 1: unsharded), in data replica `replica` of `replicas`."""

    lo: int
    hi: int
    d_sae: int
    index: int = 0
    count: int = 1
    pg: Any = None
    gather_pg: Any = None  # the same ranks on gloo: checkpoints gather CPU tensors
    root: int = 0  # global rank of shard 0
    replica: int = 0
    replicas: int = 1
    everyone: Shard | None = None  # every rank of the run, when replicas > 1 (BatchTopK)

    @classmethod
    def whole(cls, d_sae: int) -> Shard:
        """All latents on this rank."""
        return cls(0, d_sae, d_sae)

    @classmethod
    def of(cls, d_sae: int, group: distributed.Group) -> Shard:
        """This rank's slice of `d_sae` latents in the grid `group` (whole if unsharded)."""
        if group.world == 1:
            return cls.whole(d_sae)
        per = d_sae // group.shards
        lo, root = group.shard * per, group.replica * group.shards
        everyone = cls(0, d_sae, d_sae, group.rank, group.world) if group.replicas > 1 else None
        return cls(lo, lo + per, d_sae, group.shard, group.shards, group.feature_pg,
                   group.gather_pg, root, group.replica, group.replicas, everyone)  # fmt: skip

    @property
    def batch_group(self) -> Shard:
        """The ranks holding the rest of the global batch's BatchTopK candidates."""
        return self.everyone or self

    @property
    def size(self) -> int:
        return self.hi - self.lo

    def sum(self, t: Tensor) -> Tensor:
        """Sum of `t` over the shards; differentiable, backward = identity."""
        return t if self.count == 1 else _AllReduceSum.apply(t, self.pg)

    def total(self, value: float, op: str = "sum") -> float:
        """A Python number reduced over the shards (op: sum, min or max)."""
        if self.count == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend(self.pg) == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op.upper()), group=self.pg)
        return float(t)

    def gather(self, t: Tensor) -> Tensor:
        """Every shard's `t` concatenated along the last dim, in shard order (no grad)."""
        if self.count == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.count)]
        dist.all_gather(parts, t.contiguous(), group=self.pg)
        return torch.cat(parts, dim=-1)

    def decoder_bias(self, b_dec: Tensor) -> Tensor:
        """b_dec for this shard's partial reconstruction: shard 0 adds it, the others 0."""
        return b_dec if self.index == 0 else torch.zeros_like(b_dec)

    def winners(self, values: Tensor, indices: Tensor, k: int) -> Tensor:
        """Which of this shard's candidates (`values`, global `indices`, `[R, n]`) are in the
        top `k` of each row over all shards; bool `[R, n]`."""
        if self.count == 1 and values.shape[-1] <= k:
            return torch.ones_like(values, dtype=torch.bool)
        vals, idx = self.gather(values.detach()), self.gather(indices)
        by_index = torch.argsort(idx, dim=-1, stable=True)
        top = torch.argsort(vals.gather(-1, by_index), dim=-1, descending=True, stable=True)
        won = torch.zeros_like(vals, dtype=torch.bool)
        won.scatter_(-1, by_index.gather(-1, top[..., :k]), True)
        n = values.shape[-1]
        return won[..., self.index * n : (self.index + 1) * n]

    def topk_act(self, pre: Tensor, k: int, columns: Tensor) -> ref.SparseCode:
        """`ref.topk_act(pre, k)` over the columns of every shard: `pre [B, n]` holds this
        shard's columns, global latent ids `columns [n]` (ascending). Returns this shard's
        winners (values, positions in `pre`); their number may be below k."""
        if self.count == 1:
            return ref.topk_act(pre, k)
        kk = min(k, pre.shape[-1])
        if kk:
            vals, pos = ref.topk_act(pre, kk)
        else:
            vals = pre.new_zeros(pre.shape[0], 0)
            pos = torch.zeros(pre.shape[0], 0, dtype=torch.int64, device=pre.device)
        pad = k - kk  # every shard offers k candidates to the exchange
        cand = torch.cat([vals.detach(), vals.new_full((pre.shape[0], pad), -torch.inf)], -1)
        ids = torch.cat([columns[pos], pos.new_full((pre.shape[0], pad), PAD_INDEX)], -1)
        keep = self.winners(cand, ids, k)[:, :kk]
        return ref.SparseCode(vals * keep, pos)


def forward(sae: SparseAutoencoder, x: Tensor, shard: Shard) -> SAEOutput:
    """`sae(x)` of the full SAE, computed from this shard's latents (`sae` holds them): the
    architecture's `train_forward`. The reconstruction is the full one; values/indices or
    feature_acts are this shard's (indices local to the shard)."""
    return sae.arch.train_forward(sae, x, shard)


@torch.no_grad()
def sum_replicated_grad(param: Tensor, shard: Shard) -> None:
    """Add up a replicated parameter's partial gradients over the shards (b_dec). A shard
    whose loss does not reach it (a transcoder's b_dec, outside shard 0) adds zeros."""
    if shard.count > 1:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, group=shard.pg)


@torch.no_grad()
def clip_grad_norm(sae: SparseAutoencoder, max_norm: float, shard: Shard) -> float:
    """Scale every gradient so the global norm is at most `max_norm` (as
    `torch.nn.utils.clip_grad_norm_`, over the full SAE); returns the norm before."""
    if shard.count == 1:
        return float(torch.nn.utils.clip_grad_norm_(sae.parameters(), max_norm))
    grads = {n: p.grad for n, p in sae.named_parameters() if p.grad is not None}
    split = shard_dims(sae)  # the replicated ones (b_dec, W_skip) count once
    local = sum(float(g.double().pow(2).sum()) for n, g in grads.items() if n in split)
    total = shard.total(local)
    total += sum(float(g.double().pow(2).sum()) for n, g in grads.items() if n not in split)
    norm = total**0.5
    coef = min(1.0, max_norm / (norm + 1e-6))
    for g in grads.values():
        g.mul_(coef)
    return norm


def consolidate(sae: SparseAutoencoder, shard: Shard) -> SparseAutoencoder | None:
    """The full SAE on the CPU, assembled on shard 0 from every shard's slice (a collective:
    every shard calls it); None on the other shards. Unsharded: `sae` itself."""
    if shard.count == 1:
        return sae
    full: dict[str, Tensor] = {}
    dims = shard_dims(sae)
    for name, p in sae.state_dict().items():  # parameters and buffers
        t = p.detach().cpu().contiguous()
        if name not in dims:
            full[name] = t
            continue
        parts = [torch.empty_like(t) for _ in range(shard.count)] if shard.index == 0 else None
        dist.gather(t, parts, dst=shard.root, group=shard.gather_pg)
        if parts is not None:
            full[name] = torch.cat(parts, dims[name])
    if shard.index != 0:
        return None
    cfg = dataclasses.replace(sae.cfg, d_sae=shard.d_sae)
    out = SparseAutoencoder.from_config(cfg, backend=sae.backend, device="meta")
    out.load_state_dict(full, assign=True)
    return out


@torch.no_grad()
def load_shard(sae: SparseAutoencoder, path: Path, shard: Shard) -> None:
    """Fill `sae` (this shard's latents) from the consolidated SAE directory `path`, reading
    only this shard's slices of its weights file."""
    from safetensors import SafetensorError, safe_open

    from ..formats.saelens import WEIGHTS_FILENAME

    file = path / WEIGHTS_FILENAME
    cut = slice(shard.lo, shard.hi)
    try:
        with safe_open(str(file), framework="pt") as f:
            missing = {n for n, _ in sae.named_parameters()} - set(f.keys())
            if missing:
                raise FormatError(f"{file} lacks {sorted(missing)}")
            d_in, d_sae = f.get_slice("W_enc").get_shape()
            if (d_in, d_sae) != (sae.d_in, shard.d_sae):
                raise ConfigError(
                    f"checkpoint {path} holds an SAE {d_in}->{d_sae}, but this run builds "
                    f"{sae.d_in}->{shard.d_sae} (d_in comes from the model and hook)"
                )
            for name, p in sae.named_parameters():
                part = f.get_slice(name)
                dim = shard_dims(sae).get(name)
                t = part[:] if dim is None else part[:, cut] if dim == 1 else part[cut]
                p.copy_(t)
    except SafetensorError as err:
        raise FormatError(f"{file} is unreadable: {err}") from err

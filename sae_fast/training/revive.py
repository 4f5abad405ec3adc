"""Reviving silent TopK latents: after an optimiser step, each latent that has not fired for
`recipe.revive_window` tokens gets its encoder bias raised just enough that it would be
selected, with a positive value, on its `revive_rows` best rows of the step's batch (against
the row thresholds of the step's forward).

Why: at the rates that give the lowest FVU in short runs, some latents drift to directions
that never make a row's top k; AuxK trains their directions but cannot make them win. Once
selected, a latent gets the reconstruction gradient and finds a niche, or falls silent and is
raised again. Measured on the recipe benchmark's data (README "Training recipe"): at 512k
tokens it cut held-out dead latents at 32x, batch 4096 from 11.7% to 1.4% at the same rate
(benchmarks/results/recipe-revive-cpu-2026-12-07.md).

The margin of latent f on row r is pre[r, f] - t[r], with t[r] the smallest value the row
selected (its k-th largest pre-activation, or 0 when that is negative: ReLU). b_enc[f] is
raised by -(m-th best margin) + `MARGIN` when that is positive. Only the silent latents'
pre-activations are computed, CHUNK_ELEMENTS at a time. Data parallel: the m best margins of every
replica are gathered, so every replica raises the same biases by what the global batch
says. Feature-sharded: the row thresholds come from every shard's selected values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..ops import reference as ref
from . import distributed, recipe

if TYPE_CHECKING:
    from ..architectures.base import TrainState
    from ..output import SAEOutput

MARGIN = 1e-3  # how far past the row's threshold a revived latent lands (input norm ~sqrt(d_in))
CHUNK_ELEMENTS = 1 << 24  # pre-activations of silent latents held at once (64 MiB in fp32)


@torch.no_grad()
def row_thresholds(out: SAEOutput, k: int, shard) -> Tensor:
    """Per row, the smallest value that was selected (fp32, `[B]`): the k-th largest of every
    shard's selected values (non-selected ones are 0 there, and values are >= 0)."""
    values = shard.gather(out.values.detach().float())
    return values.topk(min(k, values.shape[-1]), dim=-1).values[:, -1]


@torch.no_grad()
def revive_silent(run: TrainState, x: Tensor, out: SAEOutput, group: distributed.Group) -> int:
    """Raise b_enc of this shard's latents silent for `recipe.revive_window` tokens (module
    docstring), from the step's input `x` (as the SAE saw it) and forward `out`. Returns how
    many this shard raised; 0 when off or none is silent."""
    cfg, sae = run.cfg, run.sae
    window = recipe.revive_window(cfg, run.shard.d_sae)
    if not window:
        return 0
    silent = (run.since_fired >= window).nonzero(as_tuple=True)[0]
    # feature shards gather the thresholds together, whether or not they have silent latents
    # (data replicas agree on `silent`: their since_fired counters are kept in step)
    if len(silent) == 0 and run.shard.count == 1:
        return 0
    thresholds = row_thresholds(out, cfg.k, run.shard)  # [B]
    if len(silent) == 0:
        return 0
    m = min(cfg.revive_rows, x.shape[0])
    width = max(1, CHUNK_ELEMENTS // max(x.shape[0], 1))
    best = []  # per chunk of silent latents: the m best margins on this replica's rows
    for lo in range(0, len(silent), width):
        cols = silent[lo : lo + width]
        pre = ref.pre_activations(x, sae.W_enc[:, cols], sae.b_enc[cols], sae.input_bias)
        best.append((pre.float() - thresholds[:, None]).topk(m, dim=0).values)
    best = distributed.replica_topk(torch.cat(best, 1), cfg.revive_rows, group)
    raise_by = (MARGIN - best[-1]).clamp_min(0)  # from the m-th best margin
    sae.b_enc[silent] += raise_by.to(sae.b_enc.dtype)
    return int((raise_by > 0).sum())

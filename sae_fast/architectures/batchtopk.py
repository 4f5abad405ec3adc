"""BatchTopK (Bussmann et al. 2024): the `B * k` largest entries of `relu(pre)` over the
whole batch survive, so k is an average per token. Training keeps a running estimate of the
smallest surviving activation in the registered buffer `topk_threshold` (NaN until the first
step); in eval mode, once estimated, it replaces the batch selection as a JumpReLU threshold
shared by every latent, so that a token's code no longer depends on its batch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from ..ops import reference as ref
from ..output import SAEOutput
from .base import Architecture, AuxKTraining, TrainState, auxk_term

if TYPE_CHECKING:
    from ..sae import SparseAutoencoder
    from ..training.sharded import Shard

PAD_INDEX = 2**62  # the id of a padding candidate: above every real flat index
EMA = 0.99  # weight of the previous threshold estimate in the running mean


class BatchTopK(Architecture):
    name: ClassVar[str] = "batchtopk"
    saelens_name: ClassVar[str] = "batchtopk"
    summary: ClassVar[str] = (
        "k x batch largest activations over the batch; a threshold at inference"
    )
    uses_k: ClassVar[bool] = True
    saelens_rescales: ClassVar[bool] = True
    batch_wide: ClassVar[bool] = True
    train_configs: ClassVar[tuple[type, ...]] = (AuxKTraining,)

    @classmethod
    def init_state(cls, sae: SparseAutoencoder) -> None:
        sae.register_buffer(
            "topk_threshold", torch.full((), math.nan, dtype=torch.float32, device=sae.device)
        )

    @classmethod
    def inference_threshold(cls, sae: SparseAutoencoder) -> float | None:
        """The inference threshold, None until estimated."""
        t = float(sae.topk_threshold)
        return None if math.isnan(t) else t

    @classmethod
    def set_inference_threshold(cls, sae: SparseAutoencoder, value: float | None) -> None:
        """Set (None: clear) the inference threshold."""
        sae.topk_threshold.fill_(math.nan if value is None else float(value))

    @classmethod
    def encode(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> Tensor:
        thr = cls.inference_threshold(sae)
        if not sae.training and thr is not None:
            t = torch.full((sae.d_sae,), thr, dtype=sae.dtype, device=sae.device)
            return ops.encode_dense(x, sae.W_enc, sae.b_enc, sae.input_bias, t)
        acts = ops.encode_dense(x, sae.W_enc, sae.b_enc, sae.input_bias, None)  # relu(pre)
        return ref.batchtopk_act(acts, sae.k)

    @classmethod
    def sharded_forward(
        cls, sae: SparseAutoencoder, x: Tensor, shard: Shard, ops: Any
    ) -> SAEOutput:
        acts = ops.encode_dense(x, sae.W_enc, sae.b_enc, sae.input_bias, None)
        acts = acts * batch_winners(acts, sae.k, shard)
        return cls.dense_output(sae, acts, shard, ops)

    @classmethod
    def train_terms(
        cls, run: TrainState, x: Tensor, target: Tensor
    ) -> tuple[SAEOutput, dict[str, Tensor]]:
        sae = run.sae
        out = cls.train_forward(sae, x, run.shard)
        kept = out.feature_acts[out.feature_acts > 0]
        low = float(kept.min().detach()) if kept.numel() else math.inf
        low = run.shard.batch_group.total(low, op="min")  # over every shard and replica
        if low < math.inf:
            prev = cls.inference_threshold(sae)
            cls.set_inference_threshold(sae, low if prev is None else EMA * prev + (1 - EMA) * low)
        return out, auxk_term(run, x, target, out.reconstruction)


def batch_winners(acts: Tensor, k: int, shard: Shard) -> Tensor:
    """BatchTopK's mask over this rank's `acts [B, n]` (relu'd): the `k` x rows largest
    entries of the global batch (every replica's rows, every shard's latents), lower flat
    index `row * d_sae + f` on ties."""
    B, n = acts.shape
    rows = B * shard.replicas
    keep = min(k * rows, rows * shard.d_sae)
    flat = acts.detach().reshape(1, -1)
    m = min(keep, flat.shape[-1])
    # the local canonical top-m: local flat order is global flat order within a rank
    vals, pos = ref.topk_select(flat, m)
    ids = (shard.replica * B + pos // n) * shard.d_sae + shard.lo + pos % n
    pad = keep - m
    vals = torch.cat([vals, vals.new_full((1, pad), -torch.inf)], -1)
    ids = torch.cat([ids, ids.new_full((1, pad), PAD_INDEX)], -1)
    won = shard.batch_group.winners(vals, ids, keep)[:, :m]
    mask = torch.zeros(B * n, dtype=torch.bool, device=acts.device)
    mask[pos[won]] = True
    return mask.view(B, n).to(acts.dtype)

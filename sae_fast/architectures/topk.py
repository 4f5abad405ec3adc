"""TopK (Gao et al. 2024): each row keeps its k largest pre-activations, ReLU'd; a sparse
code `(values, indices)`, encoded and decoded by the backend's fused TopK SAE op. Trained on
the MSE plus AuxK over the dead latents; latents silent for a while have b_enc raised
after the step until they fire again (training/revive.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from ..ops import reference as ref
from ..output import SAEOutput
from .base import Architecture, AuxKTraining, ReviveTraining, TrainState, auxk_term

if TYPE_CHECKING:
    from ..sae import SparseAutoencoder
    from ..training.sharded import Shard


class TopK(Architecture):
    name: ClassVar[str] = "topk"
    saelens_name: ClassVar[str] = "topk"
    summary: ClassVar[str] = "k largest pre-activations per token (sparse code)"
    uses_k: ClassVar[bool] = True
    saelens_rescales: ClassVar[bool] = True
    train_configs: ClassVar[tuple[type, ...]] = (AuxKTraining, ReviveTraining)

    @classmethod
    def encode_sparse(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> ref.SparseCode:
        return ops.encode_topk(x, sae.W_enc, sae.b_enc, sae.input_bias, sae.k)

    @classmethod
    def encode(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> Tensor:
        values, indices = cls.encode_sparse(sae, x, ops)
        return ref.densify(values, indices, sae.d_sae)

    @classmethod
    def forward(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> SAEOutput:
        if sae.cfg.transcoder:  # b_dec is not the input's centre: the encode and decode ops
            values, indices = cls.encode_sparse(sae, x, ops)
            recon = ops.decode_sparse(values, indices, sae.W_dec, sae.b_dec)
        else:  # one fused op, one sort in its backward
            recon, (values, indices) = ops.topk_sae(
                x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.k
            )
        return SAEOutput(recon, values=values, indices=indices, d_sae=sae.d_sae)

    @classmethod
    def sharded_forward(
        cls, sae: SparseAutoencoder, x: Tensor, shard: Shard, ops: Any
    ) -> SAEOutput:
        # each shard's k best are candidates; the k best over all shards win
        values, indices = ops.encode_topk(x, sae.W_enc, sae.b_enc, sae.input_bias, sae.k)
        values = values * shard.winners(values, indices + shard.lo, sae.k)
        recon = shard.sum(
            ops.decode_sparse(values, indices, sae.W_dec, shard.decoder_bias(sae.b_dec))
        )
        return SAEOutput(recon, values=values, indices=indices, d_sae=shard.size)

    @classmethod
    def revives(cls) -> bool:
        """Whether silent latents are revived (not AbsTopK: it selects by |pre|)."""
        return ReviveTraining in cls.train_configs

    @classmethod
    def train_terms(
        cls, run: TrainState, x: Tensor, target: Tensor
    ) -> tuple[SAEOutput, dict[str, Tensor]]:
        out = cls.train_forward(run.sae, x, run.shard)
        return out, auxk_term(run, x, target, out.reconstruction, cls.revives())

    @classmethod
    def after_update(
        cls, run: TrainState, x: Tensor, out: SAEOutput, group: Any
    ) -> dict[str, float]:
        if not cls.revives():
            return {}
        from ..training.revive import revive_silent

        return {"revived": run.shard.total(float(revive_silent(run, x, out, group)))}

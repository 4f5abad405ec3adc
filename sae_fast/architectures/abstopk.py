"""AbsTopK (SAELens "abstopk"; Zhu et al., arXiv 2510.00404): each row keeps the k
pre-activations of largest magnitude with their signs, no ReLU, so a feature can fire in
either direction. Selection ties break by the lower index, as TopK's. Trained on the MSE
alone (no AuxK: its dead-latent term would have to rank by magnitude too)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from ..ops import reference as ref
from ..output import SAEOutput
from .base import Architecture, TrainState
from .topk import TopK

if TYPE_CHECKING:
    from ..sae import SparseAutoencoder
    from ..training.sharded import Shard


class AbsTopK(TopK):
    """Signed top-k by magnitude (module docstring)."""

    name: ClassVar[str] = "abstopk"
    saelens_name: ClassVar[str] = "abstopk"
    summary: ClassVar[str] = "k largest |pre-activations| per token, signed (no ReLU)"
    train_configs: ClassVar[tuple[type, ...]] = ()

    @classmethod
    def encode_sparse(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> ref.SparseCode:
        pre = ref.pre_activations(x, sae.W_enc, sae.b_enc, sae.input_bias)
        _, indices = ref.topk_select(pre.abs(), sae.k)
        return ref.SparseCode(pre.gather(-1, indices).to(sae.dtype), indices)

    @classmethod
    def forward(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> SAEOutput:
        values, indices = cls.encode_sparse(sae, x, ops)
        recon = ops.decode_sparse(values, indices, sae.W_dec, sae.b_dec)
        return SAEOutput(recon, values=values, indices=indices, d_sae=sae.d_sae)

    @classmethod
    def sharded_forward(
        cls, sae: SparseAutoencoder, x: Tensor, shard: Shard, ops: Any
    ) -> SAEOutput:
        return Architecture.sharded_forward.__func__(cls, sae, x, shard, ops)

    @classmethod
    def train_terms(
        cls, run: TrainState, x: Tensor, target: Tensor
    ) -> tuple[SAEOutput, dict[str, Tensor]]:
        return cls.train_forward(run.sae, x, run.shard), {}

"""Standard ReLU SAE (SAELens "standard"): `relu(pre)`, trained on the MSE plus a
decoder-norm-weighted L1 whose coefficient ramps up over `l1_warmup_steps`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from ..output import SAEOutput
from ..validate import check_fields, train_field
from .base import Architecture, TrainState
from .losses import l1

if TYPE_CHECKING:
    from ..sae import SparseAutoencoder
    from ..training.sharded import Shard


@dataclass
class L1Training:
    """Training settings of the decoder-norm-weighted L1 penalty (relu, gated)."""

    l1_coefficient: float = train_field(5.0, "relu, gated: L1 coefficient")
    l1_warmup_steps: int = train_field(200, "relu, gated: L1 coefficient ramps up linearly")

    @staticmethod
    def check(cfg: Any) -> None:
        """ConfigError naming a bad field."""
        check_fields(cfg, L1Training)


class ReLU(Architecture):
    name: ClassVar[str] = "relu"
    saelens_name: ClassVar[str] = "standard"
    aliases: ClassVar[tuple[str, ...]] = ("standard",)
    summary: ClassVar[str] = "relu(pre) with an L1 penalty (SAELens 'standard')"
    train_configs: ClassVar[tuple[type, ...]] = (L1Training,)

    @classmethod
    def encode(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> Tensor:
        return ops.encode_dense(x, sae.W_enc, sae.b_enc, sae.input_bias, None)

    @classmethod
    def sharded_forward(
        cls, sae: SparseAutoencoder, x: Tensor, shard: Shard, ops: Any
    ) -> SAEOutput:
        acts = cls.encode(sae, x, ops)  # this shard's latents, no exchange needed
        return cls.dense_output(sae, acts, shard, ops)

    @classmethod
    def train_terms(
        cls, run: TrainState, x: Tensor, target: Tensor
    ) -> tuple[SAEOutput, dict[str, Tensor]]:
        cfg = run.cfg
        out = cls.train_forward(run.sae, x, run.shard)
        ramp = min(1.0, (run.step + 1) / cfg.l1_warmup_steps) if cfg.l1_warmup_steps else 1.0
        penalty = run.shard.sum(l1(out.feature_acts, run.sae.W_dec))
        return out, {"l1": cfg.l1_coefficient * ramp * penalty}

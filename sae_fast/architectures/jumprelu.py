"""JumpReLU (Rajamanoharan et al. 2024): `pre * (pre > threshold)` with a learned
per-latent `threshold`; trained on the MSE plus an L0 penalty, both with straight-through
threshold gradients (a rectangle kernel of width `jumprelu_bandwidth`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ..ops import reference as ref
from ..output import SAEOutput
from ..validate import check_fields, train_field
from .base import Architecture, TrainState

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..sae import SparseAutoencoder


@dataclass
class JumpReLUTraining:
    """JumpReLU's training settings: the L0 penalty and the straight-through estimator."""

    l0_coefficient: float = train_field(1.0, "jumprelu: L0 penalty coefficient")
    jumprelu_bandwidth: float = train_field(0.001, "jumprelu: STE bandwidth")
    jumprelu_init_threshold: float = train_field(0.001, "jumprelu: initial threshold")

    @staticmethod
    def check(cfg: Any) -> None:
        """ConfigError naming a bad field."""
        check_fields(cfg, JumpReLUTraining)


class JumpReLU(Architecture):
    name: ClassVar[str] = "jumprelu"
    saelens_name: ClassVar[str] = "jumprelu"
    summary: ClassVar[str] = "pre where it passes a learned per-latent threshold, L0 penalty"
    train_configs: ClassVar[tuple[type, ...]] = (JumpReLUTraining,)
    latent_params: ClassVar[tuple[str, ...]] = ("threshold",)

    @classmethod
    def init_state(cls, sae: SparseAutoencoder) -> None:
        sae.threshold = nn.Parameter(torch.zeros(sae.d_sae, dtype=sae.dtype, device=sae.device))

    @classmethod
    def encode(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> Tensor:
        return ops.encode_dense(x, sae.W_enc, sae.b_enc, sae.input_bias, sae.threshold)

    @classmethod
    def train_terms(
        cls, run: TrainState, x: Tensor, target: Tensor
    ) -> tuple[SAEOutput, dict[str, Tensor]]:
        # the straight-through estimator reads the pre-activations: the backend's fused
        # encoder without an activation, then the STE (elementwise torch) and the dense
        # decode; every shard's partial reconstruction summed (each latent is local)
        cfg, sae, shard = run.cfg, run.sae, run.shard
        pre = sae.ops().pre_activations(x, sae.W_enc, sae.b_enc, sae.input_bias)
        acts = ref.jumprelu_ste(pre, sae.threshold, cfg.jumprelu_bandwidth)
        l0 = shard.sum(ref.step_l0(pre, sae.threshold, cfg.jumprelu_bandwidth))
        return cls.dense_output(sae, acts, shard, ref), {"l0": cfg.l0_coefficient * l0}

    @classmethod
    def init_training(cls, sae: SparseAutoencoder, cfg: TrainConfig) -> None:
        with torch.no_grad():
            sae.threshold.fill_(cfg.jumprelu_init_threshold)

    @classmethod
    def after_step(cls, sae: SparseAutoencoder) -> None:
        with torch.no_grad():
            sae.threshold.clamp_(min=0.0)

"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse
Autoencoders"; SAELens "gated"). One encoder matrix serves two paths:

    pi_gate = (x - b_dec) @ W_enc + b_gate                      which latents are on
    pi_mag  = (x - b_dec) @ (W_enc * exp(r_mag)) + b_mag       how strongly
    a       = (pi_gate > 0) * relu(pi_mag)

`b_enc` is the gate bias (SAELens's `b_gate`; the two are renamed on save and load), so
`pre_activations` of a gated SAE are its gate pre-activations. Training adds a
decoder-norm-weighted L1 on relu(pi_gate) (its coefficient ramped as the relu SAE's) and the
auxiliary reconstruction from the gate path through a frozen decoder, which is how the
gate's parameters learn (the Heaviside passes no gradient)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ..ops import reference as ref
from ..output import SAEOutput
from .base import Architecture, TrainState
from .losses import l1
from .relu import L1Training

if TYPE_CHECKING:
    from ..sae import SparseAutoencoder
    from ..training.sharded import Shard


class Gated(Architecture):
    name: ClassVar[str] = "gated"
    saelens_name: ClassVar[str] = "gated"
    summary: ClassVar[str] = "a gate path and a magnitude path sharing W_enc, L1 + aux loss"
    train_configs: ClassVar[tuple[type, ...]] = (L1Training,)
    latent_params: ClassVar[tuple[str, ...]] = ("r_mag", "b_mag")
    saelens_tensor_names: ClassVar[dict[str, str]] = {"b_enc": "b_gate"}

    @classmethod
    def init_state(cls, sae: SparseAutoencoder) -> None:
        for name in cls.latent_params:  # exp(0) = 1: both paths start equal
            setattr(
                sae, name, nn.Parameter(torch.zeros(sae.d_sae, dtype=sae.dtype, device=sae.device))
            )

    @classmethod
    def fold_input_bias(cls, tensors: dict[str, Tensor]) -> None:
        W, b_dec, r_mag = tensors["W_enc"], tensors["b_dec"], tensors["r_mag"]
        tensors["b_mag"] = ref.fold_input_bias(
            W.double() * r_mag.double().exp(), tensors["b_mag"], b_dec
        )
        super().fold_input_bias(tensors)

    @staticmethod
    def paths(sae: SparseAutoencoder, x: Tensor) -> tuple[Tensor, Tensor]:
        """(pi_gate, pi_mag) `[B, d_sae]`, by the low-precision rule of the reference."""
        # the product once, shared by both paths (fp32 for bf16/fp16 parameters)
        hidden = ref.pre_activations(x, sae.W_enc, torch.zeros_like(sae.b_enc), sae.input_bias)
        gate = hidden + sae.b_enc.to(hidden.dtype)
        mag = hidden * sae.r_mag.to(hidden.dtype).exp() + sae.b_mag.to(hidden.dtype)
        return gate, mag

    @staticmethod
    def code(sae: SparseAutoencoder, gate: Tensor, mag: Tensor) -> Tensor:
        """a = (pi_gate > 0) * relu(pi_mag), in the parameters' dtype."""
        return ((gate > 0).to(mag.dtype) * torch.relu(mag)).to(sae.dtype)

    @classmethod
    def encode(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> Tensor:
        return cls.code(sae, *cls.paths(sae, x))

    @classmethod
    def sharded_forward(
        cls, sae: SparseAutoencoder, x: Tensor, shard: Shard, ops: Any
    ) -> SAEOutput:
        # every latent's code is local to its shard
        return cls.dense_output(sae, cls.encode(sae, x, ops), shard, ops)

    @classmethod
    def train_terms(
        cls, run: TrainState, x: Tensor, target: Tensor
    ) -> tuple[SAEOutput, dict[str, Tensor]]:
        cfg, sae, shard = run.cfg, run.sae, run.shard
        gate, mag = cls.paths(sae, x)
        out = cls.dense_output(sae, cls.code(sae, gate, mag), shard, ref)
        gate_act = torch.relu(gate).to(sae.dtype)
        ramp = min(1.0, (run.step + 1) / cfg.l1_warmup_steps) if cfg.l1_warmup_steps else 1.0
        penalty = shard.sum(l1(gate_act, sae.W_dec))
        via_gate = shard.sum(
            ref.decode_dense(gate_act, sae.W_dec.detach(), shard.decoder_bias(sae.b_dec.detach()))
        )
        # the target detached: the auxiliary loss trains the gate, never a skip term (W_skip)
        aux = (via_gate - target.detach()).pow(2).sum(-1).mean()
        return out, {"l1": cfg.l1_coefficient * ramp * penalty, "aux_recon": aux}

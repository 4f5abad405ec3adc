"""sparsify and SAELens TopK SAEs as `workloads.Impl`s, loaded with the shared weights.

Both are configured to compute the same function as sae_fast's TopK SAE, so their losses
and gradients are checked against the reference before they are timed:
- sparsify `SparseCoder`: `encoder.weight = W_enc^T`, its own fused TopK encoder, its
  decoder (Triton `xformers_embedding_bag` where Triton runs, else embedding_bag).
- SAELens `TopKTrainingSAE`, through `training_forward_pass` (its trainer's path), with
  `rescale_acts_by_decoder_norm=False` (otherwise its code is a different function of the
  weights; with unit-norm decoder rows the rescaling would cost one more [B, d_sae]
  multiply) and no dead-latent mask (no AuxK term, like the others here).
Imported only inside the peer environment.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..common import Shape
from ..workloads import Impl, loss_of


def _cpu_triton_off(device: torch.device) -> None:
    # sparsify picks its Triton decoder at import time; Triton kernels cannot run on CPU.
    if device.type == "cpu":
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")


class Sparsify(Impl):
    name = "sparsify"

    def __init__(self, shape: Shape, state: dict[str, Tensor]):
        dev = state["W_enc"].device
        _cpu_triton_off(dev)
        from sparsify import SparseCoder, SparseCoderConfig

        cfg = SparseCoderConfig(num_latents=shape.d_sae, k=shape.k)
        self.sae = SparseCoder(shape.d_in, cfg, device=dev, dtype=shape.torch_dtype)
        with torch.no_grad():
            self.sae.encoder.weight.copy_(state["W_enc"].t())
            self.sae.encoder.bias.copy_(state["b_enc"])
            self.sae.W_dec.copy_(state["W_dec"])
            self.sae.b_dec.copy_(state["b_dec"])

    def parameters(self) -> list[Tensor]:
        return list(self.sae.parameters())

    def loss(self, x: Tensor) -> Tensor:
        return loss_of(self.sae(x).sae_out, x)

    def grads(self) -> dict[str, Tensor]:
        s = self.sae
        return {
            "W_enc": s.encoder.weight.grad.t(),
            "b_enc": s.encoder.bias.grad,
            "W_dec": s.W_dec.grad,
            "b_dec": s.b_dec.grad,
        }

    def encode(self, x: Tensor) -> object:
        return self.sae.encode(x)  # (top_acts, top_indices, pre_acts)


class SAELens(Impl):
    name = "saelens"

    def __init__(self, shape: Shape, state: dict[str, Tensor]):
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

        dev = state["W_enc"].device
        cfg = TopKTrainingSAEConfig(
            d_in=shape.d_in,
            d_sae=shape.d_sae,
            k=shape.k,
            dtype=shape.dtype,
            device=str(dev),
            rescale_acts_by_decoder_norm=False,
        )
        self.sae = TopKTrainingSAE(cfg)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(self.sae, name).copy_(state[name])

    def parameters(self) -> list[Tensor]:
        return [p for p in self.sae.parameters() if p.requires_grad]

    def loss(self, x: Tensor) -> Tensor:
        from sae_lens.saes.sae import TrainStepInput

        step_input = TrainStepInput(
            sae_in=x,
            coefficients={},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
        return self.sae.training_forward_pass(step_input).loss

    def grads(self) -> dict[str, Tensor]:
        return {n: getattr(self.sae, n).grad for n in ("W_enc", "b_enc", "W_dec", "b_dec")}

    def encode(self, x: Tensor) -> object:
        return self.sae.encode(x)  # dense [B, d_sae] codes


def make(name: str, shape: Shape, state: dict[str, Tensor]) -> Impl:
    """The peer implementation called `name`."""
    return {"sparsify": Sparsify, "saelens": SAELens}[name](shape, state)

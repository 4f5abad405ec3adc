"""Transcoder test helpers: a tiny ReLU GPT-2 (whose MLPs a ReLU transcoder can equal
exactly), transcoders built on its MLPs, and their (input, target) activations."""

from __future__ import annotations

import torch

from sae_fast import SparseAutoencoder
from sae_fast.data.hooks import capture, run_to_hook
from tests.helpers import tiny_gpt2_dir

LAYER = 0
MLP_IN, MLP_OUT = f"layers.{LAYER}.mlp_in", f"layers.{LAYER}.mlp_out"


def relu_gpt2_dir(path):
    """Save a randomly initialised 2-layer GPT-2 (d=32) with ReLU MLPs of width 128, scaled
    up so that ablating one changes the outputs (GPT-2's init makes their outputs tiny), as a
    Hugging Face directory (no download); returns `path`."""
    return tiny_gpt2_dir(path, activation_function="relu", mlp_scale=5.0)


def exact_transcoder(model, model_name: str | None = None, layer: int = LAYER):
    """A ReLU transcoder equal to GPT-2 block `layer`'s MLP, relu(x W_fc + b_fc) W_proj + b_proj:
    W_enc = W_fc, b_enc = b_fc, W_dec = W_proj, b_dec = b_proj (one feature per neuron)."""
    mlp = model.transformer.h[layer].mlp
    d, width = mlp.c_fc.weight.shape
    sae = SparseAutoencoder(
        d,
        width,
        activation="relu",
        transcoder=True,
        d_out=d,
        hook_name=f"layers.{layer}.mlp_in",
        target_hook_name=f"layers.{layer}.mlp_out",
        model_name=model_name,
    )
    with torch.no_grad():
        sae.W_enc.copy_(mlp.c_fc.weight)
        sae.b_enc.copy_(mlp.c_fc.bias)
        sae.W_dec.copy_(mlp.c_proj.weight)
        sae.b_dec.copy_(mlp.c_proj.bias)
    return sae


def random_transcoder(
    d_in: int,
    d_sae: int,
    hook: str = MLP_IN,
    target: str = MLP_OUT,
    skip: bool = True,
    model_name: str | None = None,
    seed: int = 0,
    d_out: int | None = None,
):
    """A TopK (k=4) skip transcoder with every parameter perturbed (non-zero biases, W_skip)."""
    torch.manual_seed(seed)
    sae = SparseAutoencoder(
        d_in,
        d_sae,
        activation="topk",
        k=4,
        transcoder=True,
        d_out=d_out or d_in,
        skip=skip,
        hook_name=hook,
        target_hook_name=target,
        model_name=model_name,
    )
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        sae.W_dec.mul_(0.5)
        if sae.W_skip is not None:
            sae.W_skip.normal_(0, 0.05)
    return sae


@torch.no_grad()
def input_and_target(model, ids, hook: str = MLP_IN, target: str = MLP_OUT):
    """(x at `hook`, y at `target`) of one clean forward pass, each `[B, T, d]`."""
    with capture(model, hook, target=target) as box:
        x = run_to_hook(model, box, input_ids=ids)
    return x, box["target"]

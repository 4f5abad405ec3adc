"""Test helpers: a verbose allclose that names the tensor and shows the worst entries."""

from __future__ import annotations

import torch
from torch import Tensor

# A small training run on the embedded default that the trainer, sweep, analysis and
# distributed tests build on (each sets its own steps and sizes on top).
SMALL_TRAIN = dict(
    max_tokens=3000,
    eval_tokens=1024,
    context_size=64,
    batch_size=256,
    k=8,
    checkpoint_every=0,
    progress=False,
)


def assert_close(
    actual: Tensor,
    expected: Tensor,
    name: str,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    show: int = 5,
) -> None:
    """Like torch.testing.assert_close, but the message says which tensor and where."""
    assert actual.shape == expected.shape, (
        f"[{name}] shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    )
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    diff = (a - e).abs()
    bad = diff > atol + rtol * e.abs()
    bad |= torch.isnan(a) != torch.isnan(e)
    if bool(bad.any()):
        n_bad = int(bad.sum())
        worst = torch.topk(diff.nan_to_num(float("inf")).reshape(-1), min(show, diff.numel()))
        where = [tuple(int(c) for c in torch.unravel_index(i, diff.shape)) for i in worst.indices]
        detail = ", ".join(f"{w}: got {a[w].item():.6g} want {e[w].item():.6g}" for w in where)
        raise AssertionError(
            f"[{name}] {n_bad} of {diff.numel()} mismatched, max abs diff "
            f"{diff.max().item():.3g} (rtol={rtol}, atol={atol}); worst {detail}"
        )


def make_params(d_in: int, d_sae: int, dtype=torch.float64, seed: int = 0):
    """Random SAE parameters (non-zero biases) as a dict of leaf tensors."""
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g, dtype=dtype) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=g, dtype=dtype) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g, dtype=dtype) / d_in**0.5,
        "b_dec": torch.randn(d_in, generator=g, dtype=dtype) * 0.1,
    }


def assert_topk_valid(
    values: Tensor,
    indices: Tensor,
    pre_ref: Tensor,
    k: int,
    name: str,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    min_exact: float = 0.99,
) -> None:
    """A kernel's TopK against reference pre-activations, tolerant of near-ties only.

    Each row's chosen features must hold the k largest reference values (up to the
    tolerance), `values` must be relu(pre_ref) at those features, and at least `min_exact`
    of the rows must match the reference indices exactly.
    """
    import sae_fast.ops.reference as ref

    want_v, want_i = ref.topk_select(pre_ref, k)
    picked = torch.gather(pre_ref, -1, indices)  # reference values at our indices
    assert_close(
        torch.sort(picked, dim=-1, descending=True).values,
        want_v,
        f"{name}: values of the chosen features",
        rtol=rtol,
        atol=atol,
    )
    assert_close(values, torch.relu(picked), f"{name}: values", rtol=rtol, atol=atol)
    exact = (indices == want_i).all(-1).double().mean().item()
    assert exact >= min_exact, f"[{name}] only {exact:.1%} of rows have the reference indices"


def tiny_gpt2_dir(path, activation_function: str = "gelu_new", mlp_scale: float = 1.0):
    """Save a randomly initialised 2-layer GPT-2 (d=32) with the embedded model's tokenizer
    as a Hugging Face directory (no download); returns `path`. `mlp_scale` multiplies the MLP
    weights (the input projection by it, the output one by twice it)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from sae_fast.data.activations import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=128,
        vocab_size=tok.vocab_size,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        activation_function=activation_function,
    )
    model = GPT2LMHeadModel(config)
    if mlp_scale != 1.0:
        with torch.no_grad():
            for block in model.transformer.h:
                block.mlp.c_fc.weight.mul_(mlp_scale)
                block.mlp.c_proj.weight.mul_(2 * mlp_scale)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def identity_sae(d_in: int):
    """A ReLU SAE that reconstructs its input exactly: relu(x) - relu(-x) = x."""
    from sae_fast import SparseAutoencoder

    sae = SparseAutoencoder(d_in, 2 * d_in, activation="relu")
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def reference_code(activation, x, W_enc, b_enc, b_dec, k=None, threshold=None):
    """The reference's dense code `[B, d_sae]` for an architecture name (the tests' one
    map from a name to the reference ops)."""
    from sae_fast.ops import reference as ref

    if activation == "topk":
        pre = ref.pre_activations(x, W_enc, b_enc, b_dec)
        return ref.densify(*ref.topk_act(pre, k), pre.shape[-1]).to(W_enc.dtype)
    if activation == "batchtopk":
        return ref.batchtopk_act(ref.encode_dense(x, W_enc, b_enc, b_dec), k)
    return ref.encode_dense(x, W_enc, b_enc, b_dec, threshold if activation == "jumprelu" else None)


def backward_case(B, d_in, d_sae, k, dtype=torch.float32, seed=0, device="cpu", collide=False):
    """Inputs of a TopK backward test: (params, x, values, indices, dL/drecon, a direct
    gradient on the values). `collide`: every row on the same few features."""
    from sae_fast.ops import reference as ref

    p = {n: t.to(device, dtype) for n, t in make_params(d_in, d_sae, seed=seed).items()}
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, d_in, generator=g).to(device, dtype)
    v, i = ref.encode_topk(x, p["W_enc"], p["b_enc"], p["b_dec"], k)
    if collide:
        i = torch.stack([torch.randperm(min(d_sae, k + 2), generator=g)[:k] for _ in range(B)])
        i = i.to(device)
    grad = torch.randn(B, d_in, generator=g).to(device, dtype)
    extra = torch.randn(B, k, generator=g).to(device, torch.float32)
    return p, x, v, i, grad, extra


def backend_device(backend: str) -> str:
    """Where a backend's tensors live in the tests: native on the CPU, the rest on the
    tests' device (`tests.conftest.DEVICE`)."""
    from tests.conftest import DEVICE

    return "cpu" if backend == "native" else DEVICE


def logit_gradient(model, ids, pos: int, tid: int, hook: str, width: int, eps: float = 1e-2):
    """d logit[pos, tid] / d activation[pos] at `hook`, by central differences (a check on
    attributions that does not share their autograd path)."""
    from sae_fast.data.hooks import patch

    def logit_with(delta):
        def add(a):
            a = a.clone()
            a[0, pos] += delta
            return a

        with patch(model, hook, add), torch.no_grad():
            return float(model(input_ids=ids).logits[0, pos, tid])

    return torch.tensor(
        [(logit_with(eps * e) - logit_with(-eps * e)) / (2 * eps) for e in torch.eye(width)]
    )

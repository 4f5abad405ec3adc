"""Steering: change chosen SAE features inside a Hugging Face model while it runs.

    with sae_fast.steer(model, sae, {123: 8.0}, mode="add"):
        model.generate(...)

At the SAE's hook, each token's activation x becomes x + Σ_f (a'_f - a_f(x)) W_dec[f], with

    add      a'_f = a_f(x) + value      (x + value * W_dec[f]; the SAE need not fire)
    clamp    a'_f = value               (the feature held at `value` on every token)
    ablate   a'_f = 0                   (values ignored)

This is the SAE reconstruction with the edited code plus the SAE's error term x - x̂, so
only the chosen features change and the rest of the activation is kept exactly. Every
position is steered, prompt and generated tokens alike. The hook is removed on exit, also
after an exception.

A transcoder is steered in its output space: its code a(x) is read at its input hook
(hook_name, e.g. layers.N.mlp_in) and the activation y at its target hook (target_hook_name,
e.g. layers.N.mlp_out) becomes y + Σ_f (a'_f - a_f(x)) W_dec[f], with the same three modes:
its prediction ŷ(x) with the edited code plus its error term y - ŷ.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..data.activations import pooled_embedding
from ..data.hooks import check_width
from ..errors import ConfigError
from ..eval.splice import check_target_width, splice_hooks, spliced
from ..sae import SparseAutoencoder
from ..validate import check_feature_id

MODES = ("add", "clamp", "ablate")


def check_features(sae: SparseAutoencoder, features: Mapping[int, float]) -> dict[int, float]:
    """`{feature: value}` validated against the SAE (ids in range, finite numbers)."""
    if not isinstance(features, Mapping) or not features:
        raise ConfigError("features must be a non-empty {feature id: value} mapping")
    out = {}
    for f, v in features.items():
        check_feature_id(f, sae.d_sae, "steering")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"steering value for feature {f} must be a finite number, got {v!r}")
        out[f] = float(v)
    return out


def steering_delta(
    sae: SparseAutoencoder, x: Tensor, features: Mapping[int, float], mode: str
) -> Tensor:
    """Σ_f (a'_f - a_f(x)) W_dec[f], `[n, d_out]`, for input rows `x [n, d_in]` (module
    docstring)."""
    ids = torch.tensor(list(features), device=sae.device)
    target = torch.tensor(list(features.values()), device=sae.device, dtype=sae.dtype)
    W = sae.W_dec[ids]  # [m, d_out]
    if mode == "add":
        return (target @ W).expand(x.shape[0], -1)
    acts = sae.encode(x)[:, ids]  # [n, m]
    new = torch.zeros_like(acts) if mode == "ablate" else target.expand_as(acts)
    return (new - acts) @ W


@contextlib.contextmanager
def steer(
    model: nn.Module,
    sae: SparseAutoencoder,
    features: Mapping[int, float],
    mode: str = "add",
    hook: str | None = None,
) -> Iterator[None]:
    """Within the block, `model` runs with `features` steered at `hook` (default: the
    SAE's hook_name; a transcoder reads there and steers its target hook); see the module
    docstring for the modes."""
    if mode not in MODES:
        raise ConfigError(f"unknown steering mode {mode!r}; expected one of {MODES}")
    features = check_features(sae, features)
    hook, target = splice_hooks(sae, hook)

    @torch.no_grad()
    def edit(act: Tensor, src: Tensor) -> Tensor:
        check_width(src.shape[-1], sae.d_in, hook)
        if target is not None:
            check_target_width(act.shape[-1], sae.d_out, target)
        y = act.reshape(-1, act.shape[-1]).to(device=sae.device, dtype=sae.dtype)
        x = src.reshape(-1, src.shape[-1]).to(device=sae.device, dtype=sae.dtype)
        delta = steering_delta(sae, x, features, mode)
        return (y + delta).to(act.dtype).to(act.device).reshape(act.shape)

    with spliced(model, hook, target, edit):
        yield


# ---------------------------------------------------------------------------- outputs


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int = 20) -> str:
    """Greedy continuation of `prompt` (causal LMs)."""
    enc = tokenizer(prompt, return_tensors="pt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def sentence_embeddings(model: nn.Module, tokenizer: Any, texts: list[str]) -> Tensor:
    """L2-normalised attention-masked mean of the final hidden states, `[n, d]`."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
    return pooled_embedding(model(**enc).last_hidden_state.float(), enc["attention_mask"])


REFERENCE_SENTENCES = [
    "The function returns a list of integers.",
    "An exception is raised when the file does not exist.",
    "The weather today is sunny and warm.",
    "She plays the violin in an orchestra.",
    "Stock markets fell sharply after the announcement.",
    "The recipe needs two cups of flour and an egg.",
    "The team won the championship in overtime.",
    "Negation: this is not true and never was.",
    "The cat slept on the windowsill all afternoon.",
    "Use a for loop to iterate over the dictionary keys.",
]


def compare_embeddings(
    model: nn.Module,
    tokenizer: Any,
    sae: SparseAutoencoder,
    features: Mapping[int, float],
    mode: str,
    text: str,
    references: list[str] | None = None,
) -> dict[str, Any]:
    """Encoder models: baseline vs steered sentence embedding of `text`, their cosine, and
    each one's nearest reference sentence (with similarities)."""
    refs = references or REFERENCE_SENTENCES
    ref_emb = sentence_embeddings(model, tokenizer, refs)
    base = sentence_embeddings(model, tokenizer, [text])[0]
    with steer(model, sae, features, mode):
        steered = sentence_embeddings(model, tokenizer, [text])[0]
    sim_b, sim_s = ref_emb @ base, ref_emb @ steered
    return {
        "cosine_baseline_vs_steered": float(base @ steered),
        "nearest_baseline": (refs[int(sim_b.argmax())], float(sim_b.max())),
        "nearest_steered": (refs[int(sim_s.argmax())], float(sim_s.max())),
        "similarities": [
            (r, float(b), float(s)) for r, b, s in zip(refs, sim_b, sim_s, strict=True)
        ],
    }

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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..data.activations import pooled_embedding
from ..data.fingerprint import check_model
from ..data.hooks import check_width
from ..errors import ConfigError
from ..eval.splice import check_target_width, splice_hooks, spliced
from ..sae import SparseAutoencoder
from ..validate import check_feature_id
from .features import token_effects
from .generation import Token, check_causal, generate

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
    scale = sae.decoder_scale(x)  # [n, 1] under a per-row input normalisation, else None
    if mode == "add":
        delta = (target @ W).expand(x.shape[0], -1)
    else:
        acts = sae.encode(x)[:, ids]  # [n, m]
        new = torch.zeros_like(acts) if mode == "ablate" else target.expand_as(acts)
        delta = (new - acts) @ W
    return delta if scale is None else delta * scale


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


@dataclass
class SteerReport:
    """Baseline and steered continuations of a prompt, and how much probability each puts
    on the steered features' top tokens (their largest direct logit effects W_dec @ W_U)."""

    prompt: str
    baseline: str
    steered: str
    top_tokens: list[str]
    logprob_baseline: float  # mean log P(any top token) over the generation's next tokens
    logprob_steered: float
    hits_baseline: int  # top tokens said in the continuation
    hits_steered: int

    @property
    def logprob_change(self) -> float:
        """log P(top tokens), steered minus baseline (> 0: the steering said more of them)."""
        return self.logprob_steered - self.logprob_baseline

    def text(self) -> str:
        """What `sae-fast steer` prints."""
        return "\n".join(
            [
                f"prompt:   {self.prompt}",
                f"baseline: {self.baseline}",
                f"steered:  {self.steered}",
                f"features' top tokens: {self.top_tokens}",
                f"log P(top tokens) per generated token: {self.logprob_baseline:.3f} -> "
                f"{self.logprob_steered:.3f} ({self.logprob_change:+.3f}); said "
                f"{self.hits_baseline} -> {self.hits_steered} times",
            ]
        )


def _set_logprob(tokens: list[Token], ids: Tensor) -> tuple[float, int]:
    """Mean over the steps that produced the continuation of log P(next token in `ids`),
    and how many generated tokens are in `ids`."""
    n_prompt = sum(not t.generated for t in tokens)
    steps = tokens[n_prompt - 1 : -1] or tokens[-1:]
    lp = torch.stack([torch.logsumexp(t.logprobs[ids], 0) for t in steps])
    hits = sum(t.token_id in set(ids.tolist()) for t in tokens if t.generated)
    return float(lp.mean()), hits


def steer_report(
    model: nn.Module,
    tokenizer: Any,
    sae: SparseAutoencoder,
    features: Mapping[int, float],
    prompt: str,
    mode: str = "add",
    max_new_tokens: int = 20,
    seed: int | None = None,
    temperature: float = 1.0,
    top_tokens: int = 10,
    tokens: list[int] | None = None,
    allow_other_model: bool = False,
) -> SteerReport:
    """Causal LMs: generate from `prompt` without and with `features` steered (greedy, or
    sampled with `seed`: the same seed for both) and measure the features' top tokens (their
    `top_tokens` largest direct logit effects each, or the token ids `tokens`)."""
    check_causal(model, "steering a generation")
    check_model(sae, model, allow_other_model)
    features = check_features(sae, features)
    if tokens is None:
        effects = token_effects(sae, model, top_tokens, features=list(features))
        if effects is None:
            raise ConfigError("the model has no unembedding of the SAE's width to read tokens")
        ranked = list(dict.fromkeys(effects[0].T.reshape(-1).tolist()))  # best of each first
    else:
        vocab = model.get_output_embeddings().weight.shape[0]
        if not tokens or any(not 0 <= t < vocab for t in tokens):
            raise ConfigError(f"tokens must be a non-empty list of ids in [0, {vocab})")
        ranked = list(dict.fromkeys(tokens))
    ids = torch.tensor(ranked)
    base, base_toks = generate(model, tokenizer, prompt, max_new_tokens, seed, temperature)
    with steer(model, sae, features, mode):
        st, st_toks = generate(model, tokenizer, prompt, max_new_tokens, seed, temperature)
    lp_b, hit_b = _set_logprob(base_toks, ids)
    lp_s, hit_s = _set_logprob(st_toks, ids)
    names = tokenizer.convert_ids_to_tokens(ranked)
    return SteerReport(prompt, base, st, names, lp_b, lp_s, hit_b, hit_s)


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

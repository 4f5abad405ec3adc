"""Top-activating contexts of SAE features over a set of collected activations."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.activations import ActivationBatch
from ..sae import SparseAutoencoder


@dataclass
class FeatureExample:
    """One activation of a feature: its value and where the token sits."""

    value: float
    window: int
    position: int


@torch.no_grad()
def fire_counts(sae: SparseAutoencoder, data: ActivationBatch, chunk: int = 4096) -> torch.Tensor:
    """How many of the tokens in `data` each feature fires on, `[d_sae]`."""
    counts = torch.zeros(sae.d_sae, dtype=torch.int64)
    for r0 in range(0, len(data.tokens), chunk):
        acts = sae.encode(data.acts[r0 : r0 + chunk].to(sae.dtype))  # [n, d_sae]
        counts += (acts > 0).sum(0)
    return counts


@torch.no_grad()
def top_examples(
    sae: SparseAutoencoder, data: ActivationBatch, feature: int, n: int = 3, chunk: int = 4096
) -> list[FeatureExample]:
    """The `n` strongest activations of `feature` over `data` (one pass, chunked)."""
    vals: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    for r0 in range(0, len(data.tokens), chunk):
        x = data.acts[r0 : r0 + chunk].to(sae.dtype)
        a = sae.encode(x)[:, feature].float()  # [n]
        top = torch.topk(a, min(n, len(a)))
        vals.append(top.values)
        rows.append(top.indices + r0)
    v, r = torch.cat(vals), torch.cat(rows)
    order = torch.argsort(v, descending=True, stable=True)[:n]
    return [
        FeatureExample(float(v[o]), int(data.window[r[o]]), int(data.position[r[o]]))
        for o in order
        if v[o] > 0
    ]


def render_context(tokenizer, window: list[int], position: int, width: int = 8) -> str:
    """The text around one token, the token itself marked as [[token]]."""
    lo, hi = max(0, position - width), min(len(window), position + width + 1)
    left = tokenizer.decode(window[lo:position], skip_special_tokens=True)
    tok = tokenizer.decode(window[position : position + 1])
    right = tokenizer.decode(window[position + 1 : hi], skip_special_tokens=True)
    return f"{left} [[{tok.strip()}]] {right}".replace("\n", " ").strip()

"""Feature dashboards in the format Neuronpedia and SAEDashboard exchange.

`neuronpedia_batch` turns a `FeatureReport` (one pass over a corpus) into the JSON of one
SAEDashboard `NeuronpediaDashboardBatch` (`{"model_id", "layer", "sae_set", "features"}`),
each feature with:

- `pos_str` / `pos_values`, `neg_str` / `neg_values`: the most boosted and suppressed tokens
  of its direct logit effect W_dec[f] @ W_U (causal LMs; empty otherwise);
- `frac_nonzero`: its density;
- `freq_hist_data_bar_values` / `_heights`: its activation histogram (bar centres, counts);
- `logits_hist_data_bar_values` / `_heights`: the histogram of its logit effects over the
  vocabulary;
- `activations`: examples as `{bin_min, bin_max, bin_contains, tokens, values,
  qualifying_token_index}` (the token the example was kept for): first the
  top activations (their own bin), then the uniformly sampled ones in `n_bins` equal-width
  bins of activation up to the maximum, each bin with the share of sampled activations
  that fell in it.

`write_neuronpedia` writes `batch-N.json` files of `per_batch` features (each atomically).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..files import atomic_file
from .browser import TokenPieces
from .features import ACT_EDGES, Example, FeatureReport


def _example(ex: Example, windows, width: int, pieces: TokenPieces) -> dict[str, Any]:
    """tokens, values and the index of the token the example was kept for."""
    ids, acts, centre = ex.span(windows, width)
    return {
        "tokens": [pieces(t) for t in ids],
        "values": [round(float(a), 4) for a in acts],
        "qualifying_token_index": centre,
    }


def _activation_bins(
    report: FeatureReport, f: int, windows, pieces: TokenPieces, n_bins: int
) -> list[dict[str, Any]]:
    out = []
    top = report.top_examples(f)
    share = len(top) / max(int(report.counts[f]), 1)
    for ex in top:
        lo, hi = top[-1].value, top[0].value
        out.append(
            dict(
                bin_min=lo,
                bin_max=hi,
                bin_contains=share,
                **_example(ex, windows, report.width, pieces),
            )
        )
    sample = report.sample_examples(f)
    peak = float(report.maxima[f])
    if not sample or peak <= 0:
        return out
    edges = [peak * i / n_bins for i in range(n_bins + 1)]
    for b in range(n_bins):
        inside = [e for e in sample if edges[b] < e.value <= edges[b + 1]]
        for ex in sorted(inside, key=lambda e: -e.value):
            bin_ = dict(
                bin_min=edges[b], bin_max=edges[b + 1], bin_contains=len(inside) / len(sample)
            )
            out.append({**bin_, **_example(ex, windows, report.width, pieces)})
    return out


def _histogram(values: Tensor, bins: int = 40) -> tuple[list[float], list[int]]:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return [lo], [int(values.numel())]
    counts = torch.histc(values.float(), bins, lo, hi)
    step = (hi - lo) / bins
    return [round(lo + (i + 0.5) * step, 5) for i in range(bins)], [int(c) for c in counts]


def neuronpedia_batch(
    report: FeatureReport,
    windows: Sequence[Sequence[int]],
    tokenizer: Any,
    features: Sequence[int],
    *,
    model_id: str,
    layer: int,
    sae_set: str,
    dataset: str = "",
    context_size: int = 128,
    W_dec: Tensor | None = None,
    W_U: Tensor | None = None,
    n_logits: int = 10,
    n_bins: int = 5,
) -> dict[str, Any]:
    """One SAEDashboard / Neuronpedia batch for `features` (module docstring); logit fields
    need the decoder `W_dec [d_sae, d]` and unembedding `W_U [vocab, d]`."""
    pieces = TokenPieces(tokenizer)
    centres = [
        round(10 ** ((ACT_EDGES[i] + ACT_EDGES[i + 1]) / 2), 6) for i in range(len(ACT_EDGES) - 1)
    ]
    feats = []
    for f in features:
        entry: dict[str, Any] = {
            "feature_index": int(f),
            "frac_nonzero": float(report.density[f]),
            "freq_hist_data_bar_values": centres,
            "freq_hist_data_bar_heights": [int(c) for c in report.hist[f].tolist()],
            "n_prompts_total": len(windows),
            "n_tokens_in_prompt": context_size,
            "dataset": dataset,
            "activations": _activation_bins(report, f, windows, pieces, n_bins),
            "pos_str": [], "pos_values": [], "neg_str": [], "neg_values": [],
            "logits_hist_data_bar_values": [], "logits_hist_data_bar_heights": [],
        }  # fmt: skip
        if W_dec is not None and W_U is not None:
            eff = W_U.float() @ W_dec[f].float()  # [vocab]
            hi, lo = torch.topk(eff, n_logits), torch.topk(eff, n_logits, largest=False)
            entry["pos_str"] = [pieces(int(i)) for i in hi.indices]
            entry["pos_values"] = [round(float(v), 5) for v in hi.values]
            entry["neg_str"] = [pieces(int(i)) for i in lo.indices]
            entry["neg_values"] = [round(float(v), 5) for v in lo.values]
            vals, heights = _histogram(eff)
            entry["logits_hist_data_bar_values"] = vals
            entry["logits_hist_data_bar_heights"] = heights
        feats.append(entry)
    return {"model_id": model_id, "layer": int(layer), "sae_set": sae_set, "features": feats}


def write_neuronpedia(
    batch: dict[str, Any], out_dir: str | Path, per_batch: int = 128
) -> list[Path]:
    """Write `batch` as `batch-0.json`, `batch-1.json`, ... of `per_batch` features each."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    feats = batch["features"]
    for n, f0 in enumerate(range(0, max(len(feats), 1), per_batch)):
        part = {**batch, "features": feats[f0 : f0 + per_batch]}
        path = out / f"batch-{n}.json"
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(part, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def export_neuronpedia(
    sae_dir: str | Path,
    out_dir: str | Path,
    *,
    features: Sequence[int] | None = None,
    model: str | None = None,
    corpus: str | None = None,
    max_tokens: int = 50_000,
    n_top: int = 20,
    width: int = 12,
    per_batch: int = 128,
    allow_other_model: bool = False,
) -> list[Path]:
    """`sae-fast export`: scan the corpus with the SAE and write its features (default:
    every feature that fired) as Neuronpedia / SAEDashboard batch files into `out_dir`."""
    import re

    from .scan import scan_corpus

    scan = scan_corpus(
        sae_dir, model=model, corpus=corpus, max_tokens=max_tokens, n_top=n_top,
        n_samples=32, width=width, allow_other_model=allow_other_model,
    )  # fmt: skip
    sae, report = scan.sae, scan.report
    if features is None:
        features = (report.counts > 0).nonzero(as_tuple=True)[0].tolist()
    for f in features:
        if not 0 <= f < sae.d_sae:
            from ..errors import ConfigError

            raise ConfigError(f"feature {f} is out of range for d_sae={sae.d_sae}")
    m = re.match(r"layers\.(\d+)\.", scan.hook)
    layer = int(m.group(1)) if m else 0
    head = (
        scan.model.get_output_embeddings() if hasattr(scan.model, "get_output_embeddings") else None
    )
    W_U = None if head is None else head.weight.detach().float().cpu()
    if W_U is not None and W_U.shape[1] != sae.d_out:
        W_U = None
    kind = scan.hook.split(".")[-1]
    batch = neuronpedia_batch(
        report, scan.windows, scan.tokenizer, features, model_id=scan.model_name, layer=layer,
        sae_set=f"{layer}-sae_fast-{kind}-{sae.d_sae}", dataset=scan.corpus,
        context_size=int(sae.cfg.metadata.get("context_size", 128)),
        W_dec=sae.W_dec.detach().float().cpu(), W_U=W_U,
    )  # fmt: skip
    return write_neuronpedia(batch, out_dir, per_batch)

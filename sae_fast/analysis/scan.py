"""One scan of a corpus with an SAE on its model, shared by the browser, autointerp and the
dashboard exports: load the SAE and the model (checking that it is the SAE's own), tokenise
the corpus into the SAE's context windows, and collect a `FeatureReport`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..sae import SparseAutoencoder
from .features import FeatureReport


@dataclass
class Scan:
    """What a scan loaded and found."""

    sae: SparseAutoencoder
    model: nn.Module
    tokenizer: Any
    model_name: str
    corpus: str
    hook: str
    target_hook: str | None
    windows: list[list[int]]  # the scanned windows (report window ids index these)
    report: FeatureReport


def scan_corpus(
    sae_dir: str | Path,
    *,
    model: str | None = None,
    hook: str | None = None,
    corpus: str | None = None,
    text_field: str = "text",
    max_tokens: int = 50_000,
    skip_tokens: int = 0,
    n_top: int = 10,
    n_samples: int = 16,
    width: int = 12,
    seed: int = 0,
    backend: str = "auto",
    allow_other_model: bool = False,
) -> Scan:
    """Scan `max_tokens` tokens of `corpus` (default: the SAE's training corpus) after its
    first `skip_tokens` with the SAE at `hook` (default: its own) on `model` (its own)."""
    from ..data.activations import iter_token_windows, load_model, select_windows
    from ..data.corpus import load_texts
    from ..data.fingerprint import check_model
    from ..eval.splice import check_sae_widths, splice_hooks
    from ..validate import check_int
    from .features import collect_features

    for name, value, low in (("max_tokens", max_tokens, 1), ("top", n_top, 1),
                             ("samples", n_samples, 0), ("width", width, 0)):  # fmt: skip
        check_int(name, value, low)
    sae = SparseAutoencoder.load(sae_dir, backend=backend)
    meta = sae.cfg.metadata
    model_name, (hook, target_hook) = sae.require_model(model), splice_hooks(sae, hook)
    net, tokenizer = load_model(model_name)
    check_model(sae, net, allow_other_model)
    check_sae_widths(net, tokenizer, sae, hook)
    corpus = corpus or meta.get("corpus", "embedded")
    windows = iter_token_windows(
        tokenizer, load_texts(corpus, text_field), int(meta.get("context_size", 128))
    )
    chosen, _ = select_windows(tokenizer, windows, max_tokens, skip_tokens)
    if not chosen:
        from ..errors import DataError

        raise DataError(f"corpus {corpus} has no tokens after the first {skip_tokens:,}")
    report = collect_features(sae, net, tokenizer, chosen, hook, n_top, n_samples, width, seed=seed)
    return Scan(sae, net, tokenizer, model_name, corpus, hook, target_hook, chosen, report)

"""`evaluate`: reconstruction, sparsity and downstream fidelity of one SAE, as a dataclass.

The evaluation set is a run of token windows of a corpus, by default the tokens right after
the ones the SAE was trained on (held out): the trainer records its corpus and token count
in the SAE's metadata, and `skip_tokens=None` skips that many when the corpus is the same.

A transcoder is evaluated on (input, target) pairs collected in one forward pass (its
hook_name and target_hook_name): the metrics compare its output with the target, and the
downstream runs splice its output (and the ablations) in at the target hook.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..data.activations import (
    ActivationBatch,
    iter_activations,
    iter_token_windows,
    load_model,
    select_windows,
)
from ..data.corpus import load_texts
from ..data.filters import TokenFilter
from ..data.fingerprint import check_model
from ..data.hooks import check_width, resolve_hook
from ..data.store import concat_batches
from ..errors import ConfigError
from ..sae import SparseAutoencoder
from ..validate import check_int
from .metrics import ReconstructionMetrics, reconstruction_metrics
from .splice import Fidelity, check_target_width, splice_hooks

DEFAULT_EVAL_TOKENS = 20_000


@dataclass
class EvalSet:
    """Held-out windows of a corpus, their activations at `hook` (and, for a transcoder, at
    `target_hook`, in `data.target`), and the model."""

    model: nn.Module
    tokenizer: Any
    hook: str
    windows: list[list[int]]
    data: ActivationBatch
    skipped_tokens: int = 0
    target_hook: str | None = None
    token_filter: dict[str, Any] | None = None  # what training dropped; splicing skips it

    @classmethod
    def build(
        cls,
        model: str | nn.Module = "embedded",
        hook: str = "layers.3.residual",
        corpus: str = "embedded",
        text_field: str = "text",
        context_size: int = 128,
        max_tokens: int = DEFAULT_EVAL_TOKENS,
        skip_tokens: int = 0,
        tokenizer: Any = None,
        target_hook: str | None = None,
        token_filter: dict[str, Any] | None = None,
    ) -> EvalSet:
        """Tokenise `corpus`, skip the windows starting before token `skip_tokens` (real
        tokens), keep windows up to `max_tokens` tokens, and collect their activations
        (with `target_hook`, a transcoder's targets too, from the same forward pass) with
        the training engine's forward pass, dropping what `token_filter` (an SAE's
        `metadata["token_filter"]`: drop_first, max_norm_ratio) says its training dropped."""
        check_int("max_tokens", max_tokens, 1)
        check_int("skip_tokens", skip_tokens, 0)
        if isinstance(model, str):
            model, tokenizer = load_model(model)
        elif tokenizer is None:
            raise ConfigError("pass the tokenizer with a model object")
        resolve_hook(model, hook)
        if target_hook is not None:
            resolve_hook(model, target_hook)
            if target_hook == hook:
                raise ConfigError(
                    f"target_hook is the input hook {hook!r}: a transcoder predicts another "
                    "hook (leave target_hook unset for an SAE)"
                )
        windows = iter_token_windows(tokenizer, load_texts(corpus, text_field), context_size)
        chosen, seen = select_windows(tokenizer, windows, max_tokens, skip_tokens)
        if not chosen:
            raise ConfigError(
                f"corpus {corpus!r} has {seen} tokens, none left after skipping {skip_tokens} "
                "(the SAE's training tokens); use a larger corpus or skip_tokens=0 to "
                "evaluate on training data"
            )
        keep = TokenFilter(**(token_filter or {}))
        batches = iter_activations(
            model, tokenizer, chosen, hook, target_hook=target_hook, keep=keep
        )
        data = concat_batches(list(batches))
        return cls(model, tokenizer, hook, chosen, data, seen, target_hook, token_filter)

    def fidelity(self, batch_size: int = 16) -> Fidelity:
        """A `Fidelity` on these windows (mean ablation uses their mean activation; for a
        transcoder's set, it splices at the target hook and uses the mean target)."""
        mean = self.data.targets.double().mean(0).float()
        if self.target_hook is None:
            hook, source = self.hook, None
        else:
            hook, source = self.target_hook, self.hook
        return Fidelity(
            self.model,
            self.tokenizer,
            self.windows,
            hook,
            mean,
            batch_size,
            source=source,
            token_filter=self.token_filter,
        )

    def check_fits(self, sae: SparseAutoencoder) -> None:
        """ConfigError unless `sae` can be evaluated here: width d_in at `hook` and, for a
        transcoder, targets of width d_out (an SAE's set has no targets)."""
        check_width(self.data.acts.shape[1], sae.d_in, self.hook)
        if not sae.cfg.transcoder:
            if self.data.target is not None:
                raise ConfigError(
                    f"this evaluation set holds a transcoder's targets (at {self.target_hook}); "
                    "evaluate an SAE on one built without target_hook"
                )
            return
        if self.data.target is None or self.target_hook is None:
            raise ConfigError(
                "a transcoder needs an evaluation set with its targets: build it with "
                f"target_hook={sae.cfg.target_hook_name!r}"
            )
        check_target_width(self.data.target.shape[1], sae.d_out, self.target_hook)


@dataclass
class EvalResult(ReconstructionMetrics):
    """Everything `evaluate` measured: the `ReconstructionMetrics` fields plus where they
    were measured and the downstream results; `to_dict()` for JSON, `table()` for people."""

    sae_name: str = "SparseAutoencoder"
    hook: str = ""
    target_hook: str | None = None
    skipped_tokens: int = 0
    downstream_score: float | None = None
    downstream: dict[str, float] = field(default_factory=dict)
    error_term: bool = False

    @classmethod
    def from_parts(
        cls,
        name: str,
        eval_set: EvalSet,
        rec: ReconstructionMetrics,
        downstream: dict[str, float] | None,
        error_term: bool,
    ) -> EvalResult:
        """Combine reconstruction metrics and (optional) downstream results."""
        return cls(
            **{f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)},
            sae_name=name,
            hook=eval_set.hook,
            target_hook=eval_set.target_hook,
            skipped_tokens=eval_set.skipped_tokens,
            downstream_score=None if downstream is None else downstream["downstream_score"],
            downstream=dict(downstream or {}),
            error_term=error_term,
        )

    @property
    def ce_loss_recovered(self) -> float | None:
        """Causal LMs: (CE_zero - CE_sae) / (CE_zero - CE_clean), the field's headline
        score (SAELens' "CE loss score"); None for encoders or without downstream runs."""
        return self.downstream.get("ce_score_zero")

    @property
    def ce_loss_recovered_mean(self) -> float | None:
        """The same against mean ablation."""
        return self.downstream.get("ce_score_mean")

    @property
    def kl_div(self) -> float | None:
        """Causal LMs: mean KL(p_clean || p_sae) of the next-token distributions (nats)."""
        return self.downstream.get("kl_sae")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: every field but the per-feature `density`, plus the density
        histogram; NaN/inf become null."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("density")
        for name in ("ce_loss_recovered", "ce_loss_recovered_mean", "kl_div"):
            out[name] = getattr(self, name)
        out["density_histogram"] = self.histogram()
        return clean(out)

    def to_json(self) -> str:
        """`to_dict()` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A two-column text table of the main metrics and the density histogram."""
        v = "x" if self.target_hook is None else "y"  # a transcoder predicts its target y
        rows = [
            ("tokens evaluated", f"{self.n_tokens:,} (after skipping {self.skipped_tokens:,})"),
            ("MSE (per token)", f"{self.mse:.4g}"),
            ("FVU", f"{self.fvu:.4f}"),
            ("explained variance", f"{self.explained_variance:.4f}"),
            (f"cosine({v}, {v}_hat)", f"{self.cosine:.4f}"),
            (f"L2 ratio ||{v}_hat||/||{v}||", f"{self.l2_ratio:.4f}"),
            ("L0 (active latents/token)", f"{self.l0:.2f}"),
            ("dead (never fired)", f"{100 * self.dead_fraction:.2f}%"),
            ("dense (fires on >10%)", f"{100 * self.dense_fraction:.2f}%"),
        ]
        d = self.downstream
        note = " (error term added back)" if self.error_term else ""
        if "ce_sae" in d:
            rows += [
                (f"CE clean / SAE / zero-abl{note}", _triple(d, "ce")),
                ("CE loss recovered (vs zero / mean)", _pair(d, "ce")),
                ("KL to clean: SAE / zero / mean", _triple(d, "kl", runs=("sae", "zero", "mean"))),
                ("KL score (vs zero / mean)", _pair(d, "kl")),
            ]
        elif "emb_cos_sae" in d:
            rows += [
                (
                    f"sentence-emb cos SAE / zero / mean{note}",
                    _triple(d, "emb_cos", runs=("sae", "zero", "mean")),
                ),
                ("sentence-emb cos score (vs zero / mean)", _pair(d, "emb_cos")),
                ("final-token cos score (vs zero / mean)", _pair(d, "tok_cos")),
                ("final-token MSE score (vs zero / mean)", _pair(d, "tok_mse")),
            ]
        if self.downstream_score is not None:
            rows.append(("downstream score", f"{self.downstream_score:.4f}"))
        width = max(len(r[0]) for r in rows)
        where = self.hook if self.target_hook is None else f"{self.hook} -> {self.target_hook}"
        lines = [f"{self.sae_name} @ {where}"]
        lines += [f"  {name:<{width}}  {value}" for name, value in rows]
        h = self.histogram()
        lines.append(f"  log10 feature density histogram (dead: {h['dead']}):")
        peak = max(h["counts"]) or 1
        for lo, hi, c in zip(h["edges"][:-1], h["edges"][1:], h["counts"], strict=True):
            if c:
                lines.append(f"    [{lo:5.1f}, {hi:5.1f})  {c:7d}  {'#' * max(1, 40 * c // peak)}")
        return "\n".join(lines)


def _triple(d: dict[str, float], loss: str, runs=("clean", "sae", "zero")) -> str:
    return " / ".join(f"{d[f'{loss}_{r}']:.4f}" for r in runs)


def _pair(d: dict[str, float], loss: str) -> str:
    return f"{d[f'{loss}_score_zero']:.4f} / {d[f'{loss}_score_mean']:.4f}"


def default_skip(sae: SparseAutoencoder, corpus: str) -> int:
    """Tokens to skip for a held-out evaluation: the SAE's training tokens when it was
    trained on `corpus` (from its metadata), else 0."""
    meta = sae.cfg.metadata
    if meta.get("corpus") == corpus and isinstance(meta.get("train_tokens"), int):
        return int(meta["train_tokens"])
    return 0


def evaluate(
    sae: SparseAutoencoder | str | Path,
    eval_set: EvalSet | None = None,
    *,
    model: str | nn.Module | None = None,
    tokenizer: Any = None,
    hook: str | None = None,
    corpus: str | None = None,
    text_field: str = "text",
    context_size: int | None = None,
    max_tokens: int = DEFAULT_EVAL_TOKENS,
    skip_tokens: int | None = None,
    downstream: bool = True,
    error_term: bool = False,
    batch_size: int = 16,
    fidelity: Fidelity | None = None,
    allow_other_model: bool = False,
) -> EvalResult:
    """Evaluate `sae` (a module or an SAE directory). Model, hook, corpus and context size
    default to the SAE's own metadata (a transcoder's target hook is its target_hook_name);
    pass `eval_set` (and `fidelity`) to reuse them."""
    name = str(sae) if isinstance(sae, (str, Path)) else "SparseAutoencoder"
    if isinstance(sae, (str, Path)):
        sae = SparseAutoencoder.load(sae)
    meta = sae.cfg.metadata
    if eval_set is None:
        hook, target_hook = splice_hooks(sae, hook)
        if not isinstance(model, nn.Module):
            model, tokenizer = load_model(sae.require_model(model))
        check_model(sae, model, allow_other_model)
        corpus = corpus or meta.get("corpus", "embedded")
        eval_set = EvalSet.build(
            model,
            hook,
            corpus,
            text_field,
            context_size or int(meta.get("context_size", 128)),
            max_tokens,
            default_skip(sae, corpus) if skip_tokens is None else skip_tokens,
            tokenizer=tokenizer,
            target_hook=target_hook,
            token_filter=meta.get("token_filter"),
        )
    eval_set.check_fits(sae)
    rec = reconstruction_metrics(sae, eval_set.data.acts, targets=eval_set.data.target)
    down = None
    if downstream:
        fidelity = fidelity or eval_set.fidelity(batch_size)
        down = fidelity.measure(sae, error_term=error_term)
    return EvalResult.from_parts(name, eval_set, rec, down, error_term)

"""Downstream fidelity: splice an SAE's reconstruction into the model and score the damage.

At the SAE's hook, the activation of every real token (not padding, not special tokens such
as [CLS]/[SEP], which the SAE never saw in training) is replaced by

    sae        x̂ = SAE(x)                  (with `error_term`: x̂ + (x - x̂), a check that
                                             splicing itself leaves the model unchanged)
    zero       0                            (zero ablation)
    mean       μ, the mean activation over the evaluation set (mean ablation)

and the rest of the forward pass runs as usual. Tokens the SAE's training dropped (its
`token_filter`: position 0 and norm outliers, the attention sinks of causal LMs) keep their
clean activation in every run, ablations included: the SAE was never asked to reconstruct
them (the outliers are judged against the median norm of the batch's real tokens).

A transcoder (`sae.cfg.transcoder`) is spliced where its output goes: it reads x at its
input hook (e.g. layers.N.mlp_in) and the activation y at its target hook (layers.N.mlp_out)
of every real token becomes ŷ = T(x) (with `error_term`: ŷ + (y - ŷ)); zero and mean
ablation replace y (μ: the mean target).

Each run is scored by a loss L against the clean run, and each baseline b ∈ {zero, mean}
gives a score

    score_b = (L_b - L_sae) / (L_b - L_clean)

1 means the SAE loses nothing, 0 means it is as bad as ablating the hook. The losses:

causal LMs (next-token logits), over every position whose next token is real:
    ce      mean cross-entropy of the next token                  (L_clean = CE_clean)
    kl      mean KL(p_clean || p_run) of the next-token distributions (L_clean = 0)
    ce_score_zero is SAELens' "CE loss score"; kl_score_zero its "KL div score".

encoder models (final hidden states, e.g. the embedded MiniLM):
    emb_cos  1 - cos(e_clean, e_run), e = L2-normalised attention-masked mean of the final
             hidden states (the sentence-transformers embedding of all-MiniLM-L6-v2)
    tok_cos  1 - cos(h_clean, h_run) over the final hidden states of real tokens
    tok_mse  ||h_clean - h_run||² over the same tokens
    each with L_clean = 0; emb_cos_score_zero is the headline score. (The squared distance
    of the unit-norm embeddings is 2 - 2 cos: it would score exactly like emb_cos.)
Values reported are the mean losses (for *_cos: the mean cosine) of each run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.activations import is_causal_lm, pad_windows, pooled_embedding
from ..data.filters import TokenFilter
from ..data.hooks import check_width, hook_widths, patch, patch_from
from ..errors import ConfigError
from ..sae import SparseAutoencoder

# rows at the spliced hook [n, d] (and, for a transcoder, its input rows [n, d_in]) -> rows
Replace = Callable[..., Tensor]
BASELINES = ("zero", "mean")


def splice_hooks(sae: SparseAutoencoder, hook: str | None = None) -> tuple[str, str | None]:
    """(input hook, target hook): where `sae` reads (`hook`, default cfg.hook_name) and, for a
    transcoder, where its output replaces the model's (cfg.target_hook_name); None for an SAE."""
    hook = sae.require_hook(hook)
    if not sae.cfg.transcoder:
        return hook, None
    target = sae.cfg.target_hook_name
    if target is None:
        raise ConfigError(
            "the transcoder does not record its target hook (cfg target_hook_name), "
            "so there is nowhere to splice its output"
        )
    return hook, target


def check_target_width(width: int, d_out: int, hook: str) -> None:
    """ConfigError when activations of `width` at a transcoder's target `hook` differ from
    its output width `d_out`."""
    if width != d_out:
        raise ConfigError(
            f"activations at {hook} have width {width}, the transcoder predicts d_out={d_out}"
        )


def check_sae_widths(
    model: nn.Module, tokenizer: Any, sae: SparseAutoencoder, hook: str | None = None
) -> None:
    """ConfigError unless `model`'s activations fit `sae`: width d_in at the input hook and,
    for a transcoder, d_out at the target hook (one forward pass of one token)."""
    hook, target = splice_hooks(sae, hook)
    width, target_width = hook_widths(model, tokenizer, hook, target)
    check_width(width, sae.d_in, hook)
    if target is not None:
        check_target_width(target_width, sae.d_out, target)


def spliced(
    model: nn.Module, hook: str, target: str | None, fn: Callable[[Tensor, Tensor], Tensor]
) -> contextlib.AbstractContextManager[None]:
    """Within the block, the activation at `target` becomes `fn(activation, x)`, x the
    activation at `hook` (a transcoder's input); with `target` None, the activation at `hook`
    becomes `fn(x, x)` (an SAE reads and replaces one hook). `splice_hooks` gives the pair."""
    if target is None:
        return patch(model, hook, lambda a: fn(a, a))
    return patch_from(model, hook, target, fn)


def score(loss_run: float, loss_baseline: float, loss_clean: float) -> float:
    """(L_b - L_run) / (L_b - L_clean): 1 = no loss, 0 = as bad as the baseline."""
    denom = loss_baseline - loss_clean
    return (loss_baseline - loss_run) / denom if denom != 0 else float("nan")


def sae_replacement(sae: SparseAutoencoder, error_term: bool = False) -> Replace:
    """`replace(y, x=None)`: the SAE's output on its input rows `x [n, d_in]` (default `y`
    itself, for an SAE) in place of the rows `y [n, d_out]` (any dtype); with `error_term`,
    ŷ + (y - ŷ)."""

    @torch.no_grad()
    def replace(y: Tensor, x: Tensor | None = None) -> Tensor:
        ys = y.to(device=sae.device, dtype=sae.dtype)
        xs = ys if x is None else x.to(device=sae.device, dtype=sae.dtype)
        recon = sae(xs).reconstruction
        if error_term:
            recon = recon + (ys - recon)
        return recon.to(device=y.device, dtype=y.dtype)

    return replace


def _splice(act: Tensor, keep: Tensor, replace: Replace, source: Tensor | None = None) -> Tensor:
    """`act` with its `keep` rows replaced by `replace(rows)` (with `source`, a transcoder's
    input activation of the same tokens: `replace(rows, source rows)`)."""
    for name, t in (("hook", act), ("source hook", source)):
        if t is not None and t.shape[:2] != keep.shape:
            raise RuntimeError(
                f"{name} activation has shape {tuple(t.shape)}, expected [batch, seq] = "
                f"{tuple(keep.shape)} leading dims"
            )
    out = act.clone()
    rows = act[keep]
    new = replace(rows) if source is None else replace(rows, source[keep])
    out[keep] = new.to(act.dtype)
    return out


class Fidelity:
    """Downstream fidelity of SAEs at `hook` of `model`, on fixed token windows; with
    `source`, of transcoders reading `source` and replacing `hook` (their target), where
    `mean_act` is the mean target activation.

    Baseline runs (clean, zero, mean) are measured once, on first use; `measure(sae)` then
    costs one spliced forward pass per batch (plus the clean pass for causal LMs, whose
    next-token distributions are too large to keep)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        windows: list[list[int]],
        hook: str,
        mean_act: Tensor,
        batch_size: int = 16,
        source: str | None = None,
        token_filter: dict[str, Any] | None = None,
    ) -> None:
        if not windows:
            raise ValueError("no token windows to evaluate on")
        if source is not None and source == hook:
            raise ConfigError(f"source and hook are both {hook!r}: a transcoder reads another hook")
        self.model = model
        self.hook = hook
        self.source = source
        self.causal = is_causal_lm(model)
        self.device = next(model.parameters()).device
        self.batches = [
            tuple(t.to(self.device) for t in pad_windows(tokenizer, windows[i : i + batch_size]))
            for i in range(0, len(windows), batch_size)
        ]
        self.mean_act = mean_act.detach().float()
        self.token_filter = dict(token_filter or {})
        self._clean: list[tuple[Tensor, Tensor]] | None = None  # encoder: (h_real, emb)
        self._base: dict[str, float] | None = None

    # ------------------------------------------------------------------ forward passes
    @torch.no_grad()
    def _forward(self, ids: Tensor, attn: Tensor, keep: Tensor, replace: Replace | None) -> Tensor:
        if replace is None:
            out = self.model(input_ids=ids, attention_mask=attn)
        else:
            read, target = (self.hook, None) if self.source is None else (self.source, self.hook)

            def fn(a: Tensor, x: Tensor) -> Tensor:
                # a fresh filter per batch: the same rows in every run, as the hooks'
                # activations upstream of the splice are the clean ones
                rows = TokenFilter(**self.token_filter).keep(keep, {"x": x, "a": a})
                return _splice(a, rows, replace, None if self.source is None else x)

            with spliced(self.model, read, target, fn):
                out = self.model(input_ids=ids, attention_mask=attn)
        return (out.logits if self.causal else out.last_hidden_state).float()

    def _encoder_view(self, h: Tensor, attn: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        return h[keep], pooled_embedding(h, attn)

    def _clean_ref(self, i: int) -> Any:
        """Causal: (clean logits, next-token log-probs), recomputed; encoder: the clean
        (real-token states, embeddings), kept."""
        ids, attn, keep = self.batches[i]
        if self.causal:
            logits = self._forward(ids, attn, keep, None)
            return logits, F.log_softmax(logits[:, :-1], dim=-1)
        if self._clean is None:
            self._clean = [None] * len(self.batches)  # type: ignore[list-item]
        if self._clean[i] is None:
            h = self._forward(ids, attn, keep, None)
            self._clean[i] = self._encoder_view(h, attn, keep)
        return self._clean[i]

    def _sums(self, ref: Any, out: Tensor, ids: Tensor, attn: Tensor, keep: Tensor) -> dict:
        """{loss name: (sum, count)} of one batch of a run against the clean run."""
        if self.causal:
            ref_lp = ref[1]
            lp = F.log_softmax(out[:, :-1], dim=-1)
            valid = attn[:, 1:].bool()
            nll = -lp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            kl = (ref_lp.exp() * (ref_lp - lp)).sum(-1)
            n = int(valid.sum())
            return {"ce": (float(nll[valid].sum()), n), "kl": (float(kl[valid].sum()), n)}
        h_ref, e_ref = ref
        h, e = self._encoder_view(out, attn, keep)
        return {
            "tok_cos": (float(F.cosine_similarity(h, h_ref, dim=-1).sum()), len(h)),
            "tok_mse": (float((h - h_ref).pow(2).sum()), len(h)),
            "emb_cos": (float(F.cosine_similarity(e, e_ref, dim=-1).sum()), len(e)),
        }

    def _measure(self, runs: dict[str, Replace | None]) -> dict[str, float]:
        """Mean losses `{loss}_{run}` of each run (None = clean) over all batches."""
        sums: dict[str, list[float]] = {}
        for i, (ids, attn, keep) in enumerate(self.batches):
            ref = self._clean_ref(i)
            for run, replace in runs.items():
                clean = replace is None and self.causal  # reuse the reference pass
                out = ref[0] if clean else self._forward(ids, attn, keep, replace)
                for loss, (s, n) in self._sums(ref, out, ids, attn, keep).items():
                    acc = sums.setdefault(f"{loss}_{run}", [0.0, 0])
                    acc[0] += s
                    acc[1] += n
        return {k: s / max(n, 1) for k, (s, n) in sums.items()}

    # ------------------------------------------------------------------ public
    def baselines(self) -> dict[str, float]:
        """Mean losses of the clean, zero-ablated and mean-ablated runs (measured once)."""
        if self._base is None:
            mean = self.mean_act.to(self.device)
            runs: dict[str, Replace | None] = {
                "zero": lambda a, _x=None: torch.zeros_like(a),
                "mean": lambda a, _x=None: mean.to(a.dtype).expand_as(a),
            }
            if self.causal:
                runs["clean"] = None
            self._base = self._measure(runs)
            if self.causal:
                self._base["kl_clean"] = 0.0
            else:
                self._base.update(tok_cos_clean=1.0, emb_cos_clean=1.0)
                self._base["tok_mse_clean"] = 0.0
        return self._base

    def measure(self, sae: SparseAutoencoder, error_term: bool = False) -> dict[str, float]:
        """Losses of `sae` spliced in, the baselines, and the scores (module docstring);
        `downstream_score` is ce_score_zero (causal LM) or emb_cos_score_zero (encoder)."""
        if sae.cfg.transcoder and self.source is None:
            raise ConfigError(
                f"this Fidelity reads and replaces {self.hook}; a transcoder reads another "
                "hook: build the Fidelity with source=<its input hook>"
            )
        if not sae.cfg.transcoder and self.source is not None:
            raise ConfigError(
                f"this Fidelity splices a transcoder's output from {self.source} into "
                f"{self.hook}, not an SAE: build one without source for an SAE"
            )
        was_training = sae.training
        sae.eval()
        try:
            result = dict(self.baselines())
            result.update(self._measure({"sae": sae_replacement(sae, error_term)}))
        finally:
            sae.train(was_training)
        losses = ("ce", "kl") if self.causal else ("emb_cos", "tok_cos", "tok_mse")
        for loss in losses:
            as_loss = (lambda v: 1.0 - v) if loss.endswith("_cos") else (lambda v: v)
            for b in BASELINES:
                result[f"{loss}_score_{b}"] = score(
                    as_loss(result[f"{loss}_sae"]),
                    as_loss(result[f"{loss}_{b}"]),
                    as_loss(result[f"{loss}_clean"]),
                )
        headline = "ce_score_zero" if self.causal else "emb_cos_score_zero"
        result["downstream_score"] = result[headline]
        return result

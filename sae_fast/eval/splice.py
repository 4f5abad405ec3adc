"""Downstream fidelity: splice an SAE's reconstruction into the model and score the damage.

At the SAE's hook, the activation of every real token (not padding, not special tokens such
as [CLS]/[SEP], which the SAE never saw in training) is replaced by

    sae        x̂ = SAE(x)                  (with `error_term`: x̂ + (x - x̂), a check that
                                             splicing itself leaves the model unchanged)
    zero       0                            (zero ablation)
    mean       μ, the mean activation over the evaluation set (mean ablation)

and the rest of the forward pass runs as usual. Each run is scored by a loss L against the
clean run, and each baseline b ∈ {zero, mean} gives a score

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

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.activations import is_causal_lm, pad_windows, pooled_embedding
from ..data.hooks import patch
from ..sae import SparseAutoencoder

Replace = Callable[[Tensor], Tensor]
BASELINES = ("zero", "mean")


def score(loss_run: float, loss_baseline: float, loss_clean: float) -> float:
    """(L_b - L_run) / (L_b - L_clean): 1 = no loss, 0 = as bad as the baseline."""
    denom = loss_baseline - loss_clean
    return (loss_baseline - loss_run) / denom if denom != 0 else float("nan")


def sae_replacement(sae: SparseAutoencoder, error_term: bool = False) -> Replace:
    """x -> SAE reconstruction of x (rows `[n, d_in]`, any dtype); with `error_term`,
    x̂ + (x - x̂)."""

    @torch.no_grad()
    def replace(x: Tensor) -> Tensor:
        xs = x.to(device=sae.device, dtype=sae.dtype)
        recon = sae(xs).reconstruction
        if error_term:
            recon = recon + (xs - recon)
        return recon.to(device=x.device, dtype=x.dtype)

    return replace


def _splice(act: Tensor, keep: Tensor, replace: Replace) -> Tensor:
    if act.shape[:2] != keep.shape:
        raise RuntimeError(
            f"hook activation has shape {tuple(act.shape)}, expected [batch, seq] = "
            f"{tuple(keep.shape)} leading dims"
        )
    out = act.clone()
    out[keep] = replace(act[keep]).to(act.dtype)
    return out


class Fidelity:
    """Downstream fidelity of SAEs at `hook` of `model`, on fixed token windows.

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
    ) -> None:
        if not windows:
            raise ValueError("no token windows to evaluate on")
        self.model = model
        self.hook = hook
        self.causal = is_causal_lm(model)
        self.device = next(model.parameters()).device
        self.batches = [
            tuple(t.to(self.device) for t in pad_windows(tokenizer, windows[i : i + batch_size]))
            for i in range(0, len(windows), batch_size)
        ]
        self.mean_act = mean_act.detach().float()
        self._clean: list[tuple[Tensor, Tensor]] | None = None  # encoder: (h_real, emb)
        self._base: dict[str, float] | None = None

    # ------------------------------------------------------------------ forward passes
    @torch.no_grad()
    def _forward(self, ids: Tensor, attn: Tensor, keep: Tensor, replace: Replace | None) -> Tensor:
        if replace is None:
            out = self.model(input_ids=ids, attention_mask=attn)
        else:
            with patch(self.model, self.hook, lambda a: _splice(a, keep, replace)):
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
                "zero": lambda a: torch.zeros_like(a),
                "mean": lambda a: mean.to(a.dtype).expand_as(a),
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

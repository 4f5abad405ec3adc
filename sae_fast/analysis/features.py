"""Per-feature data for inspection, gathered in one streaming pass over a corpus.

For every feature, `FeatureCollector` keeps, batch by batch and in memory bounded by
d_sae x (n_top + n_samples) contexts:

- the `n_top` strongest activations (a per-feature top-N, ties to the earlier token);
- a uniform random sample of `n_samples` activations (priority sampling with seeded keys),
  from which `quantile_examples` picks examples spread over the activation distribution;
- for each kept example, the feature's activation on every token of its context
  (`width` tokens either side), read from the same batch's sparse codes;
- counts (density), sums (mean), the maximum, and a histogram over half-decade-spaced
  log10 activation bins.

`token_effects` gives, for models with an unembedding W_U, each feature's direct effect on
the logits, W_dec[f] @ W_U^T: the most boosted and most suppressed tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..data.activations import ActivationBatch, iter_activations
from ..data.filters import TokenFilter
from ..sae import SparseAutoencoder

# Activation histogram: log10 bins from 1e-3 to 1e3, a quarter decade each (clamped ends).
ACT_EDGES = tuple(x / 4 for x in range(-12, 13))


@dataclass
class Example:
    """One kept activation: where it is, and the feature's activation over its context."""

    value: float
    window: int
    position: int
    context_acts: list[float]  # positions position-width .. position+width (0 off-window)

    def span(self, windows, width: int) -> tuple[list[int], list[float], int]:
        """The context cut to its window's ends: token ids, the feature's activation on each,
        and the index of the kept token among them (`width` is the report's)."""
        window = windows[self.window]
        lo, hi = max(0, self.position - width), min(len(window), self.position + width + 1)
        off = lo - (self.position - width)
        return list(window[lo:hi]), list(self.context_acts[off : off + hi - lo]), self.position - lo


@dataclass
class FeatureReport:
    """The collector's result for all features (tensors indexed by feature id)."""

    n_tokens: int
    width: int
    counts: Tensor  # [d_sae] int64
    sums: Tensor  # [d_sae] float64
    maxima: Tensor  # [d_sae]
    hist: Tensor  # [d_sae, len(ACT_EDGES) - 1] int64
    top: dict[str, Tensor]  # key [F, N] (= value), window, position [F, N], ctx [F, N, C]
    sample: dict[str, Tensor]  # key [F, R] (random), value, window, position, ctx
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def density(self) -> Tensor:
        """Share of tokens each feature fires on, `[d_sae]` float64."""
        return self.counts.double() / max(self.n_tokens, 1)

    @property
    def mean_act(self) -> Tensor:
        """Mean activation over the tokens each feature fires on (0 if it never fires)."""
        return self.sums / self.counts.clamp_min(1).double()

    def top_examples(self, f: int) -> list[Example]:
        """Feature `f`'s strongest activations, strongest first."""
        return _examples(self.top, f, value_key="key")

    def sample_examples(self, f: int) -> list[Example]:
        """Feature `f`'s uniformly sampled activations, in their random order."""
        return _examples(self.sample, f, value_key="value")

    def quantile_examples(self, f: int, n: int = 5) -> list[Example]:
        """`n` sampled activations of `f` at evenly spread quantiles (10%..90%) of its
        sampled activation distribution, weakest first; fewer if it fired less often."""
        got = self.sample_examples(f)
        got.sort(key=lambda e: (e.value, e.window, e.position))
        if len(got) <= n:
            return got
        idx = sorted({round((0.1 + 0.8 * i / max(n - 1, 1)) * (len(got) - 1)) for i in range(n)})
        return [got[i] for i in idx]


def _examples(state: dict[str, Tensor], f: int, value_key: str) -> list[Example]:
    keys = state["key"][f]
    out = []
    for j in range(keys.shape[0]):
        if not torch.isfinite(keys[j]):
            continue
        out.append(
            Example(
                float(state[value_key][f, j]),
                int(state["window"][f, j]),
                int(state["position"][f, j]),
                state["ctx"][f, j].tolist(),
            )
        )
    return out


class FeatureCollector:
    """Streaming per-feature statistics and examples (module docstring); feed it batches
    of complete windows with `update`, then call `report`."""

    def __init__(
        self, d_sae: int, n_top: int = 10, n_samples: int = 16, width: int = 12, seed: int = 0
    ) -> None:
        self.d_sae, self.width = d_sae, width
        ctx = 2 * width + 1
        self.n_tokens = 0
        self.counts = torch.zeros(d_sae, dtype=torch.int64)
        self.sums = torch.zeros(d_sae, dtype=torch.float64)
        self.maxima = torch.zeros(d_sae)
        self.hist = torch.zeros(d_sae, len(ACT_EDGES) - 1, dtype=torch.int64)
        self.gen = torch.Generator().manual_seed(seed)

        def slots(n: int) -> dict[str, Tensor]:
            return {
                "key": torch.full((d_sae, n), -torch.inf),
                "value": torch.zeros(d_sae, n),
                "window": torch.full((d_sae, n), -1, dtype=torch.int64),
                "position": torch.full((d_sae, n), -1, dtype=torch.int64),
                "ctx": torch.zeros(d_sae, n, ctx),
            }

        self.top, self.sample = slots(n_top), slots(n_samples)

    @torch.no_grad()
    def update(self, values: Tensor, indices: Tensor, window: Tensor, position: Tensor) -> None:
        """Add a batch: sparse codes `[n, k]` of n tokens from complete windows, and each
        token's window id and position `[n]`."""
        values, indices = values.float().cpu(), indices.cpu()
        window, position = window.cpu(), position.cpu()
        n = values.shape[0]
        self.n_tokens += n
        on = values > 0
        rows = torch.arange(n).unsqueeze(1).expand_as(values)[on]
        f, v = indices[on], values[on]
        self.counts += torch.bincount(f, minlength=self.d_sae)
        self.sums.index_add_(0, f, v.double())
        self.maxima.scatter_reduce_(0, f, v, reduce="amax")
        nb = self.hist.shape[1]
        b = ((v.log10() - ACT_EDGES[0]) * 4).floor().long().clamp(0, nb - 1)
        self.hist += torch.bincount(f * nb + b, minlength=self.d_sae * nb).view(self.d_sae, nb)
        lookup = _row_lookup(window, position)
        batch = (values, indices, window, position, lookup)
        self._merge(self.top, f, v, v, rows, batch)
        keys = torch.rand(len(f), generator=self.gen)
        self._merge(self.sample, f, keys, v, rows, batch)

    def _merge(self, state, f: Tensor, key: Tensor, v: Tensor, rows: Tensor, batch) -> None:
        n_keep = state["key"].shape[1]
        if n_keep == 0 or len(f) == 0:
            return
        ok = key > state["key"][f, -1]  # cannot enter a full top-N otherwise
        f, key, v, rows = f[ok], key[ok], v[ok], rows[ok]
        if len(f) == 0:
            return
        order = torch.argsort(key, descending=True, stable=True)
        order = order[torch.argsort(f[order], stable=True)]  # by feature, key desc
        fs = f[order]
        feats, counts = torch.unique_consecutive(fs, return_counts=True)
        starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        rank = torch.arange(len(fs)) - starts
        sel = order[rank < n_keep]
        f, key, v, rows = f[sel], key[sel], v[sel], rows[sel]
        rank = rank[rank < n_keep]
        values, indices, window, position, lookup = batch
        cand = {
            "key": key,
            "value": v,
            "window": window[rows],
            "position": position[rows],
            "ctx": _context_acts(values, indices, window, position, lookup, f, rows, self.width),
        }
        slot = torch.searchsorted(feats, f)
        merged_key = torch.full((len(feats), 2 * n_keep), -torch.inf)
        merged_key[:, :n_keep] = state["key"][feats]
        merged_key[slot, n_keep + rank] = key
        pick = torch.argsort(merged_key, dim=1, descending=True, stable=True)[:, :n_keep]
        for name, cur in state.items():
            m = cur.new_zeros((len(feats), 2 * n_keep, *cur.shape[2:]))
            m[:, :n_keep] = cur[feats]
            m[slot, n_keep + rank] = cand[name].to(cur.dtype)
            idx = pick.view(*pick.shape, *([1] * (cur.dim() - 2))).expand(-1, -1, *cur.shape[2:])
            cur[feats] = torch.gather(m, 1, idx)

    def report(self) -> FeatureReport:
        """The statistics and examples so far."""
        return FeatureReport(
            self.n_tokens,
            self.width,
            self.counts.clone(),
            self.sums.clone(),
            self.maxima.clone(),
            self.hist.clone(),
            {k: t.clone() for k, t in self.top.items()},
            {k: t.clone() for k, t in self.sample.items()},
        )


def _row_lookup(window: Tensor, position: Tensor) -> tuple[int, Tensor]:
    """(first window id, table [windows, max position + 1] of row index or -1)."""
    w0 = int(window.min())
    table = torch.full((int(window.max()) - w0 + 1, int(position.max()) + 1), -1)
    table[window - w0, position] = torch.arange(len(window))
    return w0, table


def _context_acts(values, indices, window, position, lookup, f, rows, width, chunk=2048):
    """`[m, 2*width+1]`: feature f[i]'s activation around token rows[i] (0 where no token)."""
    w0, table = lookup
    offsets = torch.arange(-width, width + 1)
    out = torch.zeros(len(f), len(offsets))
    for c0 in range(0, len(f), chunk):
        fc, rc = f[c0 : c0 + chunk], rows[c0 : c0 + chunk]
        pos = position[rc].unsqueeze(1) + offsets  # [m, C]
        inside = (pos >= 0) & (pos < table.shape[1])
        r = table[(window[rc] - w0).unsqueeze(1), pos.clamp(0, table.shape[1] - 1)]
        r = torch.where(inside, r, -1)
        valid = r >= 0
        rr = r.clamp_min(0)
        hit = indices[rr] == fc.view(-1, 1, 1)  # [m, C, k]
        acts = (values[rr] * hit).sum(-1).clamp_min(0)
        out[c0 : c0 + chunk] = torch.where(valid, acts, 0.0)
    return out


@torch.no_grad()
def feature_report(
    sae: SparseAutoencoder,
    batches: Iterable[ActivationBatch],
    n_top: int = 10,
    n_samples: int = 16,
    width: int = 12,
    seed: int = 0,
) -> FeatureReport:
    """One pass over activation batches (best each holding whole windows, so that contexts
    are complete): the SAE's codes into a FeatureCollector."""
    coll = FeatureCollector(sae.d_sae, n_top, n_samples, width, seed)
    was_training = sae.training
    sae.eval()
    try:
        for batch in batches:
            vals, idx = sae.encode_sparse(batch.acts.to(device=sae.device, dtype=sae.dtype))
            coll.update(vals, idx, batch.window, batch.position)
    finally:
        sae.train(was_training)
    return coll.report()


def collect_features(
    sae: SparseAutoencoder,
    model: nn.Module,
    tokenizer: Any,
    windows: list[list[int]],
    hook: str,
    n_top: int = 10,
    n_samples: int = 16,
    width: int = 12,
    batch_size: int = 32,
    seed: int = 0,
) -> FeatureReport:
    """One pass over `windows`: activations at `hook` straight into `feature_report`."""
    keep = TokenFilter(**(sae.cfg.metadata.get("token_filter") or {}))  # what training saw
    batches = iter_activations(model, tokenizer, windows, hook, batch_size, keep=keep)
    return feature_report(sae, batches, n_top, n_samples, width, seed)


@dataclass
class NextTokenFeature:
    """A feature whose top contexts agree on what comes next: `token_id` follows `share` of
    them. Such a feature predicts a token, so steering it should make the model say it."""

    feature: int
    token_id: int
    share: float
    density: float


def next_token_features(
    report: FeatureReport,
    windows: list[list[int]],
    min_density: float = 1e-3,
    max_density: float = 5e-2,
) -> list[NextTokenFeature]:
    """Features firing on `min_density`..`max_density` of tokens, ranked by how often their
    top contexts (report.top) are followed by one same token, then by density."""
    out = []
    density = report.density
    live = ((density >= min_density) & (density <= max_density)).nonzero(as_tuple=True)[0]
    for f in live.tolist():
        nxt = [
            windows[ex.window][ex.position + 1]
            for ex in report.top_examples(f)
            if ex.position + 1 < len(windows[ex.window])
        ]
        if len(nxt) < 3:
            continue
        token, n = max(((t, nxt.count(t)) for t in set(nxt)), key=lambda tn: (tn[1], -tn[0]))
        out.append(NextTokenFeature(f, token, n / len(nxt), float(density[f])))
    out.sort(key=lambda c: (-c.share, -c.density, c.feature))
    return out


@torch.no_grad()
def token_effects(
    sae: SparseAutoencoder,
    model: nn.Module,
    k: int = 10,
    chunk: int = 512,
    features: list[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Direct logit effects W_dec @ W_U^T: (top-k boosted ids, their values, top-k suppressed
    ids, their values), each `[d_sae, k]` (or `[len(features), k]` for those features only);
    None for models without an unembedding, or one whose width is not the decoder's (d_out:
    a transcoder writes its target hook)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None or getattr(head, "weight", None) is None:
        return None
    W_U = head.weight.detach().float().cpu()  # [V, d]
    if W_U.shape[1] != sae.d_out:
        return None
    k = min(k, W_U.shape[0])
    parts: list[list[Tensor]] = [[], [], [], []]
    W_dec = sae.W_dec.detach().float().cpu()
    if features is not None:
        W_dec = W_dec[torch.tensor(features, dtype=torch.long)]
    for f0 in range(0, W_dec.shape[0], chunk):
        eff = W_dec[f0 : f0 + chunk] @ W_U.T  # [c, V]
        hi = torch.topk(eff, k, dim=1)
        lo = torch.topk(eff, k, dim=1, largest=False)
        for store, t in zip(parts, (hi.indices, hi.values, lo.indices, lo.values), strict=True):
            store.append(t)
    return tuple(torch.cat(p) for p in parts)  # type: ignore[return-value]

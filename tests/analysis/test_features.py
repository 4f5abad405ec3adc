"""The streaming feature collector against a brute-force pass over the same codes."""

from __future__ import annotations

import pytest
import torch

from sae_fast.analysis.features import ACT_EDGES, FeatureCollector


def _random_stream(seed=0, n_windows=9, d_sae=13, k=3):
    """Batches of complete windows with random sparse codes (ties and zeros included)."""
    g = torch.Generator().manual_seed(seed)
    batches, w = [], 0
    for n_w in (4, 2, 3):
        lens = torch.randint(3, 9, (n_w,), generator=g).tolist()
        window = torch.cat([torch.full((n,), w + i) for i, n in enumerate(lens)])
        position = torch.cat([torch.arange(1, n + 1) for n in lens])  # position 0: [CLS]
        w += n_w
        n = len(window)
        idx = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(n)])
        vals = torch.randint(0, 5, (n, k), generator=g).float() / 2  # many ties and zeros
        batches.append((vals, idx, window, position))
    return batches, d_sae


def _dense(batches, d_sae):
    acts = []
    meta = []
    for vals, idx, window, position in batches:
        acts.append(torch.zeros(len(window), d_sae).scatter_add_(1, idx, vals))
        meta += list(zip(window.tolist(), position.tolist(), strict=True))
    return torch.cat(acts), meta


@pytest.mark.parametrize("n_top", [1, 4])
def test_top_examples_counts_and_contexts_match_brute_force(n_top):
    batches, d_sae = _random_stream()
    coll = FeatureCollector(d_sae, n_top=n_top, n_samples=5, width=2, seed=3)
    for b in batches:
        coll.update(*b)
    rep = coll.report()
    acts, meta = _dense(batches, d_sae)
    where = {m: r for r, m in enumerate(meta)}
    assert rep.n_tokens == len(meta)
    torch.testing.assert_close(rep.counts, (acts > 0).sum(0))
    torch.testing.assert_close(rep.maxima, acts.max(0).values)
    torch.testing.assert_close(rep.sums, acts.double().sum(0))
    assert int(rep.hist.sum()) == int((acts > 0).sum())
    for f in range(d_sae):
        col = acts[:, f]
        # strongest first; among equal values the earlier token wins
        order = sorted(range(len(col)), key=lambda r: (-float(col[r]), r))
        want = [(float(col[r]), *meta[r]) for r in order if col[r] > 0][:n_top]
        got = rep.top_examples(f)
        assert [(e.value, e.window, e.position) for e in got] == want, f
        for e in got + rep.quantile_examples(f, 3):
            ctx = [
                float(acts[where[(e.window, p)], f]) if (e.window, p) in where else 0.0
                for p in range(e.position - 2, e.position + 3)
            ]
            assert e.context_acts == ctx
            assert float(col[where[(e.window, e.position)]]) == e.value > 0
        sampled = {(e.window, e.position) for e in rep.quantile_examples(f, 100)}
        assert len(sampled) == min(5, int((col > 0).sum()))


def test_sampling_is_seeded_and_histogram_bins_by_log10():
    batches, d_sae = _random_stream(seed=1)

    def run(seed):
        c = FeatureCollector(d_sae, n_top=2, n_samples=3, width=1, seed=seed)
        for b in batches:
            c.update(*b)
        return c.report().sample["window"]

    assert torch.equal(run(7), run(7))
    c = FeatureCollector(2, n_top=1, n_samples=1, width=0)
    vals = torch.tensor([[1e-5], [0.5], [1.0], [2e4]])
    c.update(vals, torch.zeros(4, 1, dtype=torch.long), torch.arange(4), torch.ones(4).long())
    h = c.report().hist[0]
    centre = ACT_EDGES.index(0.0)
    assert h[0] == 1 and h[-1] == 1  # clamped ends
    assert h[centre] == 1 and h[centre - 2] == 1  # 1.0 in [0, .25); 0.5 in [-.5, -.25)

"""`TokenFilter`: position 0 and norm outliers (attention sinks) dropped and counted, its
state a JSON round trip, on by default for causal LMs only."""

from __future__ import annotations

import json

import pytest
import torch

from sae_fast import ConfigError
from sae_fast.data.filters import DEFAULT_CAUSAL_RATIO, TokenFilter


def _acts(B=4, T=6, d=8, sink=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, T, d, generator=g)
    if sink is not None:
        a[sink] *= 500.0  # an attention sink: hundreds of times the usual norm
    return a


def test_drop_first_drops_position_zero_of_real_tokens_and_counts_it():
    keep = torch.ones(4, 6, dtype=torch.bool)
    keep[1, 0] = False  # a special token there already
    f = TokenFilter(drop_first=True)
    out = f.keep(keep, {"h": _acts()})
    assert not out[:, 0].any() and out[:, 1:].all()
    assert f.counts() == {
        "tokens_kept": 20,
        "dropped_first_position": 3,
        "dropped_norm_outliers": 0,
    }


def test_norm_outliers_at_any_hook_are_dropped_against_the_running_median():
    keep = torch.ones(4, 6, dtype=torch.bool)
    f = TokenFilter(max_norm_ratio=10.0)
    out = f.keep(keep, {"a": _acts(sink=(2, 3)), "b": _acts(seed=1, sink=(0, 5))})
    dropped = (~out).nonzero().tolist()
    assert dropped == [[0, 5], [2, 3]]  # each hook's sink drops the token at every hook
    assert f.dropped_outliers == 2 and f.kept == 22
    # the running median is of the batch medians so far, per hook
    assert len(f.medians["a"]) == 1 and f.medians["a"][0] == pytest.approx(
        float(_acts(sink=(2, 3)).norm(dim=-1).median()), rel=1e-6
    )
    for i in range(100):
        f.keep(keep, {"a": _acts(seed=10 + i), "b": _acts(seed=200 + i)})
    assert len(f.medians["a"]) == f.history  # bounded history


def test_state_round_trips_through_json_and_continues_identically():
    keep = torch.ones(4, 6, dtype=torch.bool)
    a = TokenFilter(drop_first=True, max_norm_ratio=5.0)
    a.keep(keep, {"h": _acts(sink=(1, 2))})
    b = TokenFilter.from_state(json.loads(json.dumps(a.state())))
    nxt = {"h": _acts(seed=3, sink=(3, 4))}
    assert torch.equal(a.keep(keep, nxt), b.keep(keep, nxt))
    assert a.state() == b.state()


def test_defaults_are_on_for_causal_lms_only_and_bad_settings_are_refused():
    causal = TokenFilter.for_model(True)
    assert causal.drop_first and causal.max_norm_ratio == DEFAULT_CAUSAL_RATIO
    plain = TokenFilter.for_model(False)
    assert not plain.drop_first and plain.max_norm_ratio is None
    assert TokenFilter.for_model(True, "off", 0.0).state()["max_norm_ratio"] is None
    assert TokenFilter.for_model(False, "on", 4.0).drop_first
    with pytest.raises(ConfigError, match="drop_first must be auto, on or off"):
        TokenFilter.for_model(True, "yes")
    with pytest.raises(ConfigError, match="max_norm_ratio must be a number > 1"):
        TokenFilter.for_model(True, "auto", 0.5)

"""Silent-latent revival (sae_fast/training/revive.py): which biases move, by how much, and
that a run with it keeps more latents firing."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from sae_fast import ConfigError, SparseAutoencoder, TrainConfig
from sae_fast.ops import reference as ref
from sae_fast.training import distributed
from sae_fast.training.revive import MARGIN, revive_silent
from sae_fast.training.sharded import Shard
from sae_fast.training.trainer import Trainer, collect
from tests.helpers import SMALL_TRAIN

os.environ.setdefault("HF_HUB_OFFLINE", "1")
D_IN, D_SAE, K, B = 16, 64, 4, 50


def _setup(silent: list[int], rows: int = 4, window: int = 100, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(D_IN, D_SAE, activation="topk", k=K, backend="torch")
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g) * 0.1)
        sae.b_enc[silent] = -50.0  # never selected
    x = torch.randn(B, D_IN, generator=g)
    since = torch.zeros(D_SAE, dtype=torch.int64)
    since[silent] = window
    cfg = SimpleNamespace(k=K, revive_after_tokens=window, revive_rows=rows)
    run = SimpleNamespace(cfg=cfg, sae=sae, shard=Shard.whole(D_SAE), since_fired=since)
    return run, x


def _selected_rows(sae: SparseAutoencoder, x: torch.Tensor, f: int) -> int:
    pre = ref.pre_activations(x, sae.W_enc, sae.b_enc, sae.b_dec)
    values, indices = ref.topk_act(pre, K)
    return int(((indices == f) & (values > 0)).any(1).sum())


@pytest.mark.parametrize("rows", [1, 4, 7])
def test_a_silent_latent_would_fire_on_exactly_its_best_rows(rows):
    run, x = _setup([11], rows=rows)
    sae = run.sae
    before = sae.b_enc.detach().clone()
    out = sae(x)
    assert _selected_rows(sae, x, 11) == 0
    # by hand: the rows' thresholds (k-th value, ReLU'd) and the latent's margins
    pre = ref.pre_activations(x, sae.W_enc, sae.b_enc, sae.b_dec)
    kth = pre.topk(K, dim=1).values[:, -1].clamp_min(0)
    want = MARGIN - (pre[:, 11] - kth).topk(rows).values[-1]

    assert revive_silent(run, x, out, distributed.Group()) == 1
    assert torch.equal(sae.b_enc[torch.arange(D_SAE) != 11], before[torch.arange(D_SAE) != 11])
    torch.testing.assert_close(sae.b_enc[11] - before[11], want)
    assert _selected_rows(sae, x, 11) == rows


def test_only_latents_below_the_bar_move_and_off_means_off():
    run, x = _setup([5, 20])
    sae = run.sae
    out = sae(x)
    busy = int(out.indices.flatten().mode().values)  # selected on many rows already
    run.since_fired[busy] = run.cfg.revive_after_tokens  # silent by the count, not in fact
    before = sae.b_enc.detach().clone()

    run.cfg.revive_after_tokens = 0
    assert revive_silent(run, x, out, distributed.Group()) == 0
    assert torch.equal(sae.b_enc, before)

    run.cfg.revive_after_tokens = 100
    assert revive_silent(run, x, out, distributed.Group()) == 2  # 5 and 20, not `busy`
    moved = (sae.b_enc != before).nonzero().flatten().tolist()
    assert moved == [5, 20]
    for f in (5, 20):  # each alone would clear 4 rows; together they may share some
        assert _selected_rows(sae, x, f) >= 1


def test_replica_topk_on_one_replica():
    t = torch.tensor([[1.0, 5.0], [3.0, 2.0], [2.0, 4.0]])
    got = distributed.replica_topk(t, 2, distributed.Group())
    assert torch.equal(got, torch.tensor([[3.0, 5.0], [2.0, 4.0]]))
    assert distributed.replica_topk(t, 9, distributed.Group()).shape == (3, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(revive_rows=0), "revive_rows"),
        (dict(revive_after_tokens=-1), "revive_after_tokens"),
        (dict(revive_after_tokens=1.5), "revive_after_tokens"),
    ],
)
def test_bad_revive_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_a_run_with_revival_keeps_more_latents_firing(tmp_path):
    base = dict(SMALL_TRAIN, d_sae=3072, steps=12, dead_after_tokens=1024, log_every=1)
    data = collect(TrainConfig(**base))
    dead = {}
    for window in (0, 512):
        cfg = TrainConfig(**base, revive_after_tokens=window, out=str(tmp_path / str(window)))
        trainer = Trainer(cfg, data)
        logs = [trainer.train_step() for _ in range(12)]
        dead[window] = logs[-1]["dead_pct"]
        revived = [log["revived"] for log in logs]
        if window:
            assert revived[0] == 0 and max(revived) > 0  # silent for 512 tokens: 2 steps
        else:
            assert max(revived) == 0
    assert dead[512] < 0.5 * dead[0], dead  # 3072 latents, k=8, 3000 tokens: many starve


def test_the_window_is_a_number_of_firing_intervals_that_grows_with_the_run_unless_given():
    from sae_fast.training.recipe import REVIVE_MIN_FIRES, REVIVE_RUN_TOKENS, revive_window

    long = TrainConfig(steps=2000, batch_size=1024, k=32)  # 2,048,000 tokens: 166.7 intervals
    assert revive_window(long, 3072) == 2000 * 1024 * 96 // REVIVE_RUN_TOKENS  # 16,000 tokens
    assert revive_window(long, 12288) == 2000 * 1024 * 384 // REVIVE_RUN_TOKENS  # 64,000: 32x
    short = TrainConfig(steps=125, batch_size=4096, k=32)  # 512,000 tokens: the floor
    assert revive_window(short, 3072) == REVIVE_MIN_FIRES * 96  # 4,032: 8x of MiniLM
    assert revive_window(short, 12288) == REVIVE_MIN_FIRES * 384  # 16,128: 32x
    # a larger k fires each latent more often: a shorter window
    k64 = TrainConfig(steps=125, batch_size=4096, k=64)
    assert revive_window(k64, 12288) == REVIVE_MIN_FIRES * 192
    assert revive_window(TrainConfig(steps=2000, batch_size=1024, k=64), 12288) == 32_000
    off = TrainConfig(steps=2000, batch_size=1024, revive_after_tokens=0)
    assert revive_window(off, 3072) == 0
    assert revive_window(TrainConfig(steps=10, revive_after_tokens=777), 3072) == 777


def test_chunks_of_silent_latents_give_the_same_raise(monkeypatch):
    from sae_fast.training import revive

    silent = list(range(0, D_SAE, 3))
    raised = []
    for chunk in (1 << 24, 2 * B, B):  # all at once, 2 latents and 1 latent a chunk
        monkeypatch.setattr(revive, "CHUNK_ELEMENTS", chunk)
        run, x = _setup(silent)
        before = run.sae.b_enc.detach().clone()
        assert revive_silent(run, x, run.sae(x), distributed.Group()) == len(silent)
        raised.append(run.sae.b_enc.detach() - before)
    assert torch.equal(raised[0], raised[1]) and torch.equal(raised[0], raised[2])


def test_auxk_starts_after_42_firing_intervals_unless_given():
    from sae_fast.training.recipe import REVIVE_MIN_FIRES, auxk_window, revive_window

    long = TrainConfig(steps=2000, batch_size=1024, k=32)  # revival after 64,000 at 32x
    assert REVIVE_MIN_FIRES == 42
    assert auxk_window(long, 12288, revives=True) == 42 * 384  # 16,128 tokens at 32x
    assert auxk_window(long, 3072, revives=True) == 42 * 96  # 4,032 at 8x (revival: 16,000)
    short = TrainConfig(steps=125, batch_size=4096, k=32)  # a short run: revival's own floor
    assert auxk_window(short, 3072, revives=True) == revive_window(short, 3072) == 4032
    # at most the revival window and dead_after_tokens
    quick = TrainConfig(steps=2000, revive_after_tokens=1000)
    assert auxk_window(quick, 12288, revives=True) == 1000
    assert auxk_window(TrainConfig(steps=2000, dead_after_tokens=5000), 12288, True) == 5000
    # without revival (off, or an architecture without it): dead_after_tokens
    off = TrainConfig(steps=2000, revive_after_tokens=0)
    assert auxk_window(off, 12288, revives=True) == off.dead_after_tokens
    assert auxk_window(long, 12288, revives=False) == long.dead_after_tokens
    given = TrainConfig(steps=2000, auxk_after_tokens=777)
    assert auxk_window(given, 12288, revives=True) == 777


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_auxk_window_is_refused(bad):
    with pytest.raises(ConfigError, match="auxk_after_tokens"):
        TrainConfig(auxk_after_tokens=bad)


def test_auxk_trains_latents_silent_for_its_own_window(tmp_path):
    base = dict(SMALL_TRAIN, d_sae=3072, steps=6, dead_after_tokens=10**6, log_every=1)
    data = collect(TrainConfig(**base))
    auxk = {}
    for name, extra in (("default", {}), ("late", dict(auxk_after_tokens=10**6))):
        cfg = TrainConfig(**base, **extra, revive_after_tokens=1024, out=str(tmp_path / name))
        trainer = Trainer(cfg, data)
        auxk[name] = [trainer.train_step()["auxk"] for _ in range(6)]
    # 3072 latents, k=8, 256-token steps: many silent for 1,024 tokens (the revival window)
    assert auxk["default"][0] == 0 and max(auxk["default"]) > 0, auxk
    assert max(auxk["late"]) == 0, auxk

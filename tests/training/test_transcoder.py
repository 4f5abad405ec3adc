"""Transcoders in training: (input, target) pairs from one forward pass, through the cache,
the trainer (its own target scale, folded on save), checkpoints, and data-parallel and
feature-sharded runs equal to one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sae_fast import ConfigError, SparseAutoencoder, TrainConfig
from sae_fast.data.activations import ActivationBatch
from sae_fast.data.store import read_cache
from sae_fast.training.trainer import Trainer, collect, train
from tests.helpers import assert_close
from tests.training.ranks import BASE, assert_same_sae, spawn
from tests.training.test_distributed import train_ranks

PAIR = dict(hook="layers.1.mlp_in", target_hook="layers.1.mlp_out")


@pytest.fixture(scope="module")
def pair_cache(tmp_path_factory) -> str:
    """A cache of MiniLM's layer-1 MLP (input, output) pairs for the parallel tests' run."""
    path = tmp_path_factory.mktemp("pairs") / "cache"
    collect(TrainConfig(**BASE, **PAIR, cache=str(path)))
    return str(path)


def _pairs(rows: int = 768, d_in: int = 12, d_out: int = 9) -> ActivationBatch:
    """x, and y = a sparse code of x decoded to another width, plus a linear part."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d_in, generator=g)
    enc, dec = torch.randn(d_in, 24, generator=g), torch.randn(24, d_out, generator=g)
    code = torch.relu(x @ enc - 1.5)
    y = code @ dec + 0.5 * x @ torch.randn(d_in, d_out, generator=g) + 3.0
    zeros = torch.zeros(rows, dtype=torch.int64)
    return ActivationBatch(x, zeros, zeros, torch.arange(rows), target=7.0 * y)


def _trainer(tmp_path, **cfg) -> Trainer:
    base = dict(d_sae=48, k=4, batch_size=128, steps=60, progress=False, out=str(tmp_path))
    return Trainer(TrainConfig(**{**base, **PAIR, **cfg}), (_pairs(), [], None))


@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_learns_the_target_and_the_saved_one_reads_raw_activations(tmp_path, skip):
    trainer = _trainer(tmp_path, skip=skip, steps=200, lr=3e-3, warmup_tokens=5 * 128)
    sae = trainer.sae
    assert sae.cfg.transcoder and (sae.d_in, sae.d_out) == (12, 9)
    assert (sae.W_skip is not None) == skip
    assert trainer.target_scale != trainer.scale  # each side has its own scale
    first = trainer.train_step()["fvu"]
    result = trainer.run()
    assert result.metrics["fvu"] < 0.2 * first
    # the saved transcoder maps raw x to raw y as the trained one maps scaled x to scaled y
    data = _pairs()
    x, y = data.acts[:200], data.target[:200]
    with torch.no_grad():
        scaled = trainer.sae(x * trainer.scale).reconstruction / trainer.target_scale
        raw = result.sae(x).reconstruction
    assert_close(raw, scaled, "folded", rtol=1e-4, atol=1e-4)
    fvu = float((raw - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert fvu < 0.4
    back = SparseAutoencoder.load(result.sae_dir)
    assert back.cfg.target_hook_name == PAIR["target_hook"] and back.cfg.skip == skip
    assert torch.equal(back(x).reconstruction, raw)
    cfg = json.loads((result.sae_dir / "cfg.json").read_text())
    assert cfg["architecture"] == ("topk_skip_transcoder" if skip else "topk_transcoder")
    assert cfg["d_out"] == 9 and cfg["apply_b_dec_to_input"] is False


def test_the_skip_term_learns_and_the_loss_is_the_output_error(tmp_path):
    trainer = _trainer(tmp_path, skip=True, steps=2)
    x = _pairs().acts[:128] * trainer.scale
    y = _pairs().target[:128] * trainer.target_scale
    with torch.no_grad():
        trainer.sae.W_skip.normal_(0, 0.1)
    _, logs, _, _ = trainer._loss(x, y)
    with torch.no_grad():
        y_hat = trainer.sae(x).reconstruction
    assert logs["mse"] == pytest.approx(float((y_hat - y).pow(2).sum(-1).mean()), rel=1e-5)
    assert logs["fvu"] == pytest.approx(
        float((y_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()), rel=1e-5
    )
    before = trainer.sae.W_skip.detach().clone()
    trainer.train_step()
    assert not torch.equal(trainer.sae.W_skip.detach(), before)


def test_auxk_predicts_the_target_residual(tmp_path):
    # every latent dead from the start: the AuxK term must be > 0 and depend on the target
    trainer = _trainer(tmp_path, dead_after_tokens=1, auxk_coefficient=1.0, steps=3)
    trainer.since_fired.fill_(10)
    x = _pairs().acts[:64] * trainer.scale
    y = _pairs().target[:64] * trainer.target_scale
    _, terms = trainer.sae.arch.train_terms(trainer, x, y)
    _, shifted = trainer.sae.arch.train_terms(trainer, x, y + 1.0)
    assert terms["auxk"] > 0 and not torch.equal(terms["auxk"], shifted["auxk"])


def test_config_errors_name_the_transcoder_fields():
    with pytest.raises(ConfigError, match="target_hook is the input hook"):
        TrainConfig(hook="layers.1.mlp_out", target_hook="layers.1.mlp_out")
    with pytest.raises(ConfigError, match="give --target-hook"):
        TrainConfig(skip=True)
    with pytest.raises(ConfigError, match="only a transcoder"):
        SparseAutoencoder(8, 16, d_out=4)
    with pytest.raises(ConfigError, match="skip .* is for transcoders"):
        SparseAutoencoder(8, 16, skip=True)
    with pytest.raises(ConfigError, match="d_out must be"):
        SparseAutoencoder(8, 16, transcoder=True, d_out=0)


def test_pairs_come_from_one_pass_and_the_cache_keeps_them(pair_cache):
    cfg = TrainConfig(**BASE, **PAIR)
    fresh, _, _ = collect(cfg)
    cached = read_cache(pair_cache, rows=len(fresh.tokens))  # its training rows come first
    assert fresh.target is not None and fresh.target.shape == fresh.acts.shape  # d_model both
    # the same rows; the cache batched its last training windows with held-out ones, so
    # the padding (and the float rounding) of that batch differs
    assert torch.equal(cached.window, fresh.window)
    torch.testing.assert_close(cached.acts, fresh.acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached.target, fresh.target, rtol=1e-5, atol=1e-5)
    manifest = json.loads((Path(pair_cache) / "manifest.json").read_text())
    assert manifest["target_hook"] == PAIR["target_hook"] and manifest["d_target"] == 384
    # an SAE run (no target hook) and a transcoder of another target refuse this cache
    with pytest.raises(ConfigError, match="target_hook: cache has 'layers.1.mlp_out'"):
        collect(TrainConfig(**BASE, hook=PAIR["hook"], cache=pair_cache))
    with pytest.raises(ConfigError, match="target_hook"):
        collect(TrainConfig(**BASE, **dict(PAIR, target_hook="layers.2.mlp_out"), cache=pair_cache))


def test_resume_continues_a_skip_transcoder_exactly(tmp_path, pair_cache):
    cfg = dict(BASE, **PAIR, skip=True, cache=pair_cache)
    whole = train(TrainConfig(**cfg, out=str(tmp_path / "whole")))
    ckpt = tmp_path / "whole" / "checkpoints" / "step_00000004"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["target_scale"] != state["scale"]
    # held out: the pairs after the training windows, the target at its own scale
    m = whole.metrics
    assert 0 < m["heldout_fvu"] < 1.5 and m["heldout_tokens"] >= 1024 and m["heldout_l0"] > 0
    train(TrainConfig(**cfg, out=str(tmp_path / "resumed"), resume=str(ckpt)))
    assert_same_sae(tmp_path / "resumed" / "sae", whole.sae.state_dict(), rtol=0, atol=0)
    want = "is a topk transcoder 384->768->384, but this run builds topk SAE"
    with pytest.raises(ConfigError, match=want):
        other = str(tmp_path / "sae_cache")  # a cached run too: its batches follow the step
        Trainer(TrainConfig(**dict(BASE, cache=other, out=str(tmp_path / "x"), resume=str(ckpt))))


def test_parallel_transcoders_equal_one_process(tmp_path, pair_cache):
    runs = {
        "skip_topk": dict(skip=True),
        "jumprelu": dict(activation="jumprelu", jumprelu_init_threshold=0.05),
    }
    cfgs = []
    for name, extra in runs.items():
        cfg = dict(BASE, **PAIR, **extra, steps=4, checkpoint_every=0, cache=pair_cache)
        train(TrainConfig(**cfg, out=str(tmp_path / "single" / name)))
        cfgs += [
            dict(cfg, out=str(tmp_path / "data" / name), parallel="data"),
            dict(cfg, out=str(tmp_path / "features" / name), parallel="features"),
        ]
    spawn(train_ranks, (cfgs,))
    for name in runs:
        for mode in ("data", "features"):
            assert_same_sae(tmp_path / mode / name / "sae", tmp_path / "single" / name / "sae")

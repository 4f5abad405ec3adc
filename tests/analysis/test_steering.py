"""Steering: the edited activation is exactly x + Σ (a' - a) W_dec, the hook is restored,
and `sae-fast steer` prints baseline vs steered output for both model kinds."""

from __future__ import annotations

import pytest
import torch

from sae_fast import ConfigError, SparseAutoencoder, steer
from sae_fast.analysis.generation import generate
from sae_fast.analysis.steering import compare_embeddings
from sae_fast.cli import main
from sae_fast.data.activations import load_model
from sae_fast.data.hooks import capture, run_to_hook


def _steered_act(model, sae, ids, features, mode):
    hook = sae.cfg.hook_name
    with torch.no_grad():
        with capture(model, hook) as box:
            clean = run_to_hook(model, box, input_ids=ids)
        with steer(model, sae, features, mode), capture(model, hook) as box:
            steered = run_to_hook(model, box, input_ids=ids)
    return clean[0], steered[0]


@pytest.mark.parametrize("mode", ["add", "clamp", "ablate"])
def test_each_mode_changes_only_the_chosen_features(minilm_sae, mode):
    sae_dir, _result = minilm_sae
    sae = SparseAutoencoder.load(sae_dir)
    model, tok = load_model("embedded")
    ids = tok("the function does not return a value", return_tensors="pt")["input_ids"]
    feats = {5: 3.0, 17: -1.5}
    x, got = _steered_act(model, sae, ids, feats, mode)
    with torch.no_grad():
        a = sae.encode(x)[:, [5, 17]]
        v = torch.tensor([3.0, -1.5])
        new = {"add": a + v, "clamp": v.expand_as(a), "ablate": torch.zeros_like(a)}[mode]
        want = x + (new - a) @ sae.W_dec[[5, 17]]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # restored afterwards, also after an exception
    with pytest.raises(RuntimeError, match="boom"), steer(model, sae, feats, mode):
        raise RuntimeError("boom")
    x2, _ = _steered_act(model, sae, ids, {5: 0.0}, "add")
    torch.testing.assert_close(x2, x, rtol=0, atol=0)


def test_bad_steering_requests(minilm_sae):
    sae = SparseAutoencoder.load(minilm_sae[0])
    model, _ = load_model("embedded")
    for feats, mode, match in [
        ({768: 1.0}, "add", "out of range"),
        ({1: float("nan")}, "add", "finite number"),
        ({}, "add", "non-empty"),
        ({1: 1.0}, "boost", "unknown steering mode"),
    ]:
        with pytest.raises(ConfigError, match=match), steer(model, sae, feats, mode):
            pass


def test_causal_generation_changes_under_strong_steering(gpt2_sae, gpt2_dir):
    sae = SparseAutoencoder.load(gpt2_sae[0])
    model, tok = load_model(str(gpt2_dir))
    prompt = "the function returns"
    base = generate(model, tok, prompt, 8)[0]
    assert base == generate(model, tok, prompt, 8)[0]  # greedy: deterministic
    with steer(model, sae, {3: 400.0}, "add"):
        steered = generate(model, tok, prompt, 8)[0]
    assert steered != base
    assert generate(model, tok, prompt, 8)[0] == base  # restored


def test_encoder_embedding_comparison(minilm_sae):
    sae = SparseAutoencoder.load(minilm_sae[0])
    model, tok = load_model("embedded")
    same = compare_embeddings(model, tok, sae, {5: 0.0}, "add", "a list of integers")
    assert same["cosine_baseline_vs_steered"] == pytest.approx(1.0, abs=1e-6)
    moved = compare_embeddings(model, tok, sae, {5: 60.0}, "add", "a list of integers")
    assert moved["cosine_baseline_vs_steered"] < 0.999
    assert len(moved["similarities"]) == 10


def test_cli_steer_for_encoder_and_causal_models(minilm_sae, gpt2_sae, capsys):
    argv = ["steer", str(minilm_sae[0]), "--prompt", "not a number", "--feature", "5=40"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cosine(baseline, steered)" in out and "nearest reference, steered" in out
    argv = ["steer", str(gpt2_sae[0]), "--prompt", "x = 1", "--feature", "3=400", "--mode", "clamp"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "baseline:" in out and "steered:" in out
    assert main(["steer", str(gpt2_sae[0]), "--prompt", "x", "--feature", "three"]) == 2
    assert "ID=VALUE" in capsys.readouterr().err

"""Using a transcoder: steering edits its target hook by the decoder directions of a code
read at its input hook, monitors and the feature browser read that code, and tracing
attributes the output through the target hook's gradient."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sae_fast import ConfigError, Monitor, SparseAutoencoder, steer, trace
from sae_fast.analysis.browser import build_feature_site
from sae_fast.analysis.features import collect_features, token_effects
from sae_fast.analysis.monitor import parse_rules
from sae_fast.cli import main
from sae_fast.data.activations import load_model, select_windows, token_windows
from sae_fast.data.corpus import load_texts
from sae_fast.data.hooks import patch
from tests.analysis.test_browser import _page_data
from tests.eval.transcoders import (
    MLP_IN,
    MLP_OUT,
    exact_transcoder,
    input_and_target,
    random_transcoder,
    relu_gpt2_dir,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEXT = "the exception is raised when the file does not exist"


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """(model dir, model, tokenizer, a saved skip transcoder's dir, that transcoder)."""
    path = str(relu_gpt2_dir(tmp_path_factory.mktemp("relu_gpt2")))
    model, tok = load_model(path)
    sae = random_transcoder(32, 64, model_name=path)
    sae_dir = sae.save(tmp_path_factory.mktemp("tc") / "sae")
    return path, model, tok, sae_dir, sae


def _ids(tok, text=TEXT):
    return tok(text, return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("mode", ["add", "clamp", "ablate"])
def test_steering_edits_the_target_hook_by_decoder_directions(gpt2, mode):
    _path, model, tok, _dir, sae = gpt2
    ids = _ids(tok)
    x, y = input_and_target(model, ids)
    feats = {5: 3.0, 17: -1.5}
    with steer(model, sae, feats, mode):
        x_st, y_st = input_and_target(model, ids)
    with torch.no_grad():
        a = sae.encode(x[0])[:, [5, 17]]
        v = torch.tensor([3.0, -1.5])
        new = {"add": a + v, "clamp": v.expand_as(a), "ablate": torch.zeros_like(a)}[mode]
        want = y[0] + (new - a) @ sae.W_dec[[5, 17]]
    torch.testing.assert_close(x_st, x, rtol=0, atol=0)  # the input hook is read, not edited
    torch.testing.assert_close(y_st[0], want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(y_st, y)
    with pytest.raises(RuntimeError, match="boom"), steer(model, sae, feats, mode):
        raise RuntimeError("boom")
    torch.testing.assert_close(input_and_target(model, ids)[1], y, rtol=0, atol=0)  # restored


def test_ablating_a_feature_of_the_exact_transcoder_ablates_its_mlp_neuron(gpt2):
    path, model, tok, _dir, _sae = gpt2
    sae = exact_transcoder(model, path)
    ids = _ids(tok)
    x, _y = input_and_target(model, ids)
    f = int(sae.encode(x[0]).detach().sum(0).argmax())  # a neuron that fires here
    with torch.no_grad(), steer(model, sae, {f: 0.0}, "ablate"):
        steered = model(input_ids=ids).logits

    def kill_neuron(_mod, args):
        h = args[0].clone()
        h[..., f] = 0
        return (h,)

    proj = model.transformer.h[0].mlp.c_proj
    handle = proj.register_forward_pre_hook(kill_neuron)
    try:
        with torch.no_grad():
            brute = model(input_ids=ids).logits
    finally:
        handle.remove()
    with torch.no_grad():
        clean = model(input_ids=ids).logits
    torch.testing.assert_close(steered, brute, rtol=1e-4, atol=1e-4)
    assert (steered - clean).abs().max() > 1e-3


def test_steering_a_transcoder_at_the_wrong_width_is_a_config_error(gpt2):
    path, model, tok, _dir, _sae = gpt2
    narrow = random_transcoder(32, 64, model_name=path, d_out=16)
    with pytest.raises(ConfigError, match="the transcoder predicts d_out=16"):
        with steer(model, narrow, {1: 1.0}):
            model(input_ids=_ids(tok))


def test_monitor_rules_fire_on_a_transcoders_input_code(gpt2):
    _path, model, tok, _dir, sae = gpt2
    x, y = input_and_target(model, _ids(tok))
    with torch.no_grad():
        acts = sae.encode(x[0])
        wrong = sae.encode(y[0])  # what reading the target hook would give
    acts[0] = acts[-1] = 0  # [CLS] / [SEP] are never monitored
    peak = acts.max(0)
    f = int(peak.values.argmax())
    top = float(peak.values[f])
    assert float(wrong[1:-1, f].max()) != pytest.approx(top, rel=1e-3)
    rules = parse_rules([{"name": "r", "features": [f], "threshold": top / 2}], sae.d_sae)
    (alert,) = Monitor(sae, rules, model, tok).check(TEXT, "doc")
    fired = (acts[:, f] > top / 2).nonzero(as_tuple=True)[0]
    assert alert.span == (int(fired[0]), int(fired[-1]) + 1)
    assert alert.activations[f] == pytest.approx(top, rel=1e-5)


def _finite_difference(model, ids, pos, tid, direction, eps=1e-3):
    """d logit[pos, tid] / d eps of mlp_out[pos] + eps * direction (central difference)."""

    def logit(e):
        def add(a):
            a = a.clone()
            a[0, pos] += e * direction
            return a

        with patch(model, MLP_OUT, add), torch.no_grad():
            return float(model(input_ids=ids).logits[0, pos, tid])

    return (logit(eps) - logit(-eps)) / (2 * eps)


def test_causal_transcoder_trace_matches_finite_differences_at_the_target(gpt2):
    _path, model, tok, _dir, sae = gpt2
    ids, pos = _ids(tok, "the function returns a list"), 3
    res = trace(model, tok, sae, "the function returns a list", pos)
    x, y = (t[0, pos] for t in input_and_target(model, ids))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, pos]
        code = sae.encode(x.unsqueeze(0))[0]
        skip = sae.skip_output(x.unsqueeze(0))[0]
        err = y - sae(x.unsqueeze(0)).reconstruction[0]
    tid = int(logits.argmax())
    assert res.output_value == pytest.approx(float(logits[tid]), rel=1e-5)
    assert {fa.feature for fa in res.features} == set(code.nonzero().flatten().tolist())

    def slope(direction):  # the logit's slope along a part of mlp_out, by brute force
        want = _finite_difference(model, ids, pos, tid, direction)
        return pytest.approx(want, rel=1e-2, abs=1e-3)

    for fa in res.features:
        assert fa.activation == pytest.approx(float(code[fa.feature]), rel=1e-5)
        assert fa.attribution == slope(code[fa.feature] * sae.W_dec[fa.feature].detach())
    assert res.skip_attribution == slope(skip)
    assert res.error_attribution == slope(err)
    assert res.bias_attribution == slope(sae.b_dec.detach())
    assert res.total == slope(y)
    assert res.extra == {"hook": MLP_IN, "target_hook": MLP_OUT, "skip": True}
    assert "x W_skip^T" in res.table()


def test_encoder_transcoder_trace_sums_to_the_target_along_its_prediction():
    model, tok = load_model("embedded")
    sae = random_transcoder(384, 768, "layers.3.mlp_in", "layers.3.mlp_out")
    res = trace(model, tok, sae, "the file does not exist", 2)
    ids = _ids(tok, "the file does not exist")
    x, y = (t[0, 2] for t in input_and_target(model, ids, "layers.3.mlp_in", "layers.3.mlp_out"))
    with torch.no_grad():
        yh = sae(x.unsqueeze(0)).reconstruction[0]
    assert res.output_value == pytest.approx(float(y @ yh / yh.norm()), rel=1e-5)
    assert res.total == pytest.approx(res.output_value, rel=1e-4)
    assert res.output.startswith("y · ")


def test_feature_report_and_site_of_a_transcoder_read_its_input_hook(gpt2, tmp_path):
    path, model, tok, sae_dir, sae = gpt2
    windows = token_windows(tok, load_texts("embedded", "text"), 128)
    chosen, _ = select_windows(tok, windows, 300)
    rep = collect_features(sae, model, tok, chosen, MLP_IN, n_top=3, width=4)
    counts = torch.zeros(sae.d_sae, dtype=torch.int64)
    from sae_fast.data.activations import iter_activations

    for batch in iter_activations(model, tok, chosen, MLP_IN):
        with torch.no_grad():
            counts += (sae.encode(batch.acts) > 0).sum(0)
    assert torch.equal(rep.counts, counts)
    site = build_feature_site(sae_dir, tmp_path, max_tokens=300, n_top=3)
    data = _page_data(site)
    assert f"transcoder 32 -> 64 at {MLP_IN} -> {MLP_OUT}" in data["intro"]
    assert torch.equal(torch.tensor([f["top"] != [] for f in data["features"]]), counts > 0)
    assert len(data["features"][0]["boost"]) == 10  # token effects of W_dec (d_out wide)
    eff = token_effects(random_transcoder(8, 16, model_name=path, d_out=32), model, k=3)
    assert eff is not None and eff[0].shape == (16, 3)


def test_cli_steer_trace_and_eval_of_a_saved_transcoder(gpt2, capsys):
    _path, _model, _tok, sae_dir, _sae = gpt2
    loaded = SparseAutoencoder.load(sae_dir)
    assert loaded.cfg.transcoder and loaded.cfg.target_hook_name == MLP_OUT
    argv = ["steer", str(sae_dir), "--prompt", "x = 1", "--feature", "3=40"]
    assert main([*argv, "--max-new-tokens", "4"]) == 0
    assert "steered:" in capsys.readouterr().out
    argv = ["trace", str(sae_dir), "--text", "a b c", "--position", "-1", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["extra"]["target_hook"] == MLP_OUT and "skip_attribution" in data
    argv = ["eval", str(sae_dir), "--max-tokens", "100", "--context-size", "32"]
    argv += ["--no-save-sparsity", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target_hook"] == MLP_OUT and out["downstream_score"] is not None

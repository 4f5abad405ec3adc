"""Evaluating a transcoder: (input, target) pairs from one pass, metrics against the target,
its output spliced in at the target hook (ablations there too), and clear width errors."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from sae_fast import ConfigError, SparseAutoencoder
from sae_fast.data.activations import load_model, pad_windows
from sae_fast.data.hooks import patch, patch_from
from sae_fast.eval import EvalSet, Fidelity, evaluate, reconstruction_metrics, sae_replacement
from tests.eval.transcoders import (
    MLP_IN,
    MLP_OUT,
    exact_transcoder,
    input_and_target,
    random_transcoder,
    relu_gpt2_dir,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BERT_IN, BERT_OUT = "layers.3.mlp_in", "layers.3.mlp_out"


def _eval_set(model, tok, hook=MLP_IN, target=MLP_OUT, tokens=400):
    return EvalSet.build(
        model, hook, "embedded", context_size=32, max_tokens=tokens, tokenizer=tok,
        target_hook=target,
    )  # fmt: skip


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    path = str(relu_gpt2_dir(tmp_path_factory.mktemp("relu_gpt2")))
    model, tok = load_model(path)
    return path, model, tok, _eval_set(model, tok)


@pytest.fixture(scope="module")
def encoder():
    model, tok = load_model("embedded")
    return model, tok, _eval_set(model, tok, BERT_IN, BERT_OUT, tokens=300)


def test_eval_set_holds_input_and_target_pairs_of_one_pass(causal):
    _path, model, tok, es = causal
    assert es.hook == MLP_IN and es.target_hook == MLP_OUT
    assert es.data.target is not None and es.data.target.shape == es.data.acts.shape
    ids, _attn, keep = pad_windows(tok, es.windows[:1])
    x, y = input_and_target(model, ids)
    n = int(keep.sum())
    torch.testing.assert_close(es.data.acts[:n], x[keep])
    torch.testing.assert_close(es.data.target[:n], y[keep])
    assert not torch.allclose(es.data.acts[:n], es.data.target[:n])


def test_reconstruction_metrics_compare_the_output_with_the_target(causal):
    _path, _model, _tok, es = causal
    sae = random_transcoder(32, 64)
    res = evaluate(sae, es, downstream=False)
    x, y = es.data.acts.double(), es.data.target.double()
    with torch.no_grad():
        yh = sae(es.data.acts).reconstruction.double()
    sse = (y - yh).pow(2).sum()
    assert res.fvu == pytest.approx(float(sse / (y - y.mean(0)).pow(2).sum()), rel=1e-6)
    assert res.mse == pytest.approx(float(sse / len(y)), rel=1e-6)
    cos = F.cosine_similarity(y, yh, dim=1).mean()
    assert res.cosine == pytest.approx(float(cos), rel=1e-6)
    # against the input instead, the numbers would be others
    assert res.fvu != pytest.approx(float((x - yh).pow(2).sum() / (x - x.mean(0)).pow(2).sum()))
    with pytest.raises(ConfigError, match="pass its targets"):
        reconstruction_metrics(sae, es.data.acts)
    with pytest.raises(ValueError, match=r"targets must be \[N, d_out\]"):
        reconstruction_metrics(sae, es.data.acts, targets=es.data.target[:5])


def test_a_transcoder_equal_to_the_mlp_scores_one(causal):
    path, model, _tok, es = causal
    res = evaluate(exact_transcoder(model, path), es)
    assert res.fvu < 1e-10 and res.explained_variance == pytest.approx(1.0, abs=1e-10)
    d = res.downstream
    assert d["ce_sae"] == pytest.approx(d["ce_clean"], abs=1e-6)
    assert d["kl_sae"] == pytest.approx(0.0, abs=1e-6)
    assert res.downstream_score == pytest.approx(1.0, abs=1e-4)
    assert abs(d["ce_zero"] - d["ce_clean"]) > 1e-3  # ablating the MLP does matter
    assert res.target_hook == MLP_OUT and res.to_dict()["target_hook"] == MLP_OUT
    assert f"{MLP_IN} -> {MLP_OUT}" in res.table() and "cosine(y, y_hat)" in res.table()


def test_downstream_losses_equal_a_hand_splice_at_the_target_hook(causal):
    """A perturbed MLP transcoder: CE of its splice, of zero and of mean ablation (mean
    target), each computed here with patch_from / patch at mlp_out."""
    path, model, tok, es = causal
    sae = exact_transcoder(model, path)
    with torch.no_grad():
        sae.W_dec.add_(0.05 * torch.randn_like(sae.W_dec))
    got = es.fidelity(batch_size=3).measure(sae)
    mean = es.data.target.double().mean(0).float()
    sums = {"sae": 0.0, "zero": 0.0, "mean": 0.0, "clean": 0.0, "kl_sae": 0.0}
    n = 0
    for w in es.windows:
        ids, _attn, keep = pad_windows(tok, [w])
        kp = keep[0]

        def by_sae(y, x, kp=kp):
            y = y.clone()
            y[0, kp] = sae(x[0, kp]).reconstruction
            return y

        def by_value(v, kp=kp):
            def fn(y):
                y = y.clone()
                y[0, kp] = v
                return y

            return fn

        with torch.no_grad():
            clean = model(input_ids=ids).logits[0, :-1]
            with patch_from(model, MLP_IN, MLP_OUT, by_sae):
                spliced = model(input_ids=ids).logits[0, :-1]
            with patch(model, MLP_OUT, by_value(0.0)):
                zero = model(input_ids=ids).logits[0, :-1]
            with patch(model, MLP_OUT, by_value(mean)):
                meaned = model(input_ids=ids).logits[0, :-1]
        tgt = ids[0, 1:]
        for name, logits in (("clean", clean), ("sae", spliced), ("zero", zero), ("mean", meaned)):
            sums[name] += float(F.cross_entropy(logits, tgt, reduction="sum"))
        lp, lq = F.log_softmax(clean, -1), F.log_softmax(spliced, -1)
        sums["kl_sae"] += float(F.kl_div(lq, lp, log_target=True, reduction="sum"))
        n += len(tgt)
    for run in ("clean", "sae", "zero", "mean"):
        assert got[f"ce_{run}"] == pytest.approx(sums[run] / n, rel=1e-5), run
    assert got["kl_sae"] == pytest.approx(sums["kl_sae"] / n, rel=1e-4, abs=1e-7)
    assert got["ce_sae"] != pytest.approx(got["ce_clean"], abs=1e-5)  # the perturbation shows


@pytest.mark.parametrize("kind", ["causal", "encoder"])
def test_error_term_splice_leaves_the_model_unchanged(kind, request):
    setup = request.getfixturevalue(kind)
    es = setup[-1]
    hook, target = (MLP_IN, MLP_OUT) if kind == "causal" else (BERT_IN, BERT_OUT)
    d = es.data.acts.shape[1]
    sae = random_transcoder(d, 2 * d, hook, target)
    fid = es.fidelity(batch_size=4)
    assert fid.hook == target and fid.source == hook
    ids, attn, keep = fid.batches[0]
    clean = fid._forward(ids, attn, keep, None)
    unchanged = fid._forward(ids, attn, keep, sae_replacement(sae, error_term=True))
    torch.testing.assert_close(unchanged, clean, rtol=1e-5, atol=1e-5)
    changed = fid._forward(ids, attn, keep, sae_replacement(sae))
    assert (changed - clean).abs().max() > 1e-3  # without it, the splice does change things
    assert fid.measure(sae, error_term=True)["downstream_score"] == pytest.approx(1.0, abs=1e-4)
    assert fid.measure(sae)["downstream_score"] < 0.999


def test_width_and_kind_mismatches_are_clear_errors(causal):
    path, model, tok, es = causal
    for sae, match in [
        (random_transcoder(16, 64, model_name=path), "have width 32, the SAE expects d_in=16"),
        (
            random_transcoder(32, 64, model_name=path, d_out=16),
            f"activations at {MLP_OUT} have width 32, the transcoder predicts d_out=16",
        ),
        (SparseAutoencoder(32, 64, k=4), "holds a transcoder's targets"),
    ]:
        with pytest.raises(ConfigError, match=match):
            evaluate(sae, es)
    sae_set = EvalSet(model, tok, MLP_IN, es.windows, es.data.rows(slice(0, None)))
    sae_set.data.target = None
    with pytest.raises(ConfigError, match="needs an evaluation set with its targets"):
        evaluate(random_transcoder(32, 64), sae_set)
    mean = es.data.acts.mean(0)
    with pytest.raises(ConfigError, match="build the Fidelity with source=<its input hook>"):
        Fidelity(model, tok, es.windows[:2], MLP_OUT, mean).measure(random_transcoder(32, 64))
    with pytest.raises(ConfigError, match="not an SAE"):
        es.fidelity().measure(SparseAutoencoder(32, 64, k=4))
    no_target = SparseAutoencoder(32, 64, k=4, transcoder=True, hook_name=MLP_IN, model_name=path)
    with pytest.raises(ConfigError, match="does not record its target hook"):
        evaluate(no_target, max_tokens=50)
    with pytest.raises(ConfigError, match="target_hook is the input hook"):
        _eval_set(model, tok, MLP_IN, MLP_IN)


def test_evaluate_builds_the_pairs_from_the_transcoders_own_hooks(causal):
    path, model, tok, _es = causal
    sae = random_transcoder(32, 64, model_name=path)
    res = evaluate(sae, model=model, tokenizer=tok, context_size=32, max_tokens=200)
    assert res.hook == MLP_IN and res.target_hook == MLP_OUT and res.n_tokens >= 200
    same = evaluate(sae, _eval_set(model, tok, tokens=200))
    assert res.fvu == pytest.approx(same.fvu, rel=1e-9)
    assert res.downstream_score == pytest.approx(same.downstream_score, rel=1e-9)

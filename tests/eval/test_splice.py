"""Downstream fidelity by splicing: identity SAE scores 1, zero SAE scores 0, the formulas
match direct computations, and the model is restored afterwards."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from sae_fast import SparseAutoencoder
from sae_fast.data.activations import is_causal_lm, load_model, pad_windows, token_windows
from sae_fast.data.corpus import load_texts
from sae_fast.data.hooks import capture, patch, run_to_hook
from sae_fast.eval.splice import Fidelity, _splice, score
from tests.helpers import identity_sae, tiny_gpt2_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HOOK = "layers.0.residual"


def _setup(model, tokenizer, n_windows=6):
    texts = load_texts("embedded", "text")[:20]
    windows = token_windows(tokenizer, texts, 32)[:n_windows]
    acts = []
    with capture(model, HOOK) as box, torch.no_grad():
        for w in windows:
            ids, attn, keep = pad_windows(tokenizer, [w])
            acts.append(run_to_hook(model, box, input_ids=ids, attention_mask=attn)[keep])
    mean = torch.cat(acts).mean(0)
    return windows, Fidelity(model, tokenizer, windows, HOOK, mean, batch_size=4)


@pytest.fixture(scope="module")
def encoder():
    model, tok = load_model("embedded")
    return (model, tok, *_setup(model, tok))


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    path = tiny_gpt2_dir(tmp_path_factory.mktemp("gpt2"))
    model, tok = load_model(str(path))
    assert is_causal_lm(model)  # loaded with its LM head
    return (model, tok, *_setup(model, tok))


def _zero_sae(d_in: int) -> SparseAutoencoder:
    sae = SparseAutoencoder(d_in, 2 * d_in, activation="relu")
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
    return sae


@pytest.mark.parametrize("kind", ["encoder", "causal"])
def test_identity_sae_scores_one_and_zero_sae_scores_zero(kind, request):
    model, _tok, _windows, fid = request.getfixturevalue(kind)
    d = model.config.hidden_size if kind == "encoder" else model.config.n_embd
    ident = fid.measure(identity_sae(d))
    zero = fid.measure(_zero_sae(d))
    assert ident["downstream_score"] == pytest.approx(1.0, abs=1e-6)
    assert zero["downstream_score"] == pytest.approx(0.0, abs=1e-6)
    if kind == "causal":
        assert ident["ce_sae"] == pytest.approx(ident["ce_clean"], abs=1e-6)
        assert ident["kl_sae"] == pytest.approx(0.0, abs=1e-6)
        assert ident["kl_score_zero"] == pytest.approx(1.0, abs=1e-6)
        assert zero["kl_score_zero"] == pytest.approx(0.0, abs=1e-6)
        assert zero["ce_zero"] != zero["ce_clean"]  # the ablation does change the model
    else:
        assert ident["emb_cos_sae"] == pytest.approx(1.0, abs=1e-6)
        assert ident["tok_mse_score_zero"] == pytest.approx(1.0, abs=1e-6)
        assert zero["tok_cos_score_zero"] == pytest.approx(0.0, abs=1e-6)
        assert zero["emb_cos_zero"] < 0.99


def test_error_term_splice_reproduces_the_clean_run(encoder):
    model, *_rest, fid = encoder
    torch.manual_seed(0)
    sae = SparseAutoencoder(model.config.hidden_size, 1536, activation="topk", k=8)
    plain = fid.measure(sae)
    with_error = fid.measure(sae, error_term=True)
    assert plain["downstream_score"] < 0.99  # an untrained SAE loses a lot
    assert with_error["downstream_score"] == pytest.approx(1.0, abs=1e-4)


def test_causal_losses_equal_direct_cross_entropy_and_kl(causal):
    model, tok, windows, fid = causal
    torch.manual_seed(1)
    sae = SparseAutoencoder(model.config.n_embd, 64, activation="topk", k=4)
    got = fid.measure(sae)
    ce_clean = ce_zero = kl_zero = 0.0
    n = 0
    for w in windows:
        ids = torch.tensor([w])
        with torch.no_grad():
            clean = model(input_ids=ids).logits[0, :-1].float()
            keep = pad_windows(tok, [w])[2]

            def ablate(a, keep=keep):
                return _splice(a, keep, torch.zeros_like)

            with patch(model, HOOK, ablate):
                zeroed = model(input_ids=ids).logits[0, :-1].float()
        tgt = ids[0, 1:]
        ce_clean += float(F.cross_entropy(clean, tgt, reduction="sum"))
        ce_zero += float(F.cross_entropy(zeroed, tgt, reduction="sum"))
        lp, lq = F.log_softmax(clean, -1), F.log_softmax(zeroed, -1)
        kl_zero += float(F.kl_div(lq, lp, log_target=True, reduction="sum"))
        n += len(tgt)
    assert got["ce_clean"] == pytest.approx(ce_clean / n, rel=1e-5)
    assert got["ce_zero"] == pytest.approx(ce_zero / n, rel=1e-5)
    assert got["kl_zero"] == pytest.approx(kl_zero / n, rel=1e-4)
    want = (got["ce_zero"] - got["ce_sae"]) / (got["ce_zero"] - got["ce_clean"])
    assert got["ce_score_zero"] == pytest.approx(want, rel=1e-9)
    assert got["downstream_score"] == got["ce_score_zero"]


def test_splice_touches_only_kept_positions_and_patch_restores_the_model(encoder):
    model, tok, windows, _fid = encoder
    act = torch.randn(2, 3, 4)
    keep = torch.tensor([[False, True, True], [False, True, False]])
    out = _splice(act, keep, torch.zeros_like)
    assert torch.equal(out[~keep], act[~keep]) and not out[keep].any()
    ids, attn, _ = pad_windows(tok, windows[:2])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=attn).last_hidden_state
    with pytest.raises(RuntimeError, match="boom"), patch(model, HOOK, torch.zeros_like):
        raise RuntimeError("boom")
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=attn).last_hidden_state
    assert torch.equal(before, after)


def test_score_formula():
    assert score(2.0, 4.0, 1.0) == pytest.approx(2 / 3)
    assert score(1.0, 4.0, 1.0) == 1.0 and score(4.0, 4.0, 1.0) == 0.0
    assert math.isnan(score(1.0, 1.0, 1.0))

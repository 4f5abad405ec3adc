"""Imports from EleutherAI sparsify and saprmarks/dictionary_learning directories, written
by the tests in those libraries' layouts, with outputs checked against their math."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sae_fast import ConfigError, FormatError, SparseAutoencoder
from tests.helpers import assert_close

D_IN, D_SAE, K = 6, 20, 3


def _rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _topk_dense(pre, k):
    top = torch.topk(torch.relu(pre), k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values)


# ----------------------------------------------------------------- sparsify


def _sparsify_dir(path, **cfg_changes):
    path.mkdir()
    cfg = {
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "activation": "topk",
        "d_in": D_IN,
        **cfg_changes,
    }
    (path / "cfg.json").write_text(json.dumps(cfg))
    t = {
        "encoder.weight": _rand(D_SAE, D_IN, seed=1),
        "encoder.bias": _rand(D_SAE, seed=2, scale=0.1),
        "W_dec": _rand(D_SAE, D_IN, seed=3),
        "b_dec": _rand(D_IN, seed=4),
    }
    save_file(t, str(path / "sae.safetensors"))
    return t


def test_sparsify_import_same_outputs(tmp_path):
    t = _sparsify_dir(tmp_path / "layers.3")
    sae = SparseAutoencoder.load(tmp_path / "layers.3")
    assert (sae.d_in, sae.d_sae, sae.k, sae.activation) == (D_IN, D_SAE, K, "topk")
    x = _rand(11, D_IN, seed=9)
    # sparsify: topk(relu((x - b_dec) @ encoder.weight.T + bias)), decode + b_dec
    acts = _topk_dense((x - t["b_dec"]) @ t["encoder.weight"].t() + t["encoder.bias"], K)
    want = acts @ t["W_dec"] + t["b_dec"]
    assert_close(sae(x).reconstruction, want, "sparsify recon", rtol=1e-5, atol=1e-5)
    assert_close(sae.encode(x), acts, "sparsify acts", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_transcoder_import_same_outputs(tmp_path, skip):
    t = _sparsify_dir(tmp_path / "layers.3.mlp", transcode=True, skip_connection=skip)
    if skip:
        t["W_skip"] = _rand(D_IN, D_IN, seed=5, scale=0.3)
        save_file(t, str(tmp_path / "layers.3.mlp" / "sae.safetensors"))
    sae = SparseAutoencoder.load(tmp_path / "layers.3.mlp")
    assert sae.cfg.transcoder and sae.cfg.skip == skip
    x = _rand(11, D_IN, seed=9)
    # sparsify's transcoder: the input is not centred; + x @ W_skip.T with a skip connection
    acts = _topk_dense(x @ t["encoder.weight"].t() + t["encoder.bias"], K)
    want = acts @ t["W_dec"] + t["b_dec"] + (x @ t["W_skip"].t() if skip else 0)
    assert_close(sae(x).reconstruction, want, "sparsify transcoder", rtol=1e-5, atol=1e-5)
    assert_close(sae.encode(x), acts, "sparsify transcoder acts", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "changes,err,match",
    [
        ({"skip_connection": True}, FormatError, "skip_connection=true without transcode"),
        (
            {"skip_connection": True, "transcode": True},
            FormatError,
            r"missing tensors \['W_skip'\]",
        ),
        ({"activation": "groupmax"}, FormatError, "groupmax"),
        ({"k": "3"}, ConfigError, "'k' must be int"),
        ({"num_latents": 21}, FormatError, "expected"),
    ],
)
def test_sparsify_bad_dirs(tmp_path, changes, err, match):
    _sparsify_dir(tmp_path / "s", **changes)
    with pytest.raises(err, match=match):
        SparseAutoencoder.load(tmp_path / "s")


def test_sparsify_num_latents_zero_uses_expansion(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "cfg.json").write_text(
        json.dumps({"expansion_factor": 2, "num_latents": 0, "k": 2, "d_in": 4})
    )
    save_file(
        {
            "encoder.weight": torch.zeros(8, 4),
            "encoder.bias": torch.zeros(8),
            "W_dec": torch.zeros(8, 4),
            "b_dec": torch.zeros(4),
        },
        str(d / "sae.safetensors"),
    )
    assert SparseAutoencoder.load(d).d_sae == 8


# ----------------------------------------------------------------- dictionary_learning


def _dl_dir(path, dict_class, state, k=K, **trainer):
    path.mkdir()
    cfg = {
        "trainer": {
            "dict_class": dict_class,
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "k": k,
            "lr": 1e-4,
            **trainer,
        },
        "buffer": {"model_name": "pythia-70m"},
    }
    (path / "config.json").write_text(json.dumps(cfg))
    torch.save(state, path / "ae.pt")


def test_dictionary_learning_topk(tmp_path):
    st = {
        "encoder.weight": _rand(D_SAE, D_IN, seed=1),
        "encoder.bias": _rand(D_SAE, seed=2),
        "decoder.weight": _rand(D_IN, D_SAE, seed=3),
        "b_dec": _rand(D_IN, seed=4),
        "k": torch.tensor(K),
        "threshold": torch.tensor(-1.0),
    }
    _dl_dir(tmp_path / "t", "AutoEncoderTopK", st)
    sae = SparseAutoencoder.load(tmp_path / "t")
    assert sae.activation == "topk" and sae.cfg.model_name == "pythia-70m"
    x = _rand(7, D_IN, seed=5)
    acts = _topk_dense((x - st["b_dec"]) @ st["encoder.weight"].t() + st["encoder.bias"], K)
    want = acts @ st["decoder.weight"].t() + st["b_dec"]
    assert_close(sae(x).reconstruction, want, "dl topk", rtol=1e-5, atol=1e-5)


def test_dictionary_learning_batchtopk_threshold(tmp_path):
    st = {
        "encoder.weight": _rand(D_SAE, D_IN, seed=1),
        "encoder.bias": _rand(D_SAE, seed=2),
        "decoder.weight": _rand(D_IN, D_SAE, seed=3),
        "b_dec": _rand(D_IN, seed=4),
        "k": torch.tensor(K),
        "threshold": torch.tensor(0.4),
    }
    _dl_dir(tmp_path / "b", "BatchTopKSAE", st)
    sae = SparseAutoencoder.load(tmp_path / "b").eval()
    assert sae.activation == "batchtopk" and sae.batchtopk_threshold == pytest.approx(0.4)
    x = _rand(7, D_IN, seed=5)
    post = torch.relu((x - st["b_dec"]) @ st["encoder.weight"].t() + st["encoder.bias"])
    acts = post * (post > 0.4)
    assert_close(sae.encode(x), acts, "dl batchtopk acts", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", ["AutoEncoder", "AutoEncoderNew"])
def test_dictionary_learning_relu(tmp_path, cls):
    st = {
        "encoder.weight": _rand(D_SAE, D_IN, seed=1),
        "encoder.bias": _rand(D_SAE, seed=2),
        "decoder.weight": _rand(D_IN, D_SAE, seed=3),
    }
    bias_key = "bias" if cls == "AutoEncoder" else "decoder.bias"
    st[bias_key] = _rand(D_IN, seed=4)
    _dl_dir(tmp_path / "r", cls, st)
    sae = SparseAutoencoder.load(tmp_path / "r", dtype=torch.float64)
    x = _rand(7, D_IN, seed=5).double()
    s = {k: v.double() for k, v in st.items()}
    centred = x - s["bias"] if cls == "AutoEncoder" else x
    acts = torch.relu(centred @ s["encoder.weight"].t() + s["encoder.bias"])
    want = acts @ s["decoder.weight"].t() + s[bias_key]
    assert_close(sae(x).reconstruction, want, f"{cls} recon", rtol=1e-9, atol=1e-9)
    assert_close(sae.encode(x), acts, f"{cls} acts", rtol=1e-9, atol=1e-9)


def test_dictionary_learning_jumprelu_folds_decoder_norms(tmp_path):
    st = {
        "W_enc": _rand(D_IN, D_SAE, seed=1),
        "b_enc": _rand(D_SAE, seed=2, scale=0.1),
        "W_dec": _rand(D_SAE, D_IN, seed=3),
        "b_dec": _rand(D_IN, seed=4),
        "threshold": torch.rand(D_SAE, generator=torch.Generator().manual_seed(5)),
    }
    _dl_dir(tmp_path / "j", "JumpReluAutoEncoder", st)
    sae = SparseAutoencoder.load(tmp_path / "j", dtype=torch.float64)
    s = {k: v.double() for k, v in st.items()}
    x = _rand(9, D_IN, seed=6).double()
    pre = x @ s["W_enc"] + s["b_enc"]  # no input centring in dictionary_learning
    f = torch.relu(pre * (pre > s["threshold"])) * s["W_dec"].norm(dim=1)
    want = (f / s["W_dec"].norm(dim=1)) @ s["W_dec"] + s["b_dec"]
    assert_close(sae(x).reconstruction, want, "jumprelu recon", rtol=1e-9, atol=1e-9)
    assert_close(sae.encode(x), f, "jumprelu acts", rtol=1e-9, atol=1e-9)


class NotATensor:
    pass


def test_dictionary_learning_refuses_pickled_objects(tmp_path):
    d = tmp_path / "evil"
    _dl_dir(d, "AutoEncoderTopK", {"x": torch.zeros(1)})
    torch.save({"encoder.weight": NotATensor()}, d / "ae.pt")
    with pytest.raises(FormatError, match="more than plain tensors"):
        SparseAutoencoder.load(d)


@pytest.mark.parametrize(
    "mutate,err,match",
    [
        (lambda d: (d / "ae.pt").write_bytes(b"PK\x03\x04garbage"), FormatError, "corrupt"),
        (lambda d: (d / "ae.pt").unlink(), FileNotFoundError, "ae.pt is missing"),
        (
            lambda d: (d / "config.json").write_text(
                '{"trainer": {"dict_class": "GatedAutoEncoder",'
                ' "activation_dim": 6, "dict_size": 20}}'
            ),
            FormatError,
            "GatedAutoEncoder",
        ),
        (
            lambda d: (d / "config.json").write_text(
                '{"trainer": {"dict_class": "AutoEncoderTopK",'
                ' "activation_dim": "6", "dict_size": 20}}'
            ),
            ConfigError,
            "'activation_dim' must be int",
        ),
        (
            lambda d: (d / "config.json").write_text('{"buffer": {}}'),
            ConfigError,
            "missing the key 'trainer'",
        ),
    ],
)
def test_dictionary_learning_bad_dirs(tmp_path, mutate, err, match):
    st = {
        "encoder.weight": _rand(D_SAE, D_IN),
        "encoder.bias": _rand(D_SAE),
        "decoder.weight": _rand(D_IN, D_SAE),
        "b_dec": _rand(D_IN),
    }
    _dl_dir(tmp_path / "d", "AutoEncoderTopK", st)
    mutate(tmp_path / "d")
    with pytest.raises(err, match=match):
        SparseAutoencoder.load(tmp_path / "d")

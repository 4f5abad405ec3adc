"""SparseAutoencoder: contract of docs/design.md section 2, against the reference math."""

from __future__ import annotations

import pytest
import torch

import sae_fast
from sae_fast import BackendUnavailableError, ConfigError, SparseAutoencoder
from sae_fast.ops import reference as ref
from tests.helpers import assert_close, reference_code

ACTS = ["topk", "batchtopk", "relu", "jumprelu"]


def _sae(activation="topk", d_in=7, d_sae=13, k=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    sae = SparseAutoencoder(d_in, d_sae, activation=activation, k=k, backend="torch", dtype=dtype)
    with torch.no_grad():  # non-trivial biases and threshold
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        if sae.threshold is not None:
            sae.threshold.uniform_(0.0, 0.2)
    return sae


def test_init_contract():
    sae = SparseAutoencoder(16, 40, k=4)
    assert sae.W_enc.shape == (16, 40) and sae.W_dec.shape == (40, 16)
    assert sae.b_enc.shape == (40,) and sae.b_dec.shape == (16,)
    assert_close(sae.W_dec.norm(dim=1), torch.ones(40), "row norms")
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    assert not sae.b_enc.any() and not sae.b_dec.any()
    assert sae.threshold is None
    j = SparseAutoencoder(16, 40, activation="jumprelu")
    assert j.threshold.shape == (40,) and j.k is None


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3), (2, 1, 4)])
def test_forward_matches_reference_any_leading_dims(activation, lead):
    sae = _sae(activation)
    x = torch.randn(*lead, 7, dtype=torch.float64)
    out = sae(x)
    x2 = x.reshape(-1, 7)
    p = dict(sae.named_parameters())
    dense = reference_code(
        activation, x2, p["W_enc"], p["b_enc"], p["b_dec"], k=3, threshold=sae.threshold
    )
    assert out.reconstruction.shape == (*lead, 7)
    assert_close(
        out.reconstruction.reshape(-1, 7),
        ref.decode_dense(dense, p["W_dec"], p["b_dec"]),
        "reconstruction",
        rtol=1e-12,
        atol=1e-12,
    )
    assert_close(out.dense_acts().reshape(-1, 13), dense, "acts", rtol=1e-12, atol=1e-12)
    assert_close(sae.encode(x).reshape(-1, 13), dense, "encode", rtol=0, atol=0)
    if activation == "topk":
        assert out.values.shape == (*lead, 3) and out.indices.dtype == torch.int64
        assert out.feature_acts is None
    else:
        assert out.values is None and out.feature_acts.shape == (*lead, 13)


@pytest.mark.parametrize("activation", ACTS)
def test_encode_decode_sparse_roundtrip(activation):
    sae = _sae(activation)
    x = torch.randn(4, 2, 7, dtype=torch.float64)
    v, i = sae.encode_sparse(x)
    assert v.shape[:-1] == (4, 2) and i.dtype == torch.int64
    assert_close(
        sae.decode_sparse(v, i), sae(x).reconstruction, "decode_sparse", rtol=1e-12, atol=1e-12
    )
    assert_close(sae.decode(sae.encode(x)), sae(x).reconstruction, "decode", rtol=1e-12, atol=1e-12)


def test_topk_k_equals_d_sae_and_k_one():
    for k in (1, 13):
        sae = _sae("topk", k=k)
        out = sae(torch.randn(1, 7, dtype=torch.float64))
        assert out.values.shape == (1, k)
        assert sorted(out.indices[0].tolist()) == sorted(set(out.indices[0].tolist()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    sae = SparseAutoencoder(8, 24, k=4, dtype=dtype, backend="torch")
    x = torch.randn(3, 8).to(dtype)
    out = sae(x)
    assert out.reconstruction.dtype == dtype and out.values.dtype == dtype
    assert sae.dtype == dtype and sae.cfg.dtype == str(dtype).removeprefix("torch.")


def test_gradients_flow_to_every_parameter():
    for activation in ACTS:
        sae = _sae(activation, dtype=torch.float32)
        x = torch.randn(16, 7)
        (sae(x).reconstruction - x).pow(2).sum().backward()
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            g = getattr(sae, name).grad
            assert g is not None and g.abs().sum() > 0, f"{activation}: no grad for {name}"


def test_batchtopk_inference_threshold_only_in_eval():
    sae = _sae("batchtopk", k=2)
    x = torch.randn(5, 7, dtype=torch.float64)
    train_acts = sae.encode(x)
    assert int((train_acts != 0).sum()) <= 10
    sae.batchtopk_threshold = 0.0
    sae.eval()
    pre = ref.pre_activations(x, sae.W_enc, sae.b_enc, sae.b_dec)
    assert_close(sae.encode(x), torch.relu(pre), "eval acts", rtol=0, atol=0)
    sae.train()
    assert torch.equal(sae.encode(x), train_acts)


def test_backends_and_dispatch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a plain CPU machine
    native = ["native"] if sae_fast.NATIVE_AVAILABLE else []
    assert sae_fast.available_backends("cpu") == [*native, "torch"]
    assert SparseAutoencoder(4, 8, k=2, backend="torch").backend == "torch"
    assert SparseAutoencoder(4, 8, k=2).active_backend == (native or ["torch"])[0]
    with pytest.raises(BackendUnavailableError, match="backend 'triton' is not available"):
        SparseAutoencoder(4, 8, k=2, backend="triton")
    with pytest.raises(BackendUnavailableError, match="CPU tensors only, got meta"):
        SparseAutoencoder(4, 8, k=2, backend="native", device="meta")
    with pytest.raises(BackendUnavailableError, match="needs a CUDA device"):
        SparseAutoencoder(4, 8, k=2, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert SparseAutoencoder(4, 8, k=2, backend="triton").active_backend == "triton"
    assert sae_fast.available_backends("cpu") == [*native, "torch", "triton"]  # never auto
    with pytest.raises(BackendUnavailableError, match="not torch.float64"):
        SparseAutoencoder(4, 8, k=2, backend="triton", dtype=torch.float64)
    assert sae_fast.available_backends("cuda", torch.float64)[0] != "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ConfigError, match="unknown backend 'cuda'"):
        SparseAutoencoder(4, 8, k=2, backend="cuda")
    sae = SparseAutoencoder(4, 8, k=2)
    monkeypatch.setenv("SAE_FAST_BACKEND", "triton")
    with pytest.raises(BackendUnavailableError):
        sae(torch.randn(2, 4))
    monkeypatch.setenv("SAE_FAST_BACKEND", "bogus")
    with pytest.raises(ConfigError, match="SAE_FAST_BACKEND"):
        sae(torch.randn(2, 4))
    monkeypatch.setenv("SAE_FAST_BACKEND", "torch")
    assert sae(torch.randn(2, 4)).reconstruction.shape == (2, 4)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"k": 0}, ConfigError, "k must be >= 1"),
        ({"k": 14}, ConfigError, r"k must be <= d_sae \(13\)"),
        ({"k": 2.5}, ConfigError, "k must be an integer"),
        ({"k": None}, ConfigError, "needs k"),
        ({"activation": "gelu"}, ConfigError, "unknown activation 'gelu'"),
        ({"backend": "gpu"}, ConfigError, "unknown backend 'gpu'"),
        ({"dtype": torch.int32}, ConfigError, "floating dtype"),
        ({"dtype": "float8"}, ConfigError, "unknown dtype"),
        ({"d_in": 0}, ConfigError, "d_in must be >= 1"),
    ],
)
def test_bad_constructor_arguments(kwargs, err, match):
    args = {"d_in": 7, "d_sae": 13, "k": 3, **kwargs}
    with pytest.raises(err, match=match):
        SparseAutoencoder(**args)


def test_bad_forward_inputs():
    sae = _sae("topk", dtype=torch.float32)
    with pytest.raises(ValueError, match=r"last dim 7, got shape \(2, 8\)"):
        sae(torch.randn(2, 8))
    with pytest.raises(TypeError, match="dtype torch.float64 but the SAE's parameters are "):
        sae(torch.randn(2, 7, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating tensor"):
        sae(torch.ones(2, 7, dtype=torch.int64))
    with pytest.raises(ValueError, match="is on meta but the SAE is on cpu"):
        sae(torch.randn(2, 7, device="meta"))
    with pytest.raises(ValueError, match="empty"):
        sae(torch.randn(0, 7))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        sae([[0.0] * 7])
    v = torch.rand(2, 3)
    with pytest.raises(IndexError, match=r"indices must be in \[0, 13\), got range \[0, 13\]"):
        sae.decode_sparse(v, torch.tensor([[0, 1, 13], [2, 3, 4]]))
    with pytest.raises(IndexError, match="got range"):
        sae.decode_sparse(v, torch.tensor([[0, -1, 2], [2, 3, 4]]))
    with pytest.raises(TypeError, match="int64"):
        sae.decode_sparse(v, torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="same shape"):
        sae.decode_sparse(v, torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="last dim 13"):
        sae.decode(torch.randn(2, 12))

"""Triton sparse decoder and sparse backward pieces against the reference formulas."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DEVICE
from tests.helpers import assert_close

pytest.importorskip("triton", reason="triton is not installed")
td = pytest.importorskip("sae_fast.ops.triton_decoder")
from sae_fast.ops import reference as ref  # noqa: E402
from sae_fast.ops.autograd import feature_segments  # noqa: E402

CASES = [(1, 97, 1031, 1), (33, 97, 1031, 7), (33, 97, 1031, 64), (5, 7, 13, 13)]


def _case(B, d_in, d_sae, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_enc = torch.randn(d_in, d_sae, generator=g)
    b_dec = torch.randn(d_in, generator=g)
    x = torch.randn(B, d_in, generator=g)
    v = torch.rand(B, k, generator=g)
    v[:, -1] = 0.0  # a ReLU'd value: masked in dL/dpre, still a (zero) decoder term
    i = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(B)])
    grad = torch.randn(B, d_in, generator=g)
    return [t.to(DEVICE) for t in (W_dec, W_enc, b_dec, x, v, i, grad)]


@pytest.mark.parametrize("B,d_in,d_sae,k", CASES)
def test_sparse_decode_matches_reference(B, d_in, d_sae, k):
    W_dec, _, b_dec, _, v, i, _ = _case(B, d_in, d_sae, k)
    assert_close(
        td.decode_sparse(v, i, W_dec, b_dec),
        ref.decode_sparse(v, i, W_dec, b_dec),
        "recon",
        rtol=1e-5,
        atol=1e-5,
    )


def test_sparse_decode_accepts_a_transposed_dictionary():
    _, W_enc, b_dec, _, v, i, _ = _case(4, 7, 13, 3)
    assert_close(
        td.decode_sparse(v, i, W_enc.t(), b_dec),
        ref.decode_sparse(v, i, W_enc.t().contiguous(), b_dec),
        "W_enc.T decode",
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("B,d_in,d_sae,k", CASES)
def test_backward_pieces_match_explicit_formulas(B, d_in, d_sae, k):
    W_dec, W_enc, b_dec, x, v, i, g = _case(B, d_in, d_sae, k, seed=B + k)
    want = ref.topk_backward(g, x, v, i, W_enc, W_dec, b_dec)
    dv = td.grad_values(g, i, W_dec)
    assert_close(dv, torch.einsum("bd,bjd->bj", g, W_dec[i]), "dL/dv", rtol=1e-4, atol=1e-4)
    perm, offsets = feature_segments(i, d_sae)
    dW_dec, _ = td.feature_reduce(perm, offsets, v, g, with_sum=False)
    assert_close(dW_dec, want.W_dec, "dL/dW_dec", rtol=1e-5, atol=1e-5)
    d_pre = dv * (v > 0)
    dW_enc_t, db_enc = td.feature_reduce(perm, offsets, d_pre, x - b_dec, with_sum=True)
    assert_close(dW_enc_t.t(), want.W_enc, "dL/dW_enc", rtol=1e-4, atol=1e-4)
    assert_close(db_enc, want.b_enc, "dL/db_enc", rtol=1e-4, atol=1e-4)
    db_dec = g.sum(0) + ref.b_dec_grad_through_encoder(W_enc, db_enc)
    assert_close(db_dec, want.b_dec, "dL/db_dec", rtol=1e-4, atol=1e-3)


def test_feature_reduce_is_deterministic_with_repeated_features():
    _, _, _, _, v, _, g = _case(64, 16, 8, 4)
    i = torch.randint(0, 3, (64, 4), device=DEVICE)  # heavy collisions on 3 features
    perm, offsets = feature_segments(i, 8)
    a, _ = td.feature_reduce(perm, offsets, v, g, with_sum=False)
    b, _ = td.feature_reduce(perm.clone(), offsets.clone(), v.clone(), g.clone(), with_sum=False)
    assert torch.equal(a, b)
    want = torch.zeros(8, 16, dtype=torch.float64, device=DEVICE)
    want.index_add_(0, i.reshape(-1), (v.unsqueeze(-1) * g.unsqueeze(1)).reshape(-1, 16).double())
    assert_close(a, want, "collisions", rtol=1e-5, atol=1e-5)
    assert not a[3:].any()  # features nobody chose get exact zeros

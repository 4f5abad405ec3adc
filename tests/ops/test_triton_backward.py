"""One-pass Triton TopK backward against the reference's explicit backward (CPU interpreter
here, real kernels on a GPU): values of every gradient on awkward shapes, one sort only,
results in the parameters' dtype and layout, bitwise determinism."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DEVICE
from tests.helpers import assert_close, backward_case

pytest.importorskip("triton", reason="triton is not installed")
tb = pytest.importorskip("sae_fast.ops.triton_backward")
from sae_fast.ops import autograd as ag  # noqa: E402
from sae_fast.ops import reference as ref  # noqa: E402


def _case(B, d_in, d_sae, k, dtype=torch.float32, seed=0):
    p, x, v, i, grad, extra = backward_case(B, d_in, d_sae, k, dtype, seed, device=DEVICE)
    return p, x, (v, i), grad, extra


@pytest.mark.parametrize("B,d_in,d_sae,k", [(1, 97, 1031, 1), (33, 97, 1031, 7), (5, 7, 13, 13)])
@pytest.mark.parametrize("with_extra", [False, True])
def test_every_gradient_matches_the_reference(B, d_in, d_sae, k, with_extra):
    p, x, (v, i), grad, extra = _case(B, d_in, d_sae, k)
    extra = extra if with_extra else None
    d_pre, dW_enc, db_enc, dW_dec, db_dec = tb.sparse_backward(
        grad, extra, x, p["W_enc"], p["b_dec"], p["W_dec"], v, i
    )
    want = ref.topk_backward(grad, x, v, i, p["W_enc"], p["W_dec"], p["b_dec"], extra)
    tol = dict(rtol=1e-4, atol=1e-5)
    assert_close(d_pre, want.d_values, "d_pre", **tol)
    assert_close(dW_enc, want.W_enc, "W_enc.grad", **tol)
    assert_close(db_enc, want.b_enc, "b_enc.grad", **tol)
    assert_close(dW_dec, want.W_dec, "W_dec.grad", **tol)
    assert_close(db_dec, want.b_dec, "b_dec.grad", **tol)
    assert dW_enc.is_contiguous() and dW_enc.shape == p["W_enc"].shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_written_in_the_parameters_dtype(dtype):
    p, x, (v, i), grad, _ = _case(33, 16, 257, 5, dtype=dtype, seed=3)
    out = tb.sparse_backward(grad, None, x, p["W_enc"], p["b_dec"], p["W_dec"], v, i)
    want = ref.topk_backward(
        grad.double(), x.double(), v.double(), i,
        *(p[n].double() for n in ("W_enc", "W_dec", "b_dec")),
    )  # fmt: skip
    for name, got, exp in zip(("W_enc", "b_enc", "W_dec", "b_dec"), out[1:], want[1:], strict=True):
        assert got.dtype == dtype, name
        assert_close(got, exp, f"{name}.grad {dtype}", rtol=2e-2, atol=2e-2)


def test_one_sort_serves_every_gradient(monkeypatch):
    calls = []
    real = tb.feature_segments

    def counting(indices, d_sae):
        calls.append(d_sae)
        return real(indices, d_sae)

    monkeypatch.setattr(tb, "feature_segments", counting)
    monkeypatch.setattr(ag, "feature_segments", counting)
    from sae_fast import SparseAutoencoder

    sae = SparseAutoencoder(16, 64, k=4, backend="triton", device=DEVICE)
    x = torch.randn(9, 16, device=DEVICE)
    out = sae(x)
    ((out.reconstruction - x) ** 2).sum().backward()
    assert calls == [64], calls
    assert all(t.grad is not None for t in sae.parameters())


def test_backward_is_bitwise_deterministic():
    p, x, (v, i), grad, extra = _case(64, 33, 300, 9, seed=5)
    a = tb.sparse_backward(grad, extra, x, p["W_enc"], p["b_dec"], p["W_dec"], v, i)
    b = tb.sparse_backward(grad, extra, x, p["W_enc"], p["b_dec"], p["W_dec"], v, i)
    for name, s, t in zip(("d_pre", "W_enc", "b_enc", "W_dec", "b_dec"), a, b, strict=True):
        assert torch.equal(s, t), name

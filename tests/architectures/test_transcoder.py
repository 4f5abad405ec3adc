"""Transcoders of every architecture, on every backend: the output against the formula
written out here (no centring by b_dec, d_out != d_in, the skip term), every gradient against
the torch backend's, and the scale folding exact."""

from __future__ import annotations

import pytest
import torch

import sae_fast
from sae_fast import SparseAutoencoder
from tests.conftest import DEVICE
from tests.helpers import assert_close, backend_device, reference_code

D_IN, D_SAE, D_OUT, K = 11, 37, 6, 5
ARCHS = {"topk": K, "batchtopk": K, "relu": None, "jumprelu": None, "gated": None}
BACKENDS = ["torch"] + [
    b
    for b in ("native", "triton")
    if b in sae_fast.available_backends(DEVICE if b == "triton" else "cpu")
]


def _transcoder(activation: str, backend: str, skip: bool, seed: int = 0) -> SparseAutoencoder:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(
        D_IN, D_SAE, activation=activation, k=ARCHS[activation], backend=backend,
        device=backend_device(backend), transcoder=True, d_out=D_OUT, skip=skip,
    )  # fmt: skip
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name not in ("W_enc", "W_dec"):
                p.normal_(0, 0.2)
        if sae.threshold is not None:
            sae.threshold.uniform_(0.0, 0.2)
    return sae


def _formula(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """y_hat = code(x @ W_enc + b_enc) @ W_dec + b_dec (+ x @ W_skip.T): the input is not
    centred (SAELens's transcoders)."""
    zero = torch.zeros(D_IN, device=x.device)
    if sae.activation == "gated":
        code = sae.arch.code(sae, *sae.arch.paths(sae, x))
    else:
        code = reference_code(sae.activation, x, sae.W_enc, sae.b_enc, zero, sae.k, sae.threshold)
    out = code @ sae.W_dec + sae.b_dec
    return out if sae.W_skip is None else out + x @ sae.W_skip.t()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", list(ARCHS))
@pytest.mark.parametrize("skip", [False, True])
def test_output_follows_the_formula_and_gradients_match_torch(backend, activation, skip):
    sae = _transcoder(activation, backend, skip)
    ref = _transcoder(activation, "torch", skip)
    ref.load_state_dict(sae.state_dict())
    x = torch.randn(9, D_IN, device=sae.device)
    y = torch.randn(9, D_OUT, device=sae.device)
    out = sae(x).reconstruction
    assert out.shape == (9, D_OUT)
    with torch.no_grad():
        assert_close(out, _formula(sae, x), "output", rtol=1e-5, atol=1e-5)
    for m in (sae, ref):
        (m(x).reconstruction - y).pow(2).sum().backward()
    for name, p in ref.named_parameters():
        got = dict(sae.named_parameters())[name].grad
        if p.grad is None:
            assert got is None or not got.any(), name
            continue
        assert_close(got, p.grad, f"d{name}", rtol=1e-4, atol=1e-5)
    if skip:
        assert sae.W_skip.grad.abs().sum() > 0


@pytest.mark.parametrize("activation", list(ARCHS))
def test_folding_both_scales_is_exact(activation):
    sae = _transcoder(activation, "torch", skip=True).double()
    x = torch.randn(20, D_IN, dtype=torch.float64)
    s_in, s_out = 3.7, 0.21
    with torch.no_grad():
        want = sae(x * s_in).reconstruction / s_out
        codes = sae.encode(x * s_in)
        sae.fold_input_scale(s_in, s_out)
        assert_close(sae.encode(x), codes, "code", rtol=1e-12, atol=1e-12)
        assert_close(sae(x).reconstruction, want, "output", rtol=1e-12, atol=1e-12)

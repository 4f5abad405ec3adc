"""AbsTopK against its formula written out here (signed top-k by magnitude, SAELens's
"abstopk"), on every backend and in each dtype, its gradients against autograd through that
formula, deterministic ties, and a short training run."""

from __future__ import annotations

import pytest
import torch

from sae_fast import SparseAutoencoder
from sae_fast.errors import ConfigError
from sae_fast.ops.dispatch import available_backends
from tests.architectures.helpers import synthetic_trainer
from tests.helpers import assert_close


def _sae(d_in=7, d_sae=13, k=4, dtype=torch.float64, seed=0) -> SparseAutoencoder:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(d_in, d_sae, "abstopk", k=k, backend="torch", dtype=dtype)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    return sae


def _formula(W_enc, b_enc, W_dec, b_dec, x, k):
    """Pre-activations; keep the k of largest |value| with their sign; decode."""
    pre = (x - b_dec) @ W_enc + b_enc
    idx = pre.abs().topk(k, dim=-1).indices
    acts = torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx))
    return acts, acts @ W_dec + b_dec


def test_encode_and_forward_follow_the_formula_on_every_backend():
    sae = _sae()
    x = torch.randn(9, 7, dtype=torch.float64)
    acts, recon = _formula(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, x, 4)
    assert (acts < 0).any() and (acts > 0).any()  # signed: no ReLU
    with torch.no_grad():
        assert_close(sae.encode(x), acts, "acts", rtol=1e-12, atol=1e-12)
        assert_close(sae(x).reconstruction, recon, "recon", rtol=1e-12, atol=1e-12)
    for dtype in (torch.float32, torch.bfloat16):
        low = _sae(dtype=dtype)
        xl = x.to(dtype)
        want = _formula(*(t.float() for t in (low.W_enc, low.b_enc, low.W_dec, low.b_dec)),
                        xl.float(), 4)[1]  # fmt: skip
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        for backend in available_backends("cpu", dtype):
            low.backend = backend
            with torch.no_grad():
                got = low(xl).reconstruction.float()
            assert_close(got, want, f"{backend} {dtype}", rtol=tol, atol=tol)


def test_gradients_match_autograd_through_the_formula():
    sae = _sae(seed=1)
    x = torch.randn(6, 7, dtype=torch.float64)
    w = torch.randn(6, 7, dtype=torch.float64)
    (sae(x).reconstruction * w).sum().backward()
    leaves = [p.detach().clone().requires_grad_(True) for p in
              (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]  # fmt: skip
    (_formula(*leaves, x, 4)[1] * w).sum().backward()
    ours = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    for name, p, ref in zip(("W_enc", "b_enc", "W_dec", "b_dec"), ours, leaves, strict=True):
        assert_close(p.grad, ref.grad, f"d{name}", rtol=1e-10, atol=1e-10)


def test_ties_break_by_the_lower_index_bitwise():
    sae = _sae(d_in=4, d_sae=6, k=2)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_dec.zero_()
        sae.b_enc.copy_(torch.tensor([1.0, -2.0, 2.0, -2.0, 0.5, 2.0], dtype=torch.float64))
    _values, indices = sae.encode_sparse(torch.zeros(3, 4, dtype=torch.float64))
    assert indices.tolist() == [[1, 2]] * 3  # |-2| = |2| = |2|: the lowest two indices
    with pytest.raises(ConfigError, match="needs k"):
        SparseAutoencoder(4, 6, "abstopk", k=None)


def test_trains_every_parameter_and_loss_falls(tmp_path):
    trainer = synthetic_trainer(tmp_path, activation="abstopk", steps=40)
    before = {n: p.detach().clone() for n, p in trainer.sae.named_parameters()}
    first = trainer.train_step()
    assert "auxk" not in first and torch.isfinite(torch.tensor(first["mse"]))
    for name, p in trainer.sae.named_parameters():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not move"
    for _ in range(30):
        last = trainer.train_step()
    assert last["mse"] < first["mse"]
    result = trainer.run()
    assert result.sae.activation == "abstopk"
    back = SparseAutoencoder.load(result.sae_dir)
    assert back.activation == "abstopk" and back.k == 4

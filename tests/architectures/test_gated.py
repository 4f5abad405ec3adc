"""Gated SAE against its formula written out here, the SAELens layout (b_gate, r_mag, b_mag)
both ways, and training: every parameter learns, the L1 and auxiliary terms are logged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sae_fast import SparseAutoencoder
from tests.architectures.helpers import synthetic_trainer
from tests.helpers import assert_close


def _gated(d_in=7, d_sae=13, seed=0, dtype=torch.float64) -> SparseAutoencoder:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(d_in, d_sae, activation="gated", backend="torch", dtype=dtype)
    with torch.no_grad():
        for name in ("b_enc", "r_mag", "b_mag", "b_dec"):
            getattr(sae, name).normal_(0, 0.3)
    return sae


def _formula(sae: SparseAutoencoder, x: torch.Tensor, centre: bool = True) -> torch.Tensor:
    """Rajamanoharan et al. 2024, eq. 5-6: gate and magnitude paths sharing W_enc."""
    xin = x - sae.b_dec if centre else x
    gate = xin @ sae.W_enc + sae.b_enc
    mag = xin @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag
    return (gate > 0).to(x.dtype) * torch.relu(mag)


@pytest.mark.parametrize("lead", [(1,), (6,), (2, 3)])
def test_encode_and_decode_follow_the_formula(lead):
    sae = _gated()
    x = torch.randn(*lead, 7, dtype=torch.float64)
    want = _formula(sae, x.reshape(-1, 7))
    assert (want > 0).any() and (want == 0).any()
    assert_close(sae.encode(x).reshape(-1, 13), want, "acts", rtol=1e-12, atol=1e-12)
    out = sae(x)
    assert_close(out.reconstruction.reshape(-1, 7), want @ sae.W_dec + sae.b_dec, "recon",
                 rtol=1e-12, atol=1e-12)  # fmt: skip
    v, i = sae.encode_sparse(x)
    assert_close(sae.decode_sparse(v, i), out.reconstruction, "sparse", rtol=1e-12, atol=1e-12)


def test_saelens_layout_both_ways(tmp_path):
    sae = _gated(dtype=torch.float32)
    path = sae.save(tmp_path / "g")
    cfg = json.loads((path / "cfg.json").read_text())
    tensors = load_file(str(path / "sae_weights.safetensors"))
    assert cfg["architecture"] == "gated"
    assert set(tensors) == {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"}
    assert torch.equal(tensors["b_gate"], sae.b_enc.detach())
    back = SparseAutoencoder.load(path, backend="torch")
    x = torch.randn(9, 7)
    assert torch.equal(back.encode(x), sae.encode(x))
    # a SAELens directory that does not centre its input: both biases are folded, exactly
    cfg["apply_b_dec_to_input"] = False
    (path / "cfg.json").write_text(json.dumps(cfg))
    folded = SparseAutoencoder.load(path, backend="torch", dtype="float64")
    x64 = x.double()
    want = _formula(sae.double(), x64, centre=False)
    assert_close(folded.encode(x64), want, "folded", rtol=1e-9, atol=1e-9)


def test_training_moves_every_gated_parameter_and_logs_its_terms(tmp_path):
    trainer = synthetic_trainer(tmp_path, activation="gated", l1_coefficient=0.1, l1_warmup_steps=0)
    before = {n: p.detach().clone() for n, p in trainer.sae.named_parameters()}
    logs = trainer.train_step()
    assert {"mse", "l1", "aux_recon", "fvu", "l0"} <= set(logs)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    for name, p in trainer.sae.named_parameters():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not move"
    result = trainer.run()
    assert result.sae.activation == "gated" and result.sae.r_mag.shape == (64,)

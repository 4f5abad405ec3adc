"""Matryoshka BatchTopK: BatchTopK's code, the nested prefix losses against a hand
computation, the widths' validation, training from `--matryoshka-widths`, and the saved
form: a JumpReLU SAE for SAELens, our architecture back for us."""

from __future__ import annotations

import json

import pytest
import torch

from sae_fast import SparseAutoencoder
from sae_fast.architectures.matryoshka import parse_widths
from sae_fast.errors import ConfigError
from sae_fast.ops import reference as ref
from tests.architectures.helpers import synthetic_trainer
from tests.helpers import assert_close

WIDTHS = {"matryoshka_widths": [4, 16]}


def _sae(**kw) -> SparseAutoencoder:
    torch.manual_seed(0)
    return SparseAutoencoder(8, 32, activation="matryoshka_batchtopk", k=3, options=WIDTHS, **kw)


def test_code_is_batchtopk_in_training_and_the_threshold_at_inference():
    sae = _sae(backend="torch")
    x = torch.randn(6, 8)
    pre = ref.pre_activations(x, sae.W_enc, sae.b_enc, sae.b_dec)
    assert torch.equal(sae.encode(x), ref.batchtopk_act(pre, 3))
    sae.batchtopk_threshold = 0.2
    sae.eval()
    assert torch.equal(sae.encode(x), ref.jumprelu_act(pre, torch.full((32,), 0.2)))


def test_prefix_losses_match_a_hand_computation(tmp_path):
    trainer = synthetic_trainer(
        tmp_path, d_in=8, d_sae=32, k=3, activation="matryoshka_batchtopk",
        matryoshka_widths="4,16", auxk_coefficient=0.0,
    )  # fmt: skip
    sae = trainer.sae
    assert sae.cfg.options == WIDTHS
    x = torch.randn(10, 8)
    out, terms = sae.arch.train_terms(trainer, x, x)
    acts = out.feature_acts
    want = sum((acts[:, :w] @ sae.W_dec[:w] + sae.b_dec - x).pow(2).sum(-1).mean() for w in (4, 16))
    assert_close(terms["inner_mse"], want, "inner_mse", rtol=1e-5, atol=1e-6)
    logs = trainer.train_step()
    assert "inner_mse" in logs and sae.batchtopk_threshold is not None


@pytest.mark.parametrize(
    "text,match",
    [
        (None, "needs --matryoshka-widths"),
        ("4,x", "must be integers"),
        ("16,4", "strictly increasing"),
        ("0,4", "strictly increasing"),
        ("4,40", "below d_sae"),
        ("32", "at least one width below"),
    ],
)
def test_bad_widths_are_one_clear_error(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_widths(text, 32)
    assert parse_widths("4,16,32", 32) == [4, 16]  # SAELens's trailing d_sae is dropped


def test_saved_as_jumprelu_for_saelens_and_as_itself_for_us(tmp_path):
    sae = _sae()
    sae.batchtopk_threshold = 0.15
    path = sae.save(tmp_path / "m")
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and "k" not in cfg  # SAELens's inference form
    back = SparseAutoencoder.load(path)
    assert back.activation == "matryoshka_batchtopk" and back.cfg.options == WIDTHS
    assert back.k == 3 and back.batchtopk_threshold == pytest.approx(0.15)
    # without our block, the same files are the JumpReLU SAE SAELens reads: same inference code
    del cfg["sae_fast"]
    (path / "cfg.json").write_text(json.dumps(cfg))
    plain = SparseAutoencoder.load(path)
    assert plain.activation == "jumprelu"
    x = torch.randn(7, 8)
    back.eval()
    assert torch.equal(plain.encode(x), back.encode(x))
    with pytest.raises(ConfigError, match="needs options"):
        SparseAutoencoder(8, 32, activation="matryoshka_batchtopk", k=3)
    with pytest.raises(ConfigError, match="takes options"):
        SparseAutoencoder(8, 32, activation="topk", k=3, options=WIDTHS)

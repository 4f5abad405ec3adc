"""An SAELens SAE named by its TransformerLens hook reads sae_fast's equivalent Hugging Face
hook, matched to what TransformerLens gave it: centred for a LayerNorm model whose writing
weights TransformerLens centred (gpt2-small-res-jb's registry setting), as is otherwise;
saved back under its own name. (tests/formats/transformer_lens_check.py checks the
transforms against TransformerLens itself.)"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sae_fast import SparseAutoencoder, evaluate
from sae_fast.data.activations import load_model
from sae_fast.data.fingerprint import check_model
from sae_fast.data.hooks import capture, run_to_hook
from sae_fast.errors import FormatError

D, D_SAE = 32, 48


def _saelens_sae(path, hook: str, kwargs: dict | None) -> None:
    g = torch.Generator().manual_seed(0)
    t = {
        "W_enc": torch.randn(D, D_SAE, generator=g) * 0.3,
        "b_enc": torch.zeros(D_SAE),
        "W_dec": torch.randn(D_SAE, D, generator=g) * 0.3,
        "b_dec": torch.randn(D, generator=g),
    }
    meta = {"model_name": "tiny-gpt2", "hook_name": hook, "sae_lens_version": "6.54.12"}
    if kwargs is not None:
        meta["model_from_pretrained_kwargs"] = kwargs
    cfg = {
        "architecture": "topk",
        "k": 4,
        "d_in": D,
        "d_sae": D_SAE,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": meta,
    }
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(t, str(path / "sae_weights.safetensors"))


@pytest.mark.parametrize("kwargs,centred", [({"center_writing_weights": True}, True),
                                            ({"center_writing_weights": False}, False),
                                            (None, False)])  # fmt: skip
def test_centring_follows_the_metadata_on_a_layer_norm_model(tmp_path, gpt2_dir, kwargs, centred):
    _saelens_sae(tmp_path / "sae", "blocks.1.hook_resid_pre", kwargs)
    sae = SparseAutoencoder.load(tmp_path / "sae", backend="torch")
    assert sae.cfg.hook_name == "layers.0.residual"  # blocks.1.hook_resid_pre
    plain = SparseAutoencoder.load(tmp_path / "sae", backend="torch")
    model, tok = load_model(str(gpt2_dir))
    check_model(sae, model)
    assert sae.cfg.input_norm == (("center",) if centred else ())
    ids = tok("the function returns a list", return_tensors="pt")["input_ids"]
    with capture(model, "layers.0.residual") as box, torch.no_grad():
        x = run_to_hook(model, box, input_ids=ids)[0]
    mu = x.mean(-1, keepdim=True) if centred else torch.zeros_like(x[:, :1])
    with torch.no_grad():
        assert torch.equal(sae.encode(x), plain.encode(x - mu))
        want = plain(x - mu).reconstruction + mu
        torch.testing.assert_close(sae(x).reconstruction, want, rtol=1e-6, atol=1e-6)
    # saved back: its TransformerLens name and kwargs, no SAELens normalisation mode
    back = sae.save(tmp_path / "back")
    cfg = json.loads((back / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_pre"
    assert cfg["normalize_activations"] == "none"
    assert cfg["metadata"].get("model_from_pretrained_kwargs") == kwargs
    again = SparseAutoencoder.load(back, backend="torch")
    check_model(again, model)
    assert again.cfg.input_norm == sae.cfg.input_norm
    if centred:  # eval reads the model's activations through the same binding
        loaded = SparseAutoencoder.load(back, backend="torch")
        report = evaluate(loaded, model=model, tokenizer=tok, max_tokens=64, downstream=False)
        assert loaded.cfg.input_norm == ("center",) and report.fvu == report.fvu


def test_unmatched_activations_are_refused(tmp_path, gpt2_dir):
    _saelens_sae(tmp_path / "ln", "blocks.0.ln2.hook_normalized", {"fold_ln": True})
    sae = SparseAutoencoder.load(tmp_path / "ln", backend="torch")
    assert sae.cfg.hook_name == "layers.0.mlp_in"
    model, _ = load_model(str(gpt2_dir))
    check_model(sae, model)  # a norm with weight 1 and bias 0: equal as they are
    assert sae.cfg.input_norm == ()
    with torch.no_grad():
        model.transformer.h[0].ln_2.weight.mul_(1.5)
    with pytest.raises(FormatError, match="norm's weights"):
        check_model(SparseAutoencoder.load(tmp_path / "ln"), model)

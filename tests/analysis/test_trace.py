"""Tracing: attributions add up to the traced output's linearisation, the gradient is the
model's, labels are attached, and `sae-fast trace` prints a table or JSON."""

from __future__ import annotations

import json

import pytest
import torch

from sae_fast import ConfigError, SparseAutoencoder, trace
from sae_fast.analysis.labels import Labels
from sae_fast.cli import main
from sae_fast.data.activations import load_model
from sae_fast.data.hooks import capture, run_to_hook
from tests.helpers import logit_gradient


def test_causal_trace_sums_to_gradient_dot_activation(gpt2_sae, gpt2_dir):
    sae = SparseAutoencoder.load(gpt2_sae[0])
    model, tok = load_model(str(gpt2_dir))
    text, pos = "the function returns a list", 3
    labels = Labels(sae.d_sae)
    res = trace(model, tok, sae, text, pos, labels=labels)
    ids = tok(text, return_tensors="pt")["input_ids"]
    with capture(model, "layers.0.residual") as box, torch.no_grad():
        x = run_to_hook(model, box, input_ids=ids)[0, pos]
    logits = model(input_ids=ids).logits[0, pos]
    tid = int(logits.argmax())
    assert res.output_value == pytest.approx(float(logits[tid]), rel=1e-5)

    g = logit_gradient(model, ids, pos, tid, "layers.0.residual", 32)
    assert res.total == pytest.approx(float(x @ g), rel=2e-2, abs=2e-3)
    assert len(res.features) == int((sae.encode(x.unsqueeze(0)) != 0).sum())
    top = res.features[0]
    direct = top.activation * float(sae.W_dec[top.feature] @ g)
    assert top.attribution == pytest.approx(direct, rel=2e-2, abs=2e-3)
    assert abs(res.features[0].attribution) >= abs(res.features[-1].attribution)


def test_encoder_trace_with_labels_and_bad_positions(minilm_sae):
    sae_dir, _ = minilm_sae
    sae = SparseAutoencoder.load(sae_dir)
    model, tok = load_model("embedded")
    res0 = trace(model, tok, sae, "the file does not exist", 2)
    f = res0.features[0].feature
    labels = Labels(sae.d_sae)
    labels.set(f, "auto idea", source="auto")
    res = trace(model, tok, sae, "the file does not exist", 2, labels=labels)
    assert res.features[0].label == "auto idea" and res.features[0].label_source == "auto"
    assert res.total == pytest.approx(res.output_value, rel=1e-4)
    assert "(auto)" in res.table() and "SAE error term" in res.table()
    n = len(res.tokens)
    for bad in (n, -n - 1, "2"):
        with pytest.raises(ConfigError, match="position must be an integer"):
            trace(model, tok, sae, "the file does not exist", bad)


def test_cli_trace_table_and_json(minilm_sae, gpt2_sae, capsys):
    assert main(["trace", str(minilm_sae[0]), "--text", "not found", "--position", "1"]) == 0
    assert "attribution" in capsys.readouterr().out
    argv = ["trace", str(gpt2_sae[0]), "--text", "a b c", "--position", "-1", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["output"].startswith("logit of next token") and data["features"]
    argv = ["trace", str(gpt2_sae[0]), "--text", "a b c", "--position", "1", "--target", "abc xyz"]
    assert main(argv) == 2
    assert "not a single token" in capsys.readouterr().err

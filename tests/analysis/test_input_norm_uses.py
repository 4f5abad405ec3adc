"""An SAE with a per-row runtime input normalisation (SAELens's layer_norm) steers and is
traced in the activation's own units: its decoder rows move the output by the row's std."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sae_fast import SparseAutoencoder, steer, trace
from sae_fast.data.activations import load_model
from sae_fast.data.hooks import capture, run_to_hook
from tests.helpers import logit_gradient


def _layer_norm_twin(path) -> SparseAutoencoder:
    sae = SparseAutoencoder.load(path)
    twin = SparseAutoencoder.from_config(
        dataclasses.replace(sae.cfg, input_norm=("layer_norm",)), backend=sae.backend
    )
    twin.load_state_dict(sae.state_dict())
    return twin.eval()


def test_steering_moves_the_activation_by_the_denormalised_rows(gpt2_sae, gpt2_dir):
    sae = _layer_norm_twin(gpt2_sae[0])
    model, tok = load_model(str(gpt2_dir))
    ids = tok("the function returns a list", return_tensors="pt")["input_ids"]
    hook, feats = sae.cfg.hook_name, {3: 2.0, 9: 0.0}
    with torch.no_grad():
        with capture(model, hook) as box:
            x = run_to_hook(model, box, input_ids=ids)[0]
        with steer(model, sae, feats, "clamp"), capture(model, hook) as box:
            got = run_to_hook(model, box, input_ids=ids)[0]
        acts = sae.encode(x)
        new = acts.clone()
        new[:, 3], new[:, 9] = 2.0, 0.0
        want = x + sae.decode(new, like=x) - sae.decode(acts, like=x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_trace_attributions_sum_to_the_output_under_layer_norm(gpt2_sae, gpt2_dir):
    sae = _layer_norm_twin(gpt2_sae[0])
    model, tok = load_model(str(gpt2_dir))
    text, pos = "the function returns a list", 3
    res = trace(model, tok, sae, text, pos)
    ids = tok(text, return_tensors="pt")["input_ids"]
    tid = int(model(input_ids=ids).logits[0, pos].argmax())
    with capture(model, "layers.0.residual") as box, torch.no_grad():
        x = run_to_hook(model, box, input_ids=ids)[0, pos]

    g = logit_gradient(model, ids, pos, tid, "layers.0.residual", 32)
    assert res.total == pytest.approx(float(x @ g), rel=2e-2, abs=2e-3)
    top = res.features[0]
    std = float(x.std())  # the scale of this row under layer_norm
    assert abs(std - 1) > 0.1  # so that the check below tells a missing scale apart
    direct = top.activation * std * float(sae.W_dec[top.feature].detach() @ g)
    assert top.attribution == pytest.approx(direct, rel=2e-2, abs=2e-3)

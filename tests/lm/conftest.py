"""SmolLM2-135M-Instruct (the embedded causal LM) and an SAE trained on it, loaded once per
test session: the tests where a real causal LM's behaviour matters (the downstream score,
steering, monitors over generations, tracing, hooks) use these."""

from __future__ import annotations

import os

import pytest

from sae_fast import TrainConfig
from sae_fast.data.activations import load_model
from sae_fast.training import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HOOK = "layers.9.residual"


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct in float32."""
    return load_model("smollm2")


@pytest.fixture(scope="session")
def smol_sae(tmp_path_factory, smollm2):
    """The TrainResult of an 8x TopK SAE (k=32) at layers.9.residual, 12k tokens, from a
    cache (its activations are then read back for feature reports)."""
    out = tmp_path_factory.mktemp("smolsae")
    cfg = TrainConfig(
        model="smollm2",
        hook=HOOK,
        expansion=8,
        k=32,
        max_tokens=12_000,
        steps=300,
        batch_size=512,
        context_size=128,
        cache=str(out / "activations"),
        out=str(out),
        checkpoint_every=0,
        progress=False,
    )
    return train(cfg)

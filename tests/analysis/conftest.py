"""Small trained SAEs for the analysis tests: one on the embedded MiniLM, one on a tiny
randomly initialised GPT-2 (a causal LM with an unembedding), each trained in seconds."""

from __future__ import annotations

import os

import pytest

from sae_fast import TrainConfig
from sae_fast.training import train
from tests.helpers import SMALL_TRAIN, tiny_gpt2_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SMALL = dict(SMALL_TRAIN, steps=40)


@pytest.fixture(scope="session")
def minilm_sae(tmp_path_factory):
    """(sae_dir, TrainResult) of a TopK SAE 384 -> 768 at layers.3.residual of MiniLM."""
    out = tmp_path_factory.mktemp("minilm")
    result = train(TrainConfig(**SMALL, d_sae=768, out=str(out)))
    return result.sae_dir, result


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    return tiny_gpt2_dir(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def gpt2_sae(tmp_path_factory, gpt2_dir):
    """(sae_dir, TrainResult) of a TopK SAE 32 -> 64 at layers.0.residual of tiny GPT-2."""
    out = tmp_path_factory.mktemp("gpt2sae")
    cfg = TrainConfig(
        **SMALL, model=str(gpt2_dir), hook="layers.0.residual", d_sae=64, out=str(out)
    )
    result = train(cfg)
    return result.sae_dir, result

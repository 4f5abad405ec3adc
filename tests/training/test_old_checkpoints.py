"""Checkpoints written before the architecture interface (commit d791d2a: BatchTopK's
threshold a plain float in trainer_state.json, no topk_threshold buffer) still load and
resume to the weights of an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest

from sae_fast import SparseAutoencoder
from tests.architectures.helpers import synthetic_trainer
from tests.helpers import assert_close

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints-d791d2a"


@pytest.mark.parametrize("activation", ["batchtopk", "jumprelu"])
def test_a_checkpoint_of_before_resumes_like_an_uninterrupted_run(tmp_path, activation):
    ckpt = FIXTURES / activation
    old = SparseAutoencoder.load(ckpt / "sae")
    assert old.activation == activation
    # the recipe those checkpoints were trained with: lr 4e-4, 50 steps of warmup
    cfg = dict(activation=activation, steps=4, checkpoint_every=2, lr=4e-4, warmup_tokens=50 * 128)
    resumed = synthetic_trainer(tmp_path / "resumed", resume=str(ckpt), **cfg)
    assert resumed.step == 2
    if activation == "batchtopk":  # from the old trainer_state.json, into the buffer
        assert resumed.sae.batchtopk_threshold is not None
    got = resumed.run().sae
    want = synthetic_trainer(tmp_path / "fresh", **cfg).run().sae
    for name, t in want.state_dict().items():
        assert_close(got.state_dict()[name], t, name, rtol=1e-6, atol=1e-7)

"""sae_fast's TransformerLens hooks and activation transforms agree with TransformerLens
itself (<= 1e-4 in fp32) on tiny random GPT-2, Pythia, Llama and Gemma 2 models, for each
processing SAELens records, and its refusals fire only where the activations really differ:
transformer_lens_check.py, run in the peer environment (benchmarks/peers/.venv, which
`make test` makes), offline."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import peers
from tests.formats import transformer_lens_check as check

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().with_name("transformer_lens_check.py")


@pytest.fixture(scope="module")
def rows() -> dict[tuple[str, str, str], dict]:
    if not peers.ready():
        if os.environ.get("CI"):
            pytest.fail("CI must make the peer environment: make peers")
        pytest.skip("no peer environment: bash benchmarks/peers/setup.sh")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    run = subprocess.run([str(peers.python()), str(SCRIPT)], capture_output=True, text=True,
                         timeout=300, env=env, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), run.stdout[-2000:]
    result = json.loads(last.removeprefix("RESULT "))
    assert result["failures"] == 0
    return {(r["model"], r["processing"], r["tl_hook"]): r for r in result["rows"]}


def test_every_model_processing_and_hook_was_checked(rows):
    models = ("gpt2", "pythia", "llama", "gemma2")
    for model in models:
        cases = [*check.PROCESSINGS, *(["refactor"] if model == "gpt2" else [])]
        for case in cases:
            for hook in check._tl_hooks(2):
                assert (model, case, hook) in rows, (model, case, hook)
    assert all(r["ok"] for r in rows.values())


def test_centring_where_transformer_lens_centres_and_only_there(rows):
    for model in ("gpt2", "pythia"):  # LayerNorm: the residual stream was centred
        for case in ("cww", "legacy", "refactor"):
            row = rows.get((model, case, "blocks.1.hook_resid_post"))
            if row is None:
                continue
            assert row["kind"] == "center" and row["err"] <= check.TOL
            assert row["plain"] > check.DIFFERENT  # centring mattered
    for model in ("llama", "gemma2"):  # RMSNorm: TransformerLens leaves it, so must we
        row = rows[(model, "cww", "blocks.1.hook_resid_post")]
        assert row["kind"] == "identity" and row["err"] <= check.TOL
        assert row["centred"] > check.DIFFERENT  # centring would have been wrong


def test_value_bias_folding_leaves_attention_output(rows):
    for model in ("gpt2", "pythia"):
        row = rows[(model, "fvb", "blocks.1.hook_attn_out")]
        assert row["kind"] == "identity" and row["err"] <= check.TOL


def test_mlp_input_hooks_undo_the_norm_affine(rows):
    for model in ("gpt2", "pythia", "llama", "gemma2"):
        row = rows[(model, "none", "blocks.1.ln2.hook_normalized")]
        assert row["kind"] == "affine" and row["err"] <= check.TOL < row["plain"]
        assert rows[(model, "none", "blocks.1.mlp.hook_in")]["kind"] == "identity"
        assert rows[(model, "fold_ln", "blocks.1.mlp.hook_in")]["kind"] == "affine"


def test_refusals_fire_where_the_activations_differ(rows):
    assert rows[("gpt2", "none", "hook_embed")]["kind"] == "refused"  # + position embedding
    assert rows[("pythia", "none", "hook_embed")]["kind"] == "identity"  # rotary
    assert rows[("gemma2", "none", "hook_embed")]["kind"] == "identity"  # sqrt(d) scaled
    for hook in ("blocks.0.hook_attn_out", "blocks.1.hook_mlp_out"):  # Gemma 2's post-norms
        row = rows[("gemma2", "none", hook)]
        assert row["kind"] == "refused" and row["plain"] > check.DIFFERENT
    for part in check.REFUSED_NAMES:
        assert rows[("gpt2", "none", f"blocks.0.{part}")]["kind"] == "name refused"
    assert rows[("gpt2", "none", "blocks.0.hook_resid_mid")]["in_transformer_lens"]
    assert not rows[("pythia", "none", "blocks.0.hook_resid_mid")]["in_transformer_lens"]

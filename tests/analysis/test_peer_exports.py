"""The consuming packages read sae_fast's exports: SAEDashboard's own Neuronpedia batch class
rebuilds the exported JSON unchanged, and SAEBench's own `CustomSAEConfig` and
`BaseSAE.check_decoder_norms` accept the SAEBench adapter. They run in the peer environment
(benchmarks/peers, where setup.sh installs sae-dashboard and sae-bench); their evaluations
themselves need TransformerLens models from the Hugging Face Hub, which is offline here."""

from __future__ import annotations

import os
import subprocess

import pytest

from benchmarks import peers
from sae_fast.cli import main

ROOT = peers.HERE.parent.parent
CHECK = """
import json, sys, torch
from sae_dashboard.neuronpedia.neuronpedia_dashboard import (
    NeuronpediaDashboardBatch, NeuronpediaDashboardFeature)
from sae_bench.custom_saes.base_sae import BaseSAE
from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig
from sae_fast import SparseAutoencoder
from sae_fast.formats.saebench import SAEBenchSAE

data = json.load(open(sys.argv[1]))
batch = NeuronpediaDashboardBatch(**data)
back = batch.to_dict()
assert {k: back[k] for k in ("model_id", "layer", "sae_set")} == {
    k: data[k] for k in ("model_id", "layer", "sae_set")}
for ours, theirs in zip(data["features"], back["features"], strict=True):
    for key, value in ours.items():
        assert theirs[key] == value, key
# (the batch's own __eq__ reads a missing attribute in 0.8.0; each feature's __eq__ works)
for f, theirs in zip(batch.features, back["features"], strict=True):
    assert NeuronpediaDashboardFeature(**theirs) == f
print("dashboard", len(batch.features), "features")

sae = SparseAutoencoder.load(sys.argv[2])
bench = SAEBenchSAE(sae)
assert isinstance(bench.cfg, CustomSAEConfig), type(bench.cfg)
assert BaseSAE.check_decoder_norms(bench)
x = torch.randn(2, 7, sae.d_in)
enc = bench.encode(x)
assert bench.W_dec.shape == (bench.cfg.d_sae, bench.cfg.d_in)
assert bench.W_enc.shape == (bench.cfg.d_in, bench.cfg.d_sae)
flat = bench(x.reshape(-1, sae.d_in)).reshape(x.shape)
assert torch.allclose(flat, bench.decode(enc))
print("saebench", bench.cfg.hook_name, bench.cfg.to_dict()["architecture"])
"""


def test_dashboard_and_saebench_read_our_exports(gpt2_sae, tmp_path):
    if not peers.ready():
        if os.environ.get("CI"):
            pytest.fail("CI must make the peer environment: make peers")
        pytest.skip("no peer environment: bash benchmarks/peers/setup.sh")
    sae_dir, _ = gpt2_sae
    out = tmp_path / "np"
    assert main(["export", str(sae_dir), "--out", str(out), "--max-tokens", "2000"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [str(peers.python()), "-c", CHECK, str(out / "batch-0.json"), str(sae_dir)],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dashboard" in r.stdout and "saebench blocks.0.hook_resid_post topk" in r.stdout

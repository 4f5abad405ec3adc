"""Dashboard exports (Neuronpedia / SAEDashboard batch JSON) and the SAEBench adapter, on the
tiny GPT-2 (a causal LM with an unembedding); the consuming packages themselves read them in
tests/test_peer_exports.py."""

from __future__ import annotations

import json

import pytest
import torch

from sae_fast import SparseAutoencoder
from sae_fast.cli import main
from sae_fast.errors import ConfigError
from sae_fast.formats.saebench import SAEBenchSAE, transformer_lens_hook

KEYS = {
    "feature_index", "frac_nonzero", "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
    "n_prompts_total", "n_tokens_in_prompt", "dataset", "activations", "pos_str", "pos_values",
    "neg_str", "neg_values", "logits_hist_data_bar_values", "logits_hist_data_bar_heights",
}  # fmt: skip


def test_neuronpedia_export_from_the_cli(gpt2_sae, tmp_path):
    sae_dir, result = gpt2_sae
    out = tmp_path / "np"
    assert main(["export", str(sae_dir), "--out", str(out), "--max-tokens", "2000"]) == 0
    batch = json.loads((out / "batch-0.json").read_text())
    assert batch["model_id"] == result.sae.cfg.model_name and batch["layer"] == 0
    feats = batch["features"]
    assert feats and all(set(f) == KEYS for f in feats)
    every = [f["feature_index"] for p in sorted(out.glob("batch-*.json"))
             for f in json.loads(p.read_text())["features"]]  # fmt: skip
    assert every == sorted(set(every)) and len(every) <= result.sae.d_sae  # each once, in order
    f = max(feats, key=lambda x: x["frac_nonzero"])
    assert 0 < f["frac_nonzero"] <= 1 and len(f["pos_str"]) == len(f["pos_values"]) == 10
    assert f["pos_values"] == sorted(f["pos_values"], reverse=True)
    assert f["neg_values"] == sorted(f["neg_values"])
    assert sum(f["logits_hist_data_bar_heights"]) == 30522  # the whole vocabulary
    assert len(f["freq_hist_data_bar_values"]) == len(f["freq_hist_data_bar_heights"])
    top = f["activations"][0]
    assert len(top["tokens"]) == len(top["values"]) and max(top["values"]) > 0
    assert all(
        0 <= a["bin_contains"] <= 1 and a["bin_min"] <= a["bin_max"] for a in f["activations"]
    )
    mids = [a for a in f["activations"] if a["bin_min"] < top["bin_min"]]
    for a in mids:  # sampled examples sit inside their bin
        assert a["bin_min"] <= max(a["values"]) + 1e-4
    assert main(["export", str(sae_dir), "--out", str(out), "--ids", "9999"]) == 2


def test_saebench_adapter_shares_weights_and_matches_the_sae(gpt2_sae):
    _, result = gpt2_sae
    sae = result.sae
    bench = SAEBenchSAE(sae)
    norms = sae.W_dec.norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms))  # the saved SAE's are not
    torch.testing.assert_close(bench.W_dec.norm(dim=1), torch.ones_like(norms))
    assert bench.W_enc.shape == (sae.d_in, sae.d_sae) and bench.W_dec.shape == (sae.d_sae, sae.d_in)
    cfg = bench.cfg
    assert (cfg.d_in, cfg.d_sae, cfg.hook_layer) == (sae.d_in, sae.d_sae, 0)
    assert cfg.hook_name == "blocks.0.hook_resid_post" and cfg.dtype == "float32"
    x = torch.randn(2, 5, sae.d_in)
    f = bench.encode(x)
    assert f.shape == (2, 5, sae.d_sae)
    want = sae(x.reshape(-1, sae.d_in)).reconstruction.reshape(2, 5, -1)
    torch.testing.assert_close(bench(x), want)
    torch.testing.assert_close(bench.decode(f), want)
    torch.testing.assert_close(f, sae.encode(x.reshape(-1, sae.d_in)).reshape(f.shape) * norms)
    assert transformer_lens_hook("layers.7.mlp_out") == (7, "blocks.7.hook_mlp_out")
    with pytest.raises(ConfigError, match="TransformerLens"):
        transformer_lens_hook("layers.2.mlp_in")
    tc = SparseAutoencoder(8, 16, k=2, transcoder=True, d_out=8, hook_name="layers.0.mlp_in")
    with pytest.raises(ConfigError, match="transcoder"):
        SAEBenchSAE(tc)

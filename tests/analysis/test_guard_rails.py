"""Guard rails from the seed's antipatterns: an SAE refuses a model it was not trained on
(fingerprint), high-severity monitor rules refuse unverified auto labels, and the browser
says whether the width was chosen by a sweep."""

from __future__ import annotations

import json

import pytest
import torch

from sae_fast.analysis.browser import build_feature_site
from sae_fast.analysis.labels import Labels
from sae_fast.analysis.monitor import check_rule_labels, parse_rules
from sae_fast.cli import main
from sae_fast.data.activations import load_model
from sae_fast.data.fingerprint import check_model, model_fingerprint
from sae_fast.errors import ConfigError
from sae_fast.eval import evaluate
from sae_fast.eval.sweep import width_provenance
from tests.helpers import tiny_gpt2_dir


@pytest.fixture(scope="module")
def others(tmp_path_factory):
    """Two other tiny GPT-2s: other weights (same config), and another config."""
    root = tmp_path_factory.mktemp("others")
    return (
        tiny_gpt2_dir(root / "weights", mlp_scale=2.0),
        tiny_gpt2_dir(root / "config", activation_function="relu"),
    )


def test_fingerprint_is_recorded_and_matches_the_same_model_in_any_dtype(gpt2_sae, gpt2_dir):
    sae_dir, result = gpt2_sae
    recorded = result.sae.cfg.metadata["model_fingerprint"]
    assert recorded["architecture"] == "GPT2LMHeadModel"
    model, _ = load_model(str(gpt2_dir))
    assert model_fingerprint(model) == recorded
    half, _ = load_model(str(gpt2_dir), dtype=torch.bfloat16)
    assert model_fingerprint(half) == recorded
    check_model(result.sae, half)  # no error
    saved = json.loads((sae_dir / "cfg.json").read_text())["metadata"]["model_fingerprint"]
    assert saved == recorded


def test_another_model_is_refused_with_the_reason(gpt2_sae, others):
    _, result = gpt2_sae
    by_weights, by_config = (load_model(str(d))[0] for d in others)
    with pytest.raises(ConfigError, match="different weights") as err:
        check_model(result.sae, by_weights)
    assert "features are directions in one model" in str(err.value)
    assert "--allow-other-model" in str(err.value)
    with pytest.raises(ConfigError, match="a different config"):
        check_model(result.sae, by_config)
    check_model(result.sae, by_weights, allow_other_model=True)
    with pytest.raises(ConfigError, match="another model"):
        evaluate(result.sae, model=str(others[0]), max_tokens=200, downstream=False)


def test_cli_uses_refuse_another_model_unless_allowed(gpt2_sae, others, tmp_path, capsys):
    sae_dir, _ = gpt2_sae
    other = str(others[0])
    trace = ["trace", str(sae_dir), "--text", "the cat sat", "--position", "-1"]
    assert main([*trace, "--model", other]) == 2
    assert "another model" in capsys.readouterr().err
    assert main([*trace, "--model", other, "--allow-other-model"]) == 0
    steer = ["steer", str(sae_dir), "--prompt", "the cat", "--feature", "1=4", "--model", other]
    assert main([*steer, "--max-new-tokens", "2"]) == 2
    assert "another model" in capsys.readouterr().err
    site = ["features", str(sae_dir), "--model", other, "--out", str(tmp_path / "s")]
    assert main([*site, "--max-tokens", "300"]) == 2
    assert "another model" in capsys.readouterr().err
    ev = ["eval", str(sae_dir), "--model", other, "--max-tokens", "200", "--no-downstream"]
    assert main(ev) == 2 and "another model" in capsys.readouterr().err
    assert main([*ev, "--allow-other-model", "--no-save-sparsity"]) == 0
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": "r", "features": [1], "threshold": 0.5}]))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"id": 1, "text": "the cat"}) + "\n")
    mon = ["monitor", str(sae_dir), "--rules", str(rules), "--input", str(inputs)]
    assert main([*mon, "--model", other]) == 2
    assert "another model" in capsys.readouterr().err


def _rule(features: list[int], severity: str, threshold: float = 1.0) -> dict:
    return {"name": "r", "features": features, "threshold": threshold, "severity": severity}


def _rules(features: list[int], severity: str):
    return parse_rules([_rule(features, severity)], 64)


def test_high_severity_rules_refuse_unverified_auto_labels(gpt2_sae, tmp_path, capsys):
    sae_dir, result = gpt2_sae
    labels = Labels(result.sae.d_sae)
    labels.set(3, "cats (guessed)", source="auto", explainer="test")
    labels.set(4, "dogs", source="human")
    high, crit, low = _rules([3], "high"), _rules([4, 3], "critical"), _rules([3], "medium")
    for rules in (high, crit):
        with pytest.raises(ConfigError, match="unverified auto label"):
            check_rule_labels(rules, labels)
        check_rule_labels(rules, labels, allow_unverified=True)
    check_rule_labels(low, labels)
    check_rule_labels(_rules([4], "critical"), labels)  # a verified human label

    # the same through the CLI, then `label --verify` lifts it
    labels.save(sae_dir / "labels.json")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([_rule([3], "high", 1e9)]))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"id": 1, "text": "the cat"}) + "\n")
    mon = ["monitor", str(sae_dir), "--rules", str(rules), "--input", str(inputs)]
    assert main(mon) == 2
    assert "unverified auto label" in capsys.readouterr().err
    assert main([*mon, "--allow-unverified"]) == 0
    assert main(["label", str(sae_dir), "3", "--verify"]) == 0
    lab = Labels.load(sae_dir, 64).get(3)
    assert (lab.source, lab.verified, lab.explainer) == ("auto", True, "test")
    assert main(mon) == 0
    assert main(["label", str(sae_dir), "9", "--verify"]) == 2  # nothing to verify
    (sae_dir / "labels.json").unlink()


def test_browser_says_the_width_was_not_chosen_by_a_sweep(gpt2_sae, tmp_path):
    sae_dir, _ = gpt2_sae
    assert "not chosen by a sweep" in width_provenance(sae_dir)
    page = build_feature_site(sae_dir, tmp_path / "site", max_tokens=300).read_text()
    assert "width not chosen by a sweep" in page

"""Monitors: rule validation before any input is read, alerts with spans, CLI exit codes."""

from __future__ import annotations

import json

import pytest
import torch

from sae_fast import ConfigError, Monitor, SparseAutoencoder
from sae_fast.analysis.monitor import load_rules, parse_rules
from sae_fast.cli import main
from sae_fast.data.activations import load_model
from sae_fast.data.hooks import capture, run_to_hook

TEXT = "the exception is raised when the file does not exist"


@pytest.fixture(scope="module")
def setup(minilm_sae):
    sae = SparseAutoencoder.load(minilm_sae[0])
    model, tok = load_model("embedded")
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    with capture(model, "layers.3.residual") as box, torch.no_grad():
        acts = sae.encode(run_to_hook(model, box, input_ids=ids)[0])
    acts[0] = acts[-1] = 0  # [CLS] / [SEP] are never monitored
    peak = acts.max(0)
    f = int(peak.values.argmax())  # the feature firing hardest on TEXT, and where
    return sae, model, tok, f, float(peak.values[f]), int(peak.indices[f]), acts


def test_alert_span_and_activations(setup):
    sae, model, tok, f, top, pos, acts = setup
    rules = parse_rules([{"name": "r", "features": [f], "threshold": top / 2}], sae.d_sae)
    (alert,) = Monitor(sae, rules, model, tok).check(TEXT, "doc-1")
    fired = (acts[:, f] > top / 2).nonzero(as_tuple=True)[0]
    assert alert.input_id == "doc-1" and alert.rule == "r" and alert.severity == "medium"
    assert alert.span == (int(fired[0]), int(fired[-1]) + 1)
    assert alert.tokens == len(fired)
    assert alert.activations[f] == pytest.approx(top, rel=1e-5)
    assert alert.span[0] <= pos < alert.span[1]
    quiet = parse_rules([{"name": "q", "features": [f], "threshold": top * 2}], sae.d_sae)
    assert Monitor(sae, quiet, model, tok).check(TEXT) == []
    many = parse_rules(
        [{"name": "m", "features": [f], "threshold": top / 2, "min_tokens": len(fired) + 1}],
        sae.d_sae,
    )
    assert Monitor(sae, many, model, tok).check(TEXT) == []


@pytest.mark.parametrize(
    ("rules", "match"),
    [
        ([{"name": "a", "features": [768], "threshold": 1}], "unknown feature 768"),
        ([{"name": "a", "features": [1], "threshold": -1}], "threshold"),
        ([{"name": "a", "features": [1], "threshold": "high"}], "threshold"),
        ([{"name": "a", "features": [1], "threshold": float("nan")}], "threshold"),
        ([{"name": "a", "features": [], "threshold": 1}], "non-empty list"),
        ([{"name": "a", "features": [1], "threshold": 1, "min_tokens": 0}], "min_tokens"),
        ([{"name": "a", "features": [1], "threshold": 1, "severity": "meh"}], "severity"),
        ([{"name": "a", "features": [1], "threshold": 1, "colour": 1}], "unknown keys"),
        ([{"features": [1], "threshold": 1}], "name"),
        ([{"name": "a", "features": [1], "threshold": 1}] * 2, "unique"),
        ({"rules": []}, "non-empty list"),
    ],
)
def test_invalid_rules_are_rejected(rules, match):
    with pytest.raises(ConfigError, match=match):
        parse_rules(rules, 768)


def test_yaml_and_json_rules_files(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("rules:\n  - name: neg\n    features: [1, 2]\n    threshold: 0.5\n")
    j = tmp_path / "r.json"
    j.write_text(json.dumps([{"name": "neg", "features": [1, 2], "threshold": 0.5}]))
    assert load_rules(y, 768) == load_rules(j, 768)
    y.write_text("rules: [unclosed")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_rules(y, 768)


def test_cli_monitor_exit_codes_and_jsonl(setup, minilm_sae, tmp_path, capsys):
    _sae, _model, _tok, f, top, _pos, _acts = setup
    sae_dir = str(minilm_sae[0])
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(
        json.dumps({"id": "a", "text": "a plain sentence about cats"})
        + "\n"
        + json.dumps({"id": "b", "text": TEXT})
        + "\n"
    )
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": "hot", "features": [f], "threshold": top * 0.99}]))
    out = tmp_path / "alerts.jsonl"
    argv = ["monitor", sae_dir, "--rules", str(rules), "--input", str(inputs)]
    assert main([*argv, "--output", str(out)]) == 1
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["input_id"] for a in alerts] == ["b"] and alerts[0]["rule"] == "hot"
    assert str(f) in alerts[0]["activations"]
    rules.write_text(json.dumps([{"name": "cold", "features": [f], "threshold": top * 10}]))
    assert main(argv) == 0
    # invalid rules: exit 2 before the (missing) input is read
    rules.write_text(json.dumps([{"name": "bad", "features": [99999], "threshold": 1}]))
    bad = ["monitor", sae_dir, "--rules", str(rules), "--input", str(tmp_path / "missing")]
    capsys.readouterr()
    assert main(bad) == 2
    assert "unknown feature 99999" in capsys.readouterr().err
    inputs.write_text('{"id": 1, "text": "fine"}\n{broken\n')
    rules.write_text(json.dumps([{"name": "cold", "features": [f], "threshold": top * 10}]))
    assert main(argv) == 2
    assert "in.jsonl:2 is not valid JSON" in capsys.readouterr().err

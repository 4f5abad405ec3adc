"""Auto-interpretation on SmolLM2: explanations from the local model and from an
OpenAI-compatible server on loopback (answering with the same model), held-out scoring,
labels.json as auto / unverified with its scores and contexts, human labels kept."""

from __future__ import annotations

import json

import pytest

from sae_fast.analysis.autointerp import (
    auroc,
    autointerp,
    balanced_accuracy,
    clean_label,
    save_labels,
)
from sae_fast.analysis.features import collect_features
from sae_fast.analysis.labels import Labels
from sae_fast.analysis.llm import HTTPChat, LocalChat
from sae_fast.cli import main
from sae_fast.data.activations import iter_token_windows, select_windows
from sae_fast.data.corpus import load_texts
from sae_fast.errors import ConfigError

from .conftest import HOOK
from .openai_server import serve


def test_scores_and_label_cleaning():
    truth = [True, True, False, False]
    assert balanced_accuracy([3, 2, 1, 0], truth) == 1.0
    assert balanced_accuracy([0, 1, 2, 3], truth) == 0.0
    assert balanced_accuracy([1, 1, 1, 1], truth, seed=0) in (0.0, 0.5, 1.0)
    assert auroc([3, 2, 1, 0], truth) == 1.0 and auroc([1, 1, 1, 1], truth) == 0.5
    with pytest.raises(ConfigError):
        auroc([1, 2], [True, True])
    assert clean_label('"The marked words are names of cities."\nmore') == "names of cities"


@pytest.fixture(scope="module")
def scan(smollm2, smol_sae):
    model, tok = smollm2
    sae = smol_sae.sae
    windows = iter_token_windows(tok, load_texts("embedded"), 128)
    chosen, _ = select_windows(tok, windows, 8_000, sae.cfg.metadata["train_tokens"])
    return chosen, collect_features(sae, model, tok, chosen, HOOK, 16, 16, 8)


def test_autointerp_local_explains_scores_and_saves(smollm2, smol_sae, scan, tmp_path):
    model, tok = smollm2
    sae, (windows, report) = smol_sae.sae, scan
    chat = LocalChat(model, tok, name="smollm2-local")
    result = autointerp(sae, model, tok, chat, report, windows, HOOK, n_features=4, n_test=4)
    assert len(result.features) + len(result.skipped) == 4 and result.features
    for s in result.features:
        assert s.label and len(s.label.split()) <= 10
        for v in (s.detection, s.detection_auroc, s.fuzzing, s.shuffled_detection):
            assert 0.0 <= v <= 1.0
        explained = {w for w, _ in s.contexts["explain"]}
        held_out = {w for w, _ in s.contexts["positive"] + s.contexts["negative"]}
        assert explained and not explained & held_out  # the judge sees unseen windows
        assert len(s.contexts["positive"]) == len(s.contexts["negative"]) >= 2
        for w, p in s.contexts["negative"]:  # the feature is silent there
            assert (w, p) not in {(e.window, e.position) for e in report.top_examples(s.feature)}
    assert set(result.seconds) == {"negatives", "explain", "score"}

    human = result.features[0].feature
    labels = Labels(sae.d_sae)
    labels.set(human, "checked by a person")
    path = save_labels(result, labels, tmp_path)
    assert result.kept_human == [human]
    back = Labels.load(tmp_path, sae.d_sae)
    assert back.get(human).label == "checked by a person" and back.get(human).source == "human"
    for s in result.features[1:]:
        lab = back.get(s.feature)
        assert (lab.label, lab.source, lab.verified) == (s.label, "auto", False)
        assert lab.explainer == "smollm2-local" and set(lab.scores) == {
            "detection", "detection_auroc", "fuzzing"
        }  # fmt: skip
        assert lab.contexts["explain"] == s.contexts["explain"]
    summary = json.loads(path.read_text())["summary"]
    assert summary["n_features"] == len(result.features) and "shuffled_detection" in summary


def test_autointerp_through_an_openai_compatible_server(smollm2, smol_sae, scan):
    model, tok = smollm2
    sae, (windows, report) = smol_sae.sae, scan
    local = LocalChat(model, tok)
    with serve(local) as (url, requests):
        http = HTTPChat(url, "smollm2-served")
        msgs = [{"role": "user", "content": "Is Paris in France? Answer Yes or No."}]
        assert http.complete(msgs, 8) == local.complete(msgs, 8)
        (remote,), (here,) = http.yes_scores([msgs]), local.yes_scores([msgs])
        assert remote == pytest.approx(here, abs=0.5)  # top-10 tokens vs every yes/no id
        result = autointerp(sae, model, tok, http, report, windows, HOOK, n_features=2, n_test=3)
    assert result.explainer == "smollm2-served" and result.features
    assert any(r.get("logprobs") for r in requests) and all(
        r["model"] == "smollm2-served" for r in requests
    )
    with pytest.raises(ConfigError, match="failed"):
        HTTPChat(url, "gone").complete(msgs)  # the server is down now
    with pytest.raises(ConfigError, match="http"):
        HTTPChat("localhost:1", "x")


def test_cli_autointerp_writes_labels(smol_sae, scan, capsys):
    sae_dir = smol_sae.sae_dir
    _, report = scan
    ids = (report.counts >= 40).nonzero(as_tuple=True)[0][:2].tolist()
    args = ["autointerp", str(sae_dir), "--ids", ",".join(map(str, ids)), "--max-tokens", "6000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mean over" in out and "shuffled labels" in out
    labels = Labels.load(sae_dir, smol_sae.sae.d_sae)
    assert any(labels.get(f).source == "auto" for f in ids)
    assert main(["autointerp", str(sae_dir), "--model", "x"]) == 2  # --model needs --endpoint
    (sae_dir / "labels.json").unlink()


def test_sweep_interpretability_scores_a_width(smollm2, smol_sae):
    """The sweep's per-width scores: probing and autointerp detection (with its control)."""
    from sae_fast.eval.evaluate import EvalSet
    from sae_fast.eval.sweep import interpretability

    model, tok = smollm2
    eval_set = EvalSet.build(model, HOOK, max_tokens=200, tokenizer=tok)
    got = interpretability(smol_sae.sae, smol_sae.sae_dir, eval_set, 8, 2, 6000)
    assert set(got) == {"probe_k1", "probe_k20", "probe_raw", "detection", "shuffled_detection"}
    assert all(0.0 <= v <= 1.0 for v in got.values())
    labels = Labels.load(smol_sae.sae_dir, smol_sae.sae.d_sae)
    assert sum(lab.source == "auto" for lab in labels.labels.values()) == 2
    (smol_sae.sae_dir / "labels.json").unlink()
    (smol_sae.sae_dir / "autointerp.json").unlink()

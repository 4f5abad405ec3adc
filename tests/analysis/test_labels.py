"""Labels: set, save, load, validation, the auto-labeller hook and `sae-fast label`."""

from __future__ import annotations

import json

import pytest

from sae_fast import ConfigError, FormatError
from sae_fast.analysis.labels import LABELS_FILE, Label, Labels, auto_label
from sae_fast.cli import main


def test_set_save_load_round_trip(tmp_path):
    labels = Labels(10, path=tmp_path / LABELS_FILE)
    labels.set(3, "negation", note="seen on 'not'")
    labels.set(4, "auto guess", source="auto")
    labels.save()
    back = Labels.load(tmp_path, 10)
    assert back.get(3) == Label("negation", "human", True, "seen on 'not'")
    assert back.get(4) == Label("auto guess", "auto", False, "")
    assert back.get(5) == Label()  # unlabelled
    raw = json.loads((tmp_path / LABELS_FILE).read_text())
    assert raw["labels"]["3"]["source"] == "human" and raw["version"] == 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda lab: lab.set(10, "x"), "out of range"),
        (lambda lab: lab.set(-1, "x"), "out of range"),
        (lambda lab: lab.set("3", "x"), "must be an integer"),
        (lambda lab: lab.set(1, "x", source="robot"), "source must be one of"),
        (lambda lab: lab.set(1, 5), "must be strings"),
    ],
)
def test_bad_labels_are_refused(call, match):
    with pytest.raises(ConfigError, match=match):
        call(Labels(10))


def test_corrupt_or_out_of_range_labels_file(tmp_path):
    (tmp_path / LABELS_FILE).write_text('{"labels": {"99": {"label": "x"}}}')
    with pytest.raises(FormatError, match="bad entry '99'"):
        Labels.load(tmp_path, 10)
    (tmp_path / LABELS_FILE).write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        Labels.load(tmp_path, 10)


def test_auto_labeller_is_any_callable_and_keeps_human_labels():
    labels = Labels(6)
    labels.set(1, "mine")
    n = auto_label(labels, range(6), lambda f: f"feature-{f}" if f % 2 else None)
    assert n == 2  # 3 and 5; 1 is human, even ones return None
    assert labels.get(3) == Label("feature-3", "auto", False, "")
    assert labels.get(1).label == "mine"


def test_cli_label_sets_and_clears(minilm_sae, capsys):
    sae_dir, _ = minilm_sae
    assert main(["label", str(sae_dir), "12", "code keywords", "--note", "n"]) == 0
    assert Labels.load(sae_dir, 768).get(12) == Label("code keywords", "human", True, "n")
    assert main(["label", str(sae_dir), "12", "--clear"]) == 0
    assert Labels.load(sae_dir, 768).get(12) == Label()
    assert main(["label", str(sae_dir), "768", "x"]) == 2
    assert "out of range" in capsys.readouterr().err

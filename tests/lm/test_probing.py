"""Sparse probing on SmolLM2: the offline tasks have real, source-split labels; the k-sparse
probes on the SAE's latents and the raw-activation probe are scored on held-out sources."""

from __future__ import annotations

import json

import pytest
import torch

from sae_fast.cli import main
from sae_fast.data.probe_tasks import TASKS, build_task
from sae_fast.errors import ConfigError
from sae_fast.eval.absorption import absorption, first_letter_words
from sae_fast.eval.probing import fit_logistic, probe, top_k_latents


@pytest.mark.parametrize("name", TASKS)
def test_tasks_have_both_classes_and_disjoint_sources(name):
    task = build_task(name, per_class=60)
    for split in (task.train, task.test):
        assert {lab for _, lab in split} == {0, 1}
        assert all(isinstance(t, str) and len(t) >= 20 for t, _ in split)
    assert not {t for t, _ in task.train} & {t for t, _ in task.test}
    assert build_task(name, per_class=60).train == task.train  # seeded


def test_bad_tasks_are_refused():
    with pytest.raises(ConfigError, match="unknown probing task"):
        build_task("nope")
    with pytest.raises(ConfigError, match="per_class"):
        build_task(TASKS[0], per_class=2)


def test_logistic_and_latent_choice_on_separable_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 2] > 0).long()
    w, b = fit_logistic(x, y)
    assert ((x @ w + b > 0).long() == y).float().mean() > 0.97
    lat = torch.rand(200, 8, generator=g)
    lat[:, 6] += 3 * y
    assert top_k_latents(lat, y, 1).tolist() == [6]


def test_sparse_probing_on_the_sae(smollm2, smol_sae, capsys):
    model, tok = smollm2
    report = probe(smol_sae.sae, model, tok, per_class=24, ks=(1, 20))
    assert [t.task for t in report.tasks] == list(TASKS)
    for t in report.tasks:
        assert 0.0 <= t.sae[1] <= 1.0 and len(t.latents[20]) == 20
    # the raw residual stream separates code from prose on unseen modules
    code = report.tasks[0]
    assert code.baseline >= 0.8 and code.sae[20] >= 0.7
    sae_dir = smol_sae.sae_dir
    args = ["probe", str(sae_dir), "--tasks", "code_vs_docstring", "--per-class", "12"]
    assert main(args) == 0
    assert "within 5 points of the raw probe" in capsys.readouterr().out
    saved = json.loads((sae_dir / "probing.json").read_text())
    assert saved["tasks"][0]["task"] == "code_vs_docstring" and "mean_k20" in saved
    (sae_dir / "probing.json").unlink()


def test_first_letter_absorption(smollm2, smol_sae, capsys):
    model, tok = smollm2
    words = first_letter_words(tok, 300)
    assert len(words) == 300 and all(len(w) >= 3 and w.isalpha() for w, _ in words)
    assert all(tok.decode([t]) == " " + w for w, t in words[:20])
    report = absorption(smol_sae.sae, model, tok, n_words=400)
    assert report.probe_accuracy > 0.15  # 26 letters: chance is about 0.04
    assert report.scored() and all(0 <= r.main_latent < smol_sae.sae.d_sae for r in report.letters)
    for r in report.letters:
        assert 0 <= r.absorbed <= r.n_words and 0 <= r.recall <= 1
        assert r.absorbed + round(r.recall * r.n_words) <= r.n_words  # absorbed ones did not fire
    for v in (report.absorption_rate, report.absorbed_fraction, report.mean_recall):
        assert 0 <= v <= 1
    sae_dir = smol_sae.sae_dir
    assert main(["absorption", str(sae_dir), "--words", "200"]) == 0
    assert "absorption rate" in capsys.readouterr().out
    saved = json.loads((sae_dir / "absorption.json").read_text())
    assert {"absorption_rate", "absorbed_fraction", "letters"} <= set(saved)
    (sae_dir / "absorption.json").unlink()

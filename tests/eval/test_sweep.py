"""The sweep on a tiny config writes its table, CSV and plot with the right rows; the elbow
rule; `sae-fast eval` and `sae-fast sweep` on the command line."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

import sae_fast
from sae_fast import ConfigError, SparseAutoencoder, TrainConfig
from sae_fast.analysis.browser import build_feature_site
from sae_fast.cli import main
from sae_fast.eval import EvalSet, evaluate, load_sparsity
from sae_fast.eval.sweep import parse_expansions, pick_elbow, sweep, width_provenance
from tests.helpers import SMALL_TRAIN

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = dict(SMALL_TRAIN, steps=20)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    cfg = TrainConfig(**TINY, out=str(out))
    return out, sweep(cfg, [3, 1, 2], eval_tokens=800, log=lambda _msg: None, probe_per_class=12)


def test_sweep_writes_csv_markdown_and_plot_with_one_row_per_width(swept):
    out, result = swept
    assert [r.expansion for r in result.rows] == [1, 2, 3]
    assert [r.d_sae for r in result.rows] == [384, 768, 1152]
    with open(out / "sweep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["expansion"]) for r in rows] == [1, 2, 3]
    assert [r["chosen"] for r in rows].count("True") == 1
    chosen = next(int(r["expansion"]) for r in rows if r["chosen"] == "True")
    assert chosen == result.chosen_expansion
    fidelity = [float(r["downstream_score"]) for r in rows]
    assert result.chosen == pick_elbow([int(r["d_sae"]) for r in rows], fidelity)[0]
    for r in rows:
        assert 0 < float(r["fvu"]) < 1.5 and float(r["l0"]) == pytest.approx(8.0)
        assert float(r["eval_tokens"]) >= 800
    md = (out / "sweep.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "x |" in line]
    assert [line.split("|")[1].strip() for line in table] == ["1x", "2x", "3x"]
    assert md.count("**chosen**") == 1 and "sweep.png" in md
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(out / "sweep.png").convert("RGB")).astype(int)
    assert img.shape[1] > 600 and img.shape[0] > 400
    red = (np.abs(img - np.array([214, 39, 40])).sum(-1) < 30).sum()
    assert red > 50  # the chosen width is marked in red
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files
    # interpretability beside reconstruction: probing accuracy per width, in CSV and table
    for r in rows:
        assert 0 <= float(r["probe_k20"]) <= 1 and 0 <= float(r["probe_raw"]) <= 1
    assert "probe k=20" in md and "raw probe" in md and "Interpretability beside" in md
    # each SAE knows which sweep sized it, and whether it was the one chosen
    for i, row in enumerate(result.rows):
        line = width_provenance(row.sae_dir)
        assert str(out / "sweep.md") in line
        assert ("width chosen by a sweep" in line) == (i == result.chosen)
    page = build_feature_site(result.rows[0].sae_dir, out / "site", max_tokens=300).read_text()
    assert (out / "sweep.md").resolve().as_uri() in page  # the browser links the sweep


def test_sweep_trains_every_width_from_one_pass_and_saves_sparsity_and_metadata(swept):
    out, result = swept
    assert not (out / "activations").exists()  # streamed: no cache unless asked for
    kept = set()
    for row in result.rows:
        sae = SparseAutoencoder.load(row.sae_dir)
        assert sae.cfg.metadata["corpus"] == "embedded"
        assert 3000 <= sae.cfg.metadata["train_tokens"] < 3000 + 128  # whole windows
        last = json.loads((Path(row.sae_dir).parent / "metrics.jsonl").read_text().splitlines()[-1])
        kept.add(last["tokens_kept"])  # the one feed's count, the same for every width
        dens = load_sparsity(row.sae_dir)
        assert dens.shape == (row.d_sae,)
        assert float((dens == 0).double().mean()) == pytest.approx(
            row.result.dead_fraction, abs=1e-9
        )
    assert len(kept) == 1 and len({r.train_seconds for r in result.rows}) == 1


@pytest.mark.parametrize(
    ("fidelity", "want", "why"),
    [
        ([0.5, 0.8, 0.85, 0.87], 1, "elbow"),
        ([0.1, 0.2, 0.3, 0.4], 3, "no width lies above"),  # linear: no elbow, best
        ([0.1, 0.12, 0.2, 0.5], 3, "no width lies above"),  # still accelerating
        ([0.5, 0.5, 0.5, 0.5], 0, "flat"),
        ([0.5, 0.9, 0.91, 0.8], 1, "elbow"),
    ],
)
def test_pick_elbow(fidelity, want, why):
    idx, reason = pick_elbow([1536, 3072, 6144, 12288], fidelity)
    assert idx == want and why in reason
    # input order does not matter
    idx2, _ = pick_elbow([12288, 6144, 3072, 1536], fidelity[::-1])
    assert idx2 == 3 - want


def test_pick_elbow_with_two_widths_and_bad_input():
    assert pick_elbow([4, 8], [0.9, 0.8])[0] == 0
    with pytest.raises(ValueError, match="finite"):
        pick_elbow([4, 8, 16], [0.1, float("nan"), 0.3])


@pytest.mark.parametrize("text", ["", "4,4", "0,8", "a,b", "4;8"])
def test_bad_expansions(text):
    with pytest.raises(ConfigError, match="distinct positive integers"):
        parse_expansions(text)
    assert parse_expansions("32,4,8") == [4, 8, 32]


def test_evaluate_defaults_to_held_out_tokens_and_reuses_an_eval_set(swept):
    _out, result = swept
    sae_dir = result.rows[0].sae_dir
    res = sae_fast.evaluate(sae_dir, max_tokens=500, downstream=False)  # the public entry
    assert res.skipped_tokens >= 3000 and res.n_tokens >= 500
    assert res.downstream_score is None and res.downstream == {}
    es = EvalSet.build(max_tokens=500, context_size=64, skip_tokens=res.skipped_tokens)
    again = evaluate(sae_dir, es, downstream=False)
    assert again.fvu == pytest.approx(res.fvu, rel=1e-12)
    with pytest.raises(ConfigError, match="none left after skipping"):
        EvalSet.build(max_tokens=10, context_size=64, skip_tokens=10**9)
    wrong = SparseAutoencoder(16, 32, k=4)
    with pytest.raises(ConfigError, match="width 384, the SAE expects d_in=16"):
        evaluate(wrong, es)


def test_cli_eval_prints_table_and_json_and_writes_sparsity(swept, capsys):
    _out, result = swept
    sae_dir = result.rows[1].sae_dir
    os.remove(os.path.join(sae_dir, "sparsity.safetensors"))
    assert main(["eval", sae_dir, "--max-tokens", "400", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("fvu", "explained_variance", "l0", "dead_fraction", "density_histogram"):
        assert key in report
    assert report["downstream_score"] == pytest.approx(report["downstream"]["emb_cos_score_zero"])
    assert os.path.exists(os.path.join(sae_dir, "sparsity.safetensors"))
    assert main(["eval", sae_dir, "--max-tokens", "400", "--no-downstream"]) == 0
    table = capsys.readouterr().out
    assert "FVU" in table and "log10 feature density" in table and "downstream" not in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "/nonexistent/sae"], "does not exist"),
        (["sweep", "--expansions", "4,4"], "distinct positive integers"),
        (["sweep", "--expansions", "4", "--k", "0"], "k must be >= 1"),
    ],
)
def test_cli_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_cli_eval_skip_beyond_corpus_is_a_clear_error(swept, capsys):
    _out, result = swept
    argv = ["eval", result.rows[0].sae_dir, "--skip-tokens", str(10**9), "--no-save-sparsity"]
    assert main(argv) == 2
    assert "none left after skipping" in capsys.readouterr().err


def test_eval_rejects_a_non_positive_budget():
    with pytest.raises(ConfigError, match="max_tokens must be >= 1"):
        EvalSet.build(max_tokens=0)


def test_causal_sweep_picks_by_ce_loss_recovered_and_plots_kl(tmp_path):
    """For causal LMs the fidelity is CE loss recovered, and the plot gains a KL panel."""
    import torch

    from sae_fast.eval.evaluate import EvalResult
    from sae_fast.eval.sweep import SweepResult, SweepRow, fidelity_name, write_sweep

    rows = []
    for i, (ce, kl) in enumerate([(0.80, 0.9), (0.95, 0.3), (0.97, 0.2), (0.98, 0.15)]):
        res = EvalResult(
            100, 1.0, 0.2, 0.8, 0.9, 0.95, 32.0, 0.0, 0.0, torch.full((8,), 0.01),
            downstream={"ce_score_zero": ce, "ce_score_mean": ce - 0.01, "kl_sae": kl,
                        "downstream_score": ce},
            downstream_score=ce,
        )  # fmt: skip
        interp = {"probe_k20": 0.7 + i / 20, "detection": 0.6 - i / 50, "shuffled_detection": 0.5}
        (tmp_path / f"x{2**i}").mkdir()
        rows.append(SweepRow(2**i, 64 * 2**i, str(tmp_path / f"x{2**i}"), 1.0, 1.0, res, interp))
    assert rows[0].fidelity == 0.80 and fidelity_name(rows[0].result).startswith("CE loss")
    chosen, reason = pick_elbow([r.d_sae for r in rows], [r.fidelity for r in rows])
    assert chosen == 1, reason
    result = SweepResult(rows, chosen, reason)
    write_sweep(result, tmp_path, TrainConfig(), 100)
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    md = (tmp_path / "sweep.md").read_text()
    assert "CE loss recovered" in md and "KL (nats)" in md and "detection" in md
    first = next(line for line in md.splitlines() if line.startswith("| 1x"))
    assert "| 0.900 |" in first and "| 0.700 |" in first and "| 0.600 |" in first
    with open(tmp_path / "sweep.csv") as fh:
        assert float(next(csv.DictReader(fh))["kl_sae"]) == 0.9

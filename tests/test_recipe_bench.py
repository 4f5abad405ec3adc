"""`python -m benchmarks recipe` on sae_fast's side only, at a tiny budget (no peer
environment needed): the data it collects and reuses, the result files, sane numbers; and
the report's verdict and bold best FVU on made-up rows."""

from __future__ import annotations

import datetime as dt
import json
import math

import torch

from benchmarks import recipe
from benchmarks.__main__ import main as bench_main


def test_recipe_sae_fast_side_writes_json_and_markdown(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    args = ["--tokens", "4096", "--heldout-tokens", "1024", "--batches", "1024"]
    args += ["--expansions", "4", "--libs", "sae_fast", "--work", str(work), "--out", str(out)]
    rows = bench_main(["recipe", *args])
    stem = out / f"recipe-cpu-{dt.date.today().isoformat()}"
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    setup = saved["setup"]
    assert setup["n_train"] == 4096 and setup["n_heldout"] == 1024
    assert setup["libraries"] == ["sae_fast"] and "torch" in setup["versions"]
    (row,) = rows
    assert (row["library"], row["expansion"], row["d_sae"]) == ("sae_fast", 4, 4 * 384)
    assert (row["batch"], row["steps"], row["tokens"]) == (1024, 4, 4096)
    for name in ("fvu", "l0", "dead_pct", "train_dead_pct", "train_fvu", "train_s"):
        assert math.isfinite(row[name]), name
    assert 0.0 < row["fvu"] < 1.5
    assert 0.0 <= row["dead_pct"] <= 100.0
    # the training-row column is the same evaluation on an even sample of the training rows
    train = recipe.load_tensors(work / "train.safetensors")
    weights = recipe.load_tensors(work / "runs" / "sae_fast-e4-b1024" / "weights.safetensors")
    seen = recipe.evaluate(weights, train["acts"][::4], recipe.K)
    assert row["train_dead_pct"] == round(seen["dead_pct"], 3)
    assert row["train_fvu"] == round(seen["fvu"], 6)
    assert 0.0 < row["l0"] <= recipe.K
    assert row["train_s"] > 0 and row["check_err"] < 1e-4  # its own forward = the common one
    assert row["recipe"]["peak_lr"] > 0
    md = stem.with_suffix(".md").read_text()
    assert "| held-out FVU | L0 | dead % | dead % (training rows) |" in md
    assert f"| {row['dead_pct']:.1f} | {row['train_dead_pct']:.1f} |" in md
    assert f"**{row['fvu']:.4f}**" in md and "Target not checked" in md
    # the held-out rows come after the training windows, and the data is reused
    held = recipe.load_tensors(work / "heldout.safetensors")
    assert train["acts"].dtype == torch.float32 and held["acts"].shape == (1024, 384)
    assert int(held["window"].min()) == 0  # window numbers count from each set's first
    meta = json.loads((work / "meta.json").read_text())
    assert meta["train_windows"] == int(train["window"].max()) + 1
    capsys.readouterr()
    assert recipe.prepare(work, 4096, 1024)["n_train"] == 4096
    assert "reusing" in capsys.readouterr().out


def test_train_sample_spreads_over_the_rows():
    rows = torch.arange(10).float()[:, None]
    assert recipe.train_sample(rows, 3).flatten().tolist() == [0.0, 3.0, 6.0]
    assert recipe.train_sample(rows, 4).flatten().tolist() == [0.0, 2.0, 4.0, 6.0]
    assert len(recipe.train_sample(rows, 50)) == 10


def test_served_order_is_the_memory_feeds():
    from sae_fast.data.store import ActivationStore

    acts = torch.zeros(1000, 2)
    order = recipe.served_order(acts, 128, 7)
    store = ActivationStore(acts, seed=recipe.SEED)
    assert torch.equal(order[3 * 128 : 4 * 128], store.indices(3, 128))
    assert len(set(order.tolist())) == 7 * 128  # one epoch: no row twice


def _row(lib: str, fvu: float, dead: float, batch: int = 1024) -> dict:
    return {
        "expansion": 8, "d_sae": 3072, "batch": batch, "steps": 10, "library": lib,
        "train_s": 1.0, "tokens_per_s": 1e4, "fvu": fvu, "l0": 32.0, "dead_pct": dead,
        "train_dead_pct": dead, "recipe": {"lr": 1e-3},
    }  # fmt: skip


def test_verdict_and_markdown():
    met = [_row("sae_fast", 0.10, 0.0), _row("sparsify", 0.12, 5.0), _row("saelens", 0.2, 9.0)]
    text, ok = recipe.verdict(met)
    assert ok is True and text.startswith("met")
    worse = [*met, _row("sae_fast", 0.3, 0.0, 4096), _row("saelens", 0.25, 0.0, 4096)]
    text, ok = recipe.verdict(worse)
    assert ok is False and "8x B=4096" in text and "8x B=1024" not in text
    dead = [_row("sae_fast", 0.10, 2.0), _row("sparsify", 0.12, 0.0)]
    assert recipe.verdict(dead)[1] is False
    assert recipe.verdict([_row("sae_fast", 0.1, 0.0)])[1] is None
    setup = {
        "date": "2026-12-04", "machine": "cpu", "command": "x", "model": "m", "hook": "h",
        "corpus_tokens": 10, "context_size": 128, "n_train": 1, "n_heldout": 1,
        "versions": {"torch": "2"},
    }  # fmt: skip
    md = recipe.markdown(setup, worse)
    assert "| **0.1000** |" in md and "| **0.2500** |" in md and "| 0.3000 |" in md
    assert "Target MISSED" in md

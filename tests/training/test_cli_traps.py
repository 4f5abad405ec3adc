"""The training CLI without traps (issue 22): `collect` writes a cache and stops; a cache
serves any smaller run, its first windows, without the model or the corpus's tokeniser; a
corpus smaller than asked warns with its real count; `--steps 0` is refused; runs report
held-out metrics, and repeat their tokens in counted epochs only when allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sae_fast import TrainConfig
from sae_fast.cli import main
from sae_fast.data import feeds
from sae_fast.data.store import read_cache, read_manifest
from sae_fast.errors import ConfigError
from sae_fast.training.trainer import train

SMALL = ["--context-size", "64", "--batch-size", "256", "--k", "8", "--no-progress"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """`sae-fast collect`: 4,000 training + 1,024 held-out tokens of the embedded corpus."""
    path = tmp_path_factory.mktemp("collect") / "cache"
    assert main(["collect", "--cache", str(path), "--max-tokens", "4000", "--eval-tokens",
                 "1024", "--context-size", "64"]) == 0  # fmt: skip
    return path


def test_collect_writes_a_cache_and_stops(cache, capsys):
    m = read_manifest(cache)
    assert m["corpus_tokens"] >= 5024 and m["max_tokens_asked"] == 5024
    assert m["n_tokens"] == m["corpus_tokens"]  # an encoder keeps every token
    assert not (cache.parent / "runs").exists() and sorted(p.name for p in cache.iterdir()) == [
        "manifest.json", "shard_00000.safetensors", "windows.safetensors"
    ]  # fmt: skip
    # a second collect into it is refused; collect has no training flags
    assert main(["collect", "--cache", str(cache)]) == 2
    assert "already holds an activation cache" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["collect", "--cache", str(cache), "--steps", "3"])


def test_a_cache_serves_a_smaller_run_without_the_model(cache, tmp_path, monkeypatch):
    cfg = dict(max_tokens=2000, eval_tokens=512, context_size=64, batch_size=256, k=8,
               steps=3, progress=False, checkpoint_every=0)  # fmt: skip
    fresh = feeds.open_source(TrainConfig(**cfg, out=str(tmp_path / "a")))  # streamed
    fresh.feed.close()

    def refused(*_a, **_k):
        raise AssertionError("a run that a cache serves loaded the model or tokenised")

    monkeypatch.setattr(feeds, "load_model", refused)
    monkeypatch.setattr(feeds, "iter_token_windows", refused)
    served = feeds.open_source(TrainConfig(**cfg, cache=str(cache), out=str(tmp_path / "b")))
    served.feed.close()
    assert served.windows == fresh.windows and served.n_tokens == fresh.n_tokens
    assert served.tokenizer is None and served.fingerprint == fresh.fingerprint
    rows = served.feed.n_tokens
    whole = read_cache(cache)
    assert rows == int((whole.window < len(fresh.windows)).sum())  # the same windows' rows
    hook = "layers.3.residual"
    assert torch.equal(served.heldout.window, fresh.heldout.window)  # the same later text
    torch.testing.assert_close(served.heldout.acts[hook], fresh.heldout.acts[hook])
    # a run asking for more than the cache holds is refused, naming the counts
    with pytest.raises(ConfigError, match="fewer than the 9,000 training tokens"):
        feeds.open_source(TrainConfig(**dict(cfg, max_tokens=9000), cache=str(cache)))


def test_a_corpus_smaller_than_asked_warns_and_the_manifest_says_what_it_holds(tmp_path, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text(" ".join(f"word{i} is here." for i in range(600)))
    out = tmp_path / "c"
    assert main(["collect", "--cache", str(out), "--corpus", str(corpus), "--max-tokens",
                 "300000", "--eval-tokens", "256", "--context-size", "64"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    m = read_manifest(out)
    real = m["corpus_tokens"]
    assert 1000 < real < 300_000 and m["max_tokens_asked"] == 300_256 and m["corpus_complete"]
    assert f"warning: corpus {corpus} holds {real:,} tokens, fewer than the 300,256" in err


def test_steps_0_is_refused_with_a_pointer_to_collect(capsys):
    assert main(["train", "--steps", "0", *SMALL]) == 2
    assert "sae-fast collect" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="sae-fast collect"):
        TrainConfig(steps=0)


def test_train_reports_held_out_metrics_and_counts_epochs(cache, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--cache",
        str(cache),
        "--max-tokens",
        "1500",
        "--eval-tokens",
        "1024",
        "--steps",
        "12",
        "--eval-every",
        "1024",
        "--log-every",
        "100",
        "--out",
        str(out),
    ]
    assert main([*args, *SMALL]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "held-out (1,0" in said and "FVU" in said and "last training batch" not in said
    lines = [json.loads(t) for t in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [ln for ln in lines if "heldout_fvu" in ln]
    assert [ln["step"] for ln in evals] == [4, 8, 12]  # every 1,024 tokens, and the end
    last = evals[-1]
    assert 0 < last["heldout_fvu"] < 1.5 and last["heldout_l0"] == 8.0
    assert 0 <= last["heldout_dead_pct"] <= 100 and last["epochs"] > 1.5  # 3,072 of ~1,500
    # with --no-repeat-data the same run stops before training, saying why
    assert main([*args, *SMALL, "--no-repeat-data", "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "more than the" in err and "--no-repeat-data" in err
    with pytest.raises(ConfigError, match="repeat-data"):
        train(TrainConfig(cache=str(cache), max_tokens=1500, eval_tokens=1024, steps=12,
                          batch_size=256, k=8, context_size=64, repeat_data=False,
                          progress=False, out=str(tmp_path / "r3")))  # fmt: skip

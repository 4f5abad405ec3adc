"""Corpora, the activation cache (atomic shards, manifest checks) and the store."""

from __future__ import annotations

import json

import pytest
import torch

from sae_fast import ConfigError, DataError, FormatError
from sae_fast.data import store as store_mod
from sae_fast.data.activations import ActivationBatch
from sae_fast.data.corpus import corpus_hash, embedded_texts, load_texts
from sae_fast.data.store import ActivationStore, read_cache, write_cache

ID = {
    "model": "m",
    "hook": "layers.0.residual",
    "context_size": 16,
    "corpus_hash": "abc",
    "max_tokens": 100,
}


def _batches(n_batches=5, rows=30, d=4):
    g = torch.Generator().manual_seed(0)
    for b in range(n_batches):
        yield ActivationBatch(
            torch.randn(rows, d, generator=g),
            torch.arange(rows) + b,
            torch.full((rows,), b),
            torch.arange(rows),
        )


def test_embedded_corpus_is_real_text_and_deterministic():
    texts = embedded_texts()
    assert len(texts) > 500 and sum(map(len, texts)) > 500_000
    assert any("lambda" in t for t in texts)
    assert corpus_hash(texts) == corpus_hash(embedded_texts())


def test_text_jsonl_and_directory_corpora(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third"}\n')
    assert load_texts(tmp_path / "a.txt") == ["first document"]
    assert load_texts(tmp_path / "b.jsonl") == ["second", "third"]
    assert load_texts(tmp_path) == ["first document", "second", "third"]
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(FormatError, match="no string field 'text'"):
        load_texts(tmp_path / "c.jsonl")
    assert load_texts(tmp_path / "c.jsonl", text_field="body") == ["x"]
    (tmp_path / "d.jsonl").write_text("{oops\n")
    with pytest.raises(FormatError, match="d.jsonl:1 is not valid JSON"):
        load_texts(tmp_path / "d.jsonl")
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(ConfigError, match="is empty"):
        load_texts(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError):
        load_texts(tmp_path / "missing.txt")


def test_cache_round_trip_in_shards(tmp_path):
    write_cache(tmp_path / "c", _batches(), ID, shard_tokens=64)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n_tokens"] == 150 and manifest["d_model"] == 4
    # a shard is flushed once >= 64 tokens are pending: 3 batches of 30, then the rest
    assert [sh["n_tokens"] for sh in manifest["shards"]] == [90, 60]
    data = read_cache(tmp_path / "c", ID)
    want = list(_batches())
    assert torch.equal(data.acts, torch.cat([b.acts for b in want]))
    assert torch.equal(data.window, torch.cat([b.window for b in want]))


def test_cache_with_another_identity_is_refused(tmp_path):
    write_cache(tmp_path / "c", _batches(), ID)
    with pytest.raises(ConfigError, match="hook: cache has 'layers.0.residual', requested 'x'"):
        read_cache(tmp_path / "c", {**ID, "hook": "x"})
    with pytest.raises(FileExistsError):
        write_cache(tmp_path / "c", _batches(), ID)


def test_interrupted_cache_write_leaves_only_complete_shards(tmp_path, monkeypatch):
    def dying():
        yield from _batches(3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_cache(tmp_path / "c", dying(), ID, shard_tokens=30)
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert files == [
        "manifest.json",
        "shard_00000.safetensors",
        "shard_00001.safetensors",
        "shard_00002.safetensors",
    ]
    with pytest.raises(FormatError, match="incomplete"):
        read_cache(tmp_path / "c", ID)

    # Disk full while writing the third shard: no partial shard file is left behind, the
    # manifest (never torn) lists the two whole ones, and the error says what was kept.
    real_save = store_mod.save_file
    calls = []

    def full_disk(tensors, path):
        calls.append(path)
        if len(calls) < 3:
            return real_save(tensors, path)
        open(path, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod, "save_file", full_disk)
    with pytest.raises(DataError, match=r"shard_00002.*No space left.*kept 2 complete shards"):
        write_cache(tmp_path / "d", _batches(), ID, shard_tokens=30)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "manifest.json",
        "shard_00000.safetensors",
        "shard_00001.safetensors",
    ]
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 2
    with pytest.raises(FormatError, match="incomplete.*kept 2 complete shards"):
        read_cache(tmp_path / "d", ID)
    monkeypatch.setattr(store_mod, "save_file", real_save)


def test_corrupt_shard_is_refused(tmp_path):
    write_cache(tmp_path / "c", _batches(), ID, shard_tokens=64)
    shard = tmp_path / "c" / "shard_00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(FormatError, match="shard_00001.safetensors is missing or corrupt"):
        read_cache(tmp_path / "c", ID)


def test_store_batches_are_a_function_of_step():
    acts = torch.arange(10.0).unsqueeze(1)  # [10, 1]
    s = ActivationStore(acts, seed=3)
    epoch0 = torch.cat([s.batch(i, 5) for i in range(2)]).flatten()
    assert sorted(epoch0.tolist()) == list(range(10))  # no repeats within an epoch
    wrap = s.batch(1, 7).flatten()  # rows 7..13: spans epochs 0 and 1
    assert len(wrap) == 7
    assert torch.equal(ActivationStore(acts, seed=3).batch(4, 3), s.batch(4, 3))
    assert not torch.equal(ActivationStore(acts, seed=4).batch(0, 10), s.batch(0, 10))
    with pytest.raises(ConfigError):
        ActivationStore(torch.zeros(0, 3))


def test_hugging_face_datasets_directory_corpus(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed")
    ds = datasets.Dataset.from_dict({"content": ["alpha text", "beta text", " "], "id": [1, 2, 3]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert load_texts(tmp_path / "ds", text_field="content") == ["alpha text", "beta text"]
    with pytest.raises(FormatError, match="has no column 'text'; columns: \\['content', 'id'\\]"):
        load_texts(tmp_path / "ds")

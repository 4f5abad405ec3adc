"""Reading a cache larger than RAM: memory-mapped shards, batches mixing every shard, each
row once per epoch, a pure function of the step, shares of data-parallel replicas, cache
dtypes, and a missing or corrupt shard met mid-run."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from sae_fast import ConfigError, FormatError
from sae_fast.data.activations import ActivationBatch
from sae_fast.data.cache_feed import CacheFeed
from sae_fast.data.store import read_manifest, write_cache

ID = dict(model="m", hook="h", target_hook=None, context_size=8, corpus_hash="x", max_tokens=1)


def _batches(n=12, rows=50, d=6, target=False):
    g = torch.Generator().manual_seed(0)
    for b in range(n):
        yield ActivationBatch(
            torch.randn(rows, d, generator=g) * 3,
            torch.arange(rows) + b,
            torch.full((rows,), b),
            torch.arange(rows),
            torch.randn(rows, 2, generator=g) if target else None,
        )


def _cache(path, **kw):
    target = kw.pop("target", False)
    ident = dict(ID, target_hook="t" if target else None)
    write_cache(path, _batches(target=target), ident, shard_tokens=100, **kw)
    return read_manifest(path, ident)


def _feed(path, manifest, **kw):
    args = dict(batch_size=40, buffer_tokens=200, seed=0)
    target = "t" if manifest.get("target_hook") else None
    return CacheFeed(path, manifest, "h", target, **{**args, **kw})


def test_every_row_once_per_epoch_and_batches_mix_shards(tmp_path):
    manifest = _cache(tmp_path / "c")
    assert len(manifest["shards"]) == 6
    feed = _feed(tmp_path / "c", manifest)
    rows = [feed.batch(s) for s in range(15)]  # 600 rows: one epoch exactly
    feed.close()
    index = torch.cat([r.index for r in rows]).tolist()
    assert sorted(index) == list(range(600))
    shards_in_batch = {i // 100 for i in rows[0].index.tolist()}
    assert len(shards_in_batch) == 6  # a group takes a chunk of every shard
    # the rows are the cache's rows, with their provenance
    full = torch.cat([b.acts for b in _batches()])
    assert torch.equal(rows[3].acts["h"], full[rows[3].index])
    assert torch.equal(rows[3].window, (rows[3].index // 50))


def test_a_batch_is_a_pure_function_of_the_step(tmp_path):
    manifest = _cache(tmp_path / "c")
    a = _feed(tmp_path / "c", manifest)
    want = [a.batch(s).index for s in range(40)]
    a.close()
    b = _feed(tmp_path / "c", manifest)
    for s in (33, 4, 17, 39):  # any order, as after a resume
        assert torch.equal(b.batch(s).index, want[s])
    b.close()
    second_epoch = Counter(torch.cat(want[15:30]).tolist())
    assert set(second_epoch.values()) == {1} and want[15].tolist() != want[0].tolist()


def test_replicas_read_their_share_of_the_global_batch(tmp_path):
    manifest = _cache(tmp_path / "c")
    whole = _feed(tmp_path / "c", manifest)
    shares = [_feed(tmp_path / "c", manifest, replica=r, replicas=2) for r in range(2)]
    for s in range(5):
        joined = torch.cat([f.batch(s).index for f in shares])
        assert torch.equal(joined, whole.batch(s).index)
    for f in (whole, *shares):
        f.close()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_cache_stored_in_a_half_dtype_reads_back_rounded(tmp_path, dtype):
    manifest = _cache(tmp_path / "c", dtype=dtype, target=True)
    assert manifest["dtype"] == dtype
    feed = _feed(tmp_path / "c", manifest)
    rows = feed.batch(0)
    feed.close()
    full = list(_batches(target=True))
    acts = torch.cat([b.acts for b in full])[rows.index]
    target = torch.cat([b.target for b in full])[rows.index]
    half = getattr(torch, dtype)
    assert rows.acts["h"].dtype == torch.float32
    assert torch.equal(rows.acts["h"], acts.to(half).float())
    assert torch.equal(rows.acts["t"], target.to(half).float())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c" / "shard_00000.safetensors"), framework="pt") as f:
        assert f.get_tensor("acts").dtype == half and f.get_tensor("target").dtype == half


def test_a_bad_cache_dtype_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cache dtype must be one of"):
        write_cache(tmp_path / "c", _batches(), ID, dtype="int8")


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_shard_lost_mid_run_is_named(tmp_path, damage):
    manifest = _cache(tmp_path / "c")
    feed = _feed(tmp_path / "c", manifest, background=False)
    feed.batch(0)  # the first group read fine
    shard = tmp_path / "c" / "shard_00004.safetensors"
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(FormatError, match="shard_00004.safetensors is missing or corrupt"):
        for s in range(1, 15):
            feed.batch(s)
    feed.close()

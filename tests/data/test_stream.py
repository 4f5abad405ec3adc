"""The streaming feed: the background producer, the shuffled mixing buffer, its exact
position (resume with no window seen twice or skipped), several hooks from one forward
pass stopped after the deepest, and a buffer too small for a batch."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
import torch

from sae_fast import ConfigError
from sae_fast.data.activations import iter_activations, load_model, select_windows, token_windows
from sae_fast.data.corpus import load_texts
from sae_fast.data.filters import TokenFilter
from sae_fast.data.forward import iter_rows
from sae_fast.data.hooks import resolve_hook
from sae_fast.data.prefetch import Prefetcher
from sae_fast.data.stream import StreamFeed

HOOK = "layers.3.residual"


def test_prefetcher_makes_blocks_in_order_in_the_background_two_at_most():
    alive, peak, threads = set(), [0], set()
    lock = threading.Lock()

    class Block:
        def __init__(self, i):
            self.i = i
            with lock:
                alive.add(i)
                peak[0] = max(peak[0], len(alive))

        def __del__(self):
            with lock:
                alive.discard(self.i)

    def make(i):
        threads.add(threading.current_thread().name)
        return Block(i)

    p = Prefetcher(make, first=3)
    got = []
    for _ in range(6):
        b = p.next()
        got.append(b.i)
        del b
    p.close()
    assert got == [3, 4, 5, 6, 7, 8]
    assert threads == {"sae-fast-data"} and peak[0] <= 2


def test_prefetcher_raises_the_producers_error_in_the_caller():
    def make(i):
        if i == 2:
            raise ValueError("shard 2 is corrupt")
        return i

    p = Prefetcher(make)
    assert [p.next(), p.next()] == [0, 1]
    with pytest.raises(ValueError, match="shard 2 is corrupt"):
        p.next()


@pytest.fixture(scope="module")
def embedded():
    model, tok = load_model("embedded")
    windows, _ = select_windows(tok, token_windows(tok, load_texts("embedded"), 64), 6000)
    return model, tok, windows


def _feed(embedded, **kw):
    model, tok, windows = embedded
    args = dict(batch_size=200, buffer_tokens=1600, keep=TokenFilter(), seed=1)
    return StreamFeed(model, tok, windows, [HOOK], **{**args, **kw})


def _served(feed, steps, first=0):
    rows = [feed.batch(s) for s in range(first, first + steps)]
    return rows, [(int(w), int(p)) for r in rows for w, p in zip(r.window, r.position, strict=True)]


def test_stream_serves_every_kept_token_once_per_epoch_shuffled(embedded):
    model, tok, windows = embedded
    every = Counter(
        (int(w), int(p))
        for b in iter_activations(model, tok, windows, HOOK)
        for w, p in zip(b.window, b.position, strict=True)
    )
    feed = _feed(embedded)
    n = sum(every.values())
    _rows, served = _served(feed, 2 * n // 200)
    feed.close()
    # no token twice within an epoch; the block that straddles the epoch's end already
    # mixes in the next epoch's windows (a fresh order), so it is exact up to that block
    first = served[: n - 800]
    assert len(set(first)) == len(first) and set(served) == set(every)
    assert 1 <= min(Counter(served).values()) and max(Counter(served).values()) <= 3
    # shuffled across windows: a batch mixes many windows, not one document's run
    first_batch_windows = {w for w, _p in served[:200]}
    assert len(first_batch_windows) > 10
    again = _feed(embedded)
    assert _served(again, 5)[1] == served[: 5 * 200]  # deterministic: seeded order
    again.close()
    other = _feed(embedded, seed=2)
    assert _served(other, 1)[1] != served[:200]
    other.close()


def test_a_restored_stream_continues_exactly_where_the_checkpoint_stood(embedded):
    whole = _feed(embedded)
    want_rows, want = _served(whole, 12)
    whole.close()
    cut = _feed(embedded)
    _served(cut, 7)
    state = json.loads(json.dumps(cut.state()))  # as a checkpoint stores it
    cut.close()
    resumed = _feed(embedded)
    resumed.restore(state)
    got_rows, got = _served(resumed, 5, first=7)
    resumed.close()
    assert got == want[7 * 200 :]  # no window seen twice or skipped
    for a, b in zip(want_rows[7:], got_rows, strict=True):
        assert torch.equal(a.acts[HOOK], b.acts[HOOK])  # bitwise on CPU


def test_asking_twice_for_a_step_returns_the_same_rows(embedded):
    feed = _feed(embedded)
    a = feed.batch(0)
    assert feed.batch(0) is a  # the SAEs of one pass share the step's rows
    feed.close()


def test_data_parallel_parts_stream_disjoint_windows(embedded):
    parts = [_feed(embedded, part=r, parts=2, batch_size=100) for r in range(2)]
    seen = []
    for f in parts:
        seen.append({w for w, _p in _served(f, 10)[1]})
        f.close()
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_several_hooks_come_from_one_pass_stopped_after_the_deepest(embedded):
    model, tok, windows = embedded
    calls = Counter()
    later = resolve_hook(model, "layers.5.residual").module
    handle = later.register_forward_hook(lambda *_: calls.update(["layer5"]))
    try:
        rows = list(iter_rows(model, tok, windows[:8], ["layers.1.residual", HOOK]))
    finally:
        handle.remove()
    assert calls["layer5"] == 0  # the pass stopped after layer 3
    single = list(iter_activations(model, tok, windows[:8], "layers.1.residual"))
    assert torch.equal(rows[0].acts["layers.1.residual"], single[0].acts)
    assert rows[0].acts[HOOK].shape == rows[0].acts["layers.1.residual"].shape


def test_a_buffer_smaller_than_a_batch_is_refused(embedded):
    with pytest.raises(ConfigError, match="buffer_tokens=300 is smaller than two batches of 200"):
        _feed(embedded, buffer_tokens=300)

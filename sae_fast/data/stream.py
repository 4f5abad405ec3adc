"""`StreamFeed`: training batches straight from the model, with memory bounded by the
mixing buffer whatever the token budget.

The training windows (the first `max_tokens` tokens of the corpus) are read in a fresh
seeded order each epoch; a data-parallel replica reads every `parts`-th of them. A
background `Prefetcher` runs the model over them (every hook of the run in one forward
pass) into blocks of `buffer_tokens / 2` activations (or the whole training set when it is
smaller, but at least a batch), each shuffled by a generator seeded
with (seed, block, part); training takes consecutive batches from the shuffled block while
the next block is made. So the buffer holds `buffer_tokens` activations: the block being
served and the one being filled.

The stream's position is plain JSON: the block being served (its epoch, window cursor and
`TokenFilter` state at its start) and how many of its rows were served. A checkpoint
stores it; resuming re-makes that block (the same windows, the same shuffle) and skips
what was served, so no window is seen twice or skipped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .activations import special_frame
from .filters import TokenFilter
from .forward import iter_rows
from .prefetch import Prefetcher
from .rows import Rows


def seeded(*parts: int) -> torch.Generator:
    """A CPU generator seeded from integers (each < 2**20 apart from the first)."""
    seed = 0
    for p in parts:
        seed = (seed * 1_048_583 + int(p)) % (2**63)
    return torch.Generator().manual_seed(seed)


@dataclass
class Block:
    """Shuffled rows, where the stream stood before and after them, the filter's counts."""

    rows: Rows
    start: dict[str, Any]
    end: dict[str, Any]
    counts: dict[str, int]


def check_buffer(buffer_tokens: int, batch_size: int) -> None:
    """ConfigError unless the buffer holds two batches (one half served, one filling)."""
    if buffer_tokens < 2 * batch_size:
        raise ConfigError(
            f"buffer_tokens={buffer_tokens} is smaller than two batches of {batch_size} "
            f"tokens: the mixing buffer serves one half while it fills the other, and each "
            f"half must hold a whole batch (use --buffer-tokens >= {2 * batch_size})"
        )


class StreamFeed:
    """Batches of `batch_size` rows (this replica's share) at `hooks`, streamed from
    `model` over `windows` (module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        windows: Sequence[list[int]],
        hooks: list[str],
        *,
        batch_size: int,
        buffer_tokens: int,
        keep: TokenFilter,
        seed: int = 0,
        part: int = 0,
        parts: int = 1,
        forward_batch: int = 32,
        background: bool = True,
    ) -> None:
        check_buffer(buffer_tokens, batch_size)
        if len(windows) < parts:
            raise ConfigError(
                f"{len(windows)} training windows cannot feed {parts} data replicas; "
                "use a larger --max-tokens or fewer ranks"
            )
        self.model, self.tokenizer, self.windows, self.hooks = model, tokenizer, windows, hooks
        # a training set smaller than the buffer is one block: no token twice in a block
        frame = sum(len(f) for f in special_frame(tokenizer))
        share = (sum(len(w) for w in windows) - frame * len(windows)) // parts
        self.batch_size = batch_size
        self.block_rows = max(batch_size, min(buffer_tokens // 2, share))
        self.seed, self.part, self.parts = seed, part, parts
        self.forward_batch, self.background = forward_batch, background
        self.per_replica = parts > 1  # each replica streams different rows
        self._start: dict[str, Any] = {"block": 0, "epoch": 0, "cursor": 0, "filter": keep.state()}
        self._offset = 0
        self._orders: dict[int, list[int]] = {}
        self._prefetch: Prefetcher[Block] | None = None
        self._current: Block | None = None
        self._next_start: dict[str, Any] = {}
        self._last: tuple[int, Rows] | None = None
        self.produce_seconds = 0.0  # model time (in the producer), for the run's timings
        self._window_tokens = max(1, sum(len(w) for w in windows[:256]) // min(256, len(windows)))

    # ------------------------------------------------------------------ making blocks
    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            perm = torch.randperm(len(self.windows), generator=seeded(self.seed, 7, epoch))
            self._orders = {epoch: perm[self.part :: self.parts].tolist()}
        return self._orders[epoch]

    def _make_block(self, start: dict[str, Any]) -> Block:
        t0 = time.perf_counter()
        keep = TokenFilter.from_state(start["filter"])
        epoch, cursor = start["epoch"], start["cursor"]
        parts: list[Rows] = []
        n = empty_epoch = 0
        while n < self.block_rows:
            order = self._order(epoch)
            # no more windows than the block still needs (small buffers stay small)
            want = -(-(self.block_rows - n) // self._window_tokens)
            take = order[cursor : cursor + max(1, min(self.forward_batch, want))]
            group = [self.windows[i] for i in take]
            for rows in iter_rows(
                self.model, self.tokenizer, group, self.hooks, len(take), keep, take
            ):
                parts.append(rows)
                n += len(rows)
            cursor += len(take)
            if cursor >= len(order):
                epoch, cursor = epoch + 1, 0
                empty_epoch = empty_epoch + 1 if n == 0 else 0
                if empty_epoch > 1:
                    raise ConfigError("the training windows hold no token that is kept")
        rows = Rows.cat(parts)
        perm = torch.randperm(len(rows), generator=seeded(self.seed, 11, self.part, start["block"]))
        end = {"block": start["block"] + 1, "epoch": epoch, "cursor": cursor}
        end["filter"] = keep.state()
        self.produce_seconds += time.perf_counter() - t0
        return Block(rows.take(perm), start, end, keep.counts())

    def _make_next(self, _index: int) -> Block:
        block = self._make_block(self._next_start)
        self._next_start = block.end
        return block

    def _block(self) -> Block:
        if self._current is None:
            self._next_start = self._start
            self._prefetch = Prefetcher(self._make_next, background=self.background)
            self._current = self._prefetch.next()
        return self._current

    # ------------------------------------------------------------------ the feed
    def sample(self) -> Rows:
        """Rows of the block about to be served (for the input scale and b_dec)."""
        return self._block().rows

    def batch(self, step: int) -> Rows:
        """The rows of `step`; steps are served in order (asking twice for the same step,
        as the SAEs of one pass do, returns the same rows)."""
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        parts, need = [], self.batch_size
        while need:
            block = self._block()
            take = block.rows.take(slice(self._offset, self._offset + need))
            parts.append(take)
            need -= len(take)
            self._offset += len(take)
            if self._offset >= len(block.rows):
                assert self._prefetch is not None
                self._start, self._offset = block.end, 0
                self._current = self._prefetch.next()
        rows = parts[0] if len(parts) == 1 else Rows.cat(parts)
        self._last = (step, rows)
        return rows

    def state(self) -> dict[str, Any]:
        """The stream position after the last batch served (JSON, for a checkpoint)."""
        return {"kind": "stream", "start": self._start, "offset": self._offset}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state()`, maybe of another process)."""
        if state.get("kind") != "stream":
            raise ConfigError(
                f"the checkpoint was read from a {state.get('kind', 'memory')} feed, this run "
                "streams from the model; resume with the same --cache setting"
            )
        self.close()
        self._start, self._offset = state["start"], int(state["offset"])
        self._current, self._last = None, None

    def counts(self) -> dict[str, int]:
        """The token filter's counts so far (blocks made and served)."""
        return dict(self._block().counts)

    def close(self) -> None:
        """Stop the producer thread."""
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None

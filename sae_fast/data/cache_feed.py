"""`CacheFeed`: training batches from an activation cache larger than RAM.

The shards stay on disk; safetensors memory-maps each one and only the rows of the group
being served are read. Each epoch every shard is cut into G chunks (G = tokens / half the
buffer) and group g takes one chunk of every shard, a seeded permutation of its chunks per
(epoch, shard), so a group mixes windows from the whole cache; the group's rows are then
shuffled by a generator seeded with (seed, epoch, g). Every row appears once per epoch.

Batch `step` is rows [step * B, (step + 1) * B) of that order: a pure function of (seed,
step), as with the in-memory store, so a resumed run sees the batches of an uninterrupted
one bitwise. A data-parallel replica reads only its share of each batch. The next group is
read in the background while this one is served.
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import FormatError
from .prefetch import Prefetcher
from .rows import Rows
from .stream import check_buffer, seeded

_FIELDS = ("tokens", "window", "position")


class CacheFeed:
    """Batches of this replica's share of `batch_size` rows from the cache at `path`
    (`manifest` already checked by `store.read_manifest`), at `hook` (and `target_hook`),
    from its first `rows` rows (default: all)."""

    per_replica = False  # every replica computes the same global batch and keeps its share

    def __init__(
        self,
        path: str | Path,
        manifest: dict[str, Any],
        hook: str,
        target_hook: str | None,
        *,
        batch_size: int,
        buffer_tokens: int,
        seed: int = 0,
        replica: int = 0,
        replicas: int = 1,
        background: bool = True,
        rows: int | None = None,
    ) -> None:
        check_buffer(buffer_tokens, batch_size // replicas)
        self.path = Path(path)
        self.hook, self.target_hook = hook, target_hook
        self.manifest = manifest
        self.files = [self.path / s["file"] for s in manifest["shards"]]
        self.stored = [int(s["n_tokens"]) for s in manifest["shards"]]
        self.sizes, left = [], sum(self.stored) if rows is None else rows
        for n in self.stored:  # the first `rows` rows only (a smaller run's prefix)
            if left <= 0:
                break
            self.sizes.append(min(n, left))
            left -= n
        self.n_tokens = sum(self.sizes)
        self.first_row = [sum(self.stored[:s]) for s in range(len(self.stored))]
        self.batch_size, self.seed = batch_size, seed
        self.replica, self.replicas = replica, replicas
        self.n_groups = max(1, math.ceil(self.n_tokens / (buffer_tokens // 2)))
        self.background = background
        self._plans: dict[int, tuple[list[list[tuple[int, int, int]]], list[int]]] = {}
        self._groups: dict[int, Rows] = {}
        self._prefetch: Prefetcher[Rows] | None = None
        self._next = -1  # the group the prefetcher makes next

    # ------------------------------------------------------------------ reading
    def _plan(self, epoch: int) -> tuple[list[list[tuple[int, int, int]]], list[int]]:
        """Per group of `epoch`: its (shard, lo, hi) chunks, and the groups' start rows."""
        if epoch not in self._plans:
            g_n = self.n_groups
            groups: list[list[tuple[int, int, int]]] = [[] for _ in range(g_n)]
            for s, n in enumerate(self.sizes):
                order = torch.randperm(g_n, generator=seeded(self.seed, 13, epoch, s)).tolist()
                for g, c in enumerate(order):
                    lo, hi = n * c // g_n, n * (c + 1) // g_n
                    if hi > lo:
                        groups[g].append((s, lo, hi))
            starts = [0]
            for chunks in groups:
                starts.append(starts[-1] + sum(hi - lo for _s, lo, hi in chunks))
            self._plans = {epoch: (groups, starts)}
        return self._plans[epoch]

    def _read(self, s: int, lo: int, hi: int) -> Rows:
        f = self.files[s]
        try:
            with safe_open(str(f), framework="pt") as h:
                keys = set(h.keys())
                if ("target" in keys and self.target_hook is None) or (
                    self.target_hook is not None and "target" not in keys
                ):
                    raise FormatError(f"cache shard {f} does not hold what the manifest says")
                acts = {self.hook: h.get_slice("acts")[lo:hi].float()}
                if self.target_hook is not None:
                    acts[self.target_hook] = h.get_slice("target")[lo:hi].float()
                meta = [h.get_slice(k)[lo:hi] for k in _FIELDS]
                n = h.get_slice("tokens").get_shape()[0]
        except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as err:
            raise FormatError(f"cache shard {f} is missing or corrupt: {err}") from err
        if n != self.stored[s]:
            raise FormatError(
                f"cache shard {f} holds {n} tokens, the manifest says {self.stored[s]}"
            )
        first = self.first_row[s] + lo
        return Rows(acts, *meta, index=torch.arange(first, first + hi - lo))

    def _load(self, index: int) -> Rows:
        """Group `index` (epoch * n_groups + g), shuffled."""
        epoch, g = divmod(index, self.n_groups)
        chunks = self._plan(epoch)[0][g]
        rows = Rows.cat([self._read(s, lo, hi) for s, lo, hi in chunks])
        perm = torch.randperm(len(rows), generator=seeded(self.seed, 17, epoch, g))
        return rows.take(perm)

    def _group(self, index: int) -> Rows:
        if index not in self._groups:
            if self._prefetch is None or self._next != index:
                self.close()
                self._prefetch = Prefetcher(self._load, first=index, background=self.background)
            self._groups[index] = self._prefetch.next()
            self._next = index + 1
        return self._groups[index]

    # ------------------------------------------------------------------ the feed
    def read(self, lo: int, hi: int) -> Rows:
        """Rows [lo, hi) of the cache in file order (any rows, not only the served ones)."""
        parts = []
        for s, first in enumerate(self.first_row):
            a, b = max(lo, first), min(hi, first + self.stored[s])
            if a < b:
                parts.append(self._read(s, a - first, b - first))
        return Rows.cat(parts)

    def sample(self) -> Rows:
        """The cache's first rows in file order (for the input scale and b_dec)."""
        return self._read(0, 0, min(self.sizes[0], 65536))

    def batch(self, step: int) -> Rows:
        """This replica's share of global batch `step` (a pure function of seed and step)."""
        per = self.batch_size // self.replicas
        pos = step * self.batch_size + self.replica * per
        parts, need, used = [], per, []
        while need:
            epoch, offset = divmod(pos, self.n_tokens)
            starts = self._plan(epoch)[1]
            g = bisect.bisect_right(starts, offset) - 1
            index = epoch * self.n_groups + g
            rows = self._group(index)
            lo = offset - starts[g]
            part = rows.take(slice(lo, lo + need))
            parts.append(part)
            used.append(index)
            need -= len(part)
            pos += len(part)
        for old in [i for i in self._groups if i < min(used)]:
            del self._groups[old]
        return parts[0] if len(parts) == 1 else Rows.cat(parts)

    def state(self) -> dict[str, Any]:
        """Nothing beyond the step: batches are a pure function of it."""
        return {"kind": "cache"}

    def restore(self, state: dict[str, Any]) -> None:
        """Check the checkpoint came from a cached run (the step says the rest)."""
        if state.get("kind", "cache") not in ("cache", "memory"):
            raise FormatError(
                "the checkpoint was written by a streamed run; resume it without --cache"
            )

    def counts(self) -> dict[str, int]:
        """The token filter's counts when the cache was written, and the rows served."""
        return {**self.manifest.get("filter_counts", {}), "tokens_kept": self.n_tokens}

    def close(self) -> None:
        """Stop the reader thread."""
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None

"""Where a training run's batches come from: one `Feed` per run, shared by every SAE the
run trains (they draw the same rows and each reads its own hooks).

- `StreamFeed` (stream.py): from the model, through the mixing buffer; the default.
- `CacheFeed` (cache_feed.py): from a complete activation cache, out of core; `--cache DIR`
  writes one first (streaming shards to disk) when DIR holds none.
- `MemoryFeed`: from activations already in memory (`Trainer(cfg, data=...)`).

Each serves `batch(step)` as this data-parallel replica's share of the step's rows, a
`sample()` for the input scale and b_dec, a JSON `state()` a checkpoint stores and
`restore()` reads back, and the token filter's `counts()` for the run's metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..config import dtype_from_name
from ..errors import ConfigError
from .activations import (
    ActivationBatch,
    is_causal_lm,
    iter_activations,
    load_model,
    select_windows,
    special_frame,
    token_windows,
)
from .cache_feed import CacheFeed
from .collect import SINGLE, Ranks, barrier
from .corpus import load_texts
from .filters import TokenFilter
from .fingerprint import model_fingerprint
from .hooks import resolve_hook
from .rows import Rows
from .store import MANIFEST, ActivationStore, cache_identity, read_manifest, write_cache
from .stream import StreamFeed

if TYPE_CHECKING:
    from ..config import TrainConfig

SAMPLE_ROWS = 65536  # rows that set the scales and b_dec


class Feed(Protocol):
    """What a trainer reads its batches from (module docstring)."""

    per_replica: bool  # whether data-parallel replicas see different samples

    def sample(self) -> Rows: ...
    def batch(self, step: int) -> Rows: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...
    def counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class MemoryFeed:
    """Batches from an `ActivationBatch` in memory: global batch `step` of the seeded
    `ActivationStore`, this replica's contiguous share of it."""

    per_replica = False

    def __init__(
        self, data: ActivationBatch, hook: str, target_hook: str | None, batch_size: int,
        seed: int = 0, replica: int = 0, replicas: int = 1,
    ) -> None:  # fmt: skip
        if batch_size % replicas:
            raise ConfigError(
                f"batch_size {batch_size} must be a multiple of the number of data replicas "
                f"{replicas}"
            )
        self.data, self.hook, self.target_hook = data, hook, target_hook
        self.store = ActivationStore(data.acts, seed=seed)
        self.batch_size, self.replica, self.replicas = batch_size, replica, replicas

    def _rows(self, index) -> Rows:
        return Rows.of(self.data.rows(index), self.hook, self.target_hook, index)

    def sample(self) -> Rows:
        import torch

        return self._rows(torch.arange(min(SAMPLE_ROWS, len(self.data.tokens))))

    def batch(self, step: int) -> Rows:
        index = self.store.indices(step, self.batch_size)
        per = self.batch_size // self.replicas
        return self._rows(index[self.replica * per : (self.replica + 1) * per])

    def state(self) -> dict[str, Any]:
        return {"kind": "memory"}

    def restore(self, state: dict[str, Any]) -> None:
        pass  # batches are a pure function of the step

    def counts(self) -> dict[str, int]:
        return {"tokens_kept": len(self.data.tokens)}

    def close(self) -> None:
        pass


@dataclass
class Source:
    """A run's feed with what it came from: the windows (indexed by `Rows.window`), the
    tokenizer, the distinct training tokens and the seconds spent opening it (a cache
    written first counts here)."""

    feed: Feed
    windows: Any
    tokenizer: Any
    n_tokens: int
    open_seconds: float = 0.0
    token_filter: dict[str, Any] = field(default_factory=dict)
    activations: ActivationBatch | None = None  # in memory, when the run had them
    fingerprint: dict[str, str] = field(default_factory=dict)  # the model's, when loaded here


def run_hooks(cfg: TrainConfig) -> list[str]:
    """The hooks a single-SAE run reads: its input hook, and a transcoder's target."""
    return [cfg.hook] if cfg.target_hook is None else [cfg.hook, cfg.target_hook]


def token_filter(cfg: TrainConfig, model) -> TokenFilter:
    """The filter `cfg` asks for on `model` (auto: on for causal LMs)."""
    return TokenFilter.for_model(is_causal_lm(model), cfg.drop_first, cfg.max_norm_ratio)


def open_source(
    cfg: TrainConfig, group: Ranks | None = None, device="cpu", hooks: list[str] | None = None
) -> Source:
    """The feed of a run with `cfg` on `device` (module docstring), reading `hooks` (default:
    `run_hooks(cfg)`; several only when streaming). A collective in a parallel run."""
    group = group or SINGLE
    t0 = time.perf_counter()
    hooks = hooks or run_hooks(cfg)
    if cfg.cache is not None and hooks != run_hooks(cfg):
        raise ConfigError(
            "an activation cache holds one hook (and a transcoder's target): train several "
            "hooks from one forward pass by streaming (without --cache)"
        )
    model, tokenizer = load_model(cfg.model, device, dtype_from_name(cfg.model_dtype))
    for h in hooks:
        resolve_hook(model, h)  # fail before tokenising the corpus
    texts = load_texts(cfg.corpus, cfg.text_field)
    windows, _ = select_windows(
        tokenizer, token_windows(tokenizer, texts, cfg.context_size), cfg.max_tokens
    )
    if not windows:
        raise ConfigError(f"corpus {cfg.corpus} produced no tokens")
    prefix, suffix = special_frame(tokenizer)
    n_tokens = sum(len(w) for w in windows) - len(windows) * (len(prefix) + len(suffix))
    keep = token_filter(cfg, model)
    settings = keep.settings()
    replica, replicas = getattr(group, "replica", group.rank), getattr(group, "replicas", 1)
    if cfg.cache is None:
        if cfg.batch_size % replicas:
            raise ConfigError(
                f"batch_size {cfg.batch_size} must be a multiple of the number of data "
                f"replicas {replicas}"
            )
        feed: Feed = StreamFeed(
            model, tokenizer, windows, hooks, batch_size=cfg.batch_size // replicas,
            buffer_tokens=cfg.buffer_tokens, keep=keep, seed=cfg.seed, part=replica,
            parts=replicas,
        )  # fmt: skip
        return Source(
            feed, windows, tokenizer, n_tokens, time.perf_counter() - t0, settings,
            fingerprint=model_fingerprint(model),
        )  # fmt: skip
    identity = cache_identity(cfg, texts, keep)
    cache = Path(cfg.cache)
    barrier(group)  # every rank sees the same cache state
    if not (cache / MANIFEST).exists():
        if group.is_main:  # streamed to disk shard by shard; the others wait
            acts = iter_activations(
                model, tokenizer, windows, cfg.hook, max_tokens=cfg.max_tokens,
                target_hook=cfg.target_hook, keep=keep,
            )  # fmt: skip
            write_cache(cache, acts, identity, dtype=cfg.cache_dtype, counts=keep.counts)
        barrier(group)
    manifest = read_manifest(cache, identity)
    feed = CacheFeed(
        cache, manifest, cfg.hook, cfg.target_hook, batch_size=cfg.batch_size,
        buffer_tokens=cfg.buffer_tokens, seed=cfg.seed, replica=replica, replicas=replicas,
    )  # fmt: skip
    return Source(
        feed, windows, tokenizer, n_tokens, time.perf_counter() - t0, settings,
        fingerprint=model_fingerprint(model),
    )  # fmt: skip


def memory_source(
    cfg: TrainConfig, data: tuple[ActivationBatch, Any, Any], group: Ranks | None = None
) -> Source:
    """The `Source` of activations already in memory (`collect` output)."""
    group = group or SINGLE
    acts, windows, tokenizer = data
    replica, replicas = getattr(group, "replica", group.rank), getattr(group, "replicas", 1)
    feed = MemoryFeed(acts, cfg.hook, cfg.target_hook, cfg.batch_size, cfg.seed, replica, replicas)
    return Source(feed, windows, tokenizer, len(acts.tokens), activations=acts)

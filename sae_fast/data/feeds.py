"""Where a training run's batches come from: one `Feed` per run, shared by every SAE the
run trains (they draw the same rows and each reads its own hooks).

- `StreamFeed` (stream.py): from the model, through the mixing buffer; the default.
- `CacheFeed` (cache_feed.py): from a complete activation cache, out of core; `--cache DIR`
  writes one first (streaming shards to disk) when DIR holds none (`sae-fast collect` writes
  one and stops). A cache serves any run that asks for at most the tokens it holds, its
  first windows, without loading the model or tokenising the corpus.
- `MemoryFeed`: from activations already in memory (`Trainer(cfg, data=...)`).

Each serves `batch(step)` as this data-parallel replica's share of the step's rows, a
`sample()` for the input scale and b_dec, a JSON `state()` a checkpoint stores and
`restore()` reads back, and the token filter's `counts()` for the run's metrics. Every
`Source` also holds the run's held-out rows: the windows right after the training ones
(`split.py`), never trained on.
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
    iter_token_windows,
    load_model,
    special_frame,
)
from .cache_feed import CacheFeed
from .collect import SINGLE, Ranks, barrier, collect_shares
from .corpus import load_texts
from .filters import TokenFilter
from .fingerprint import FINGERPRINT_KEY, model_fingerprint
from .forward import iter_rows
from .hooks import resolve_hook
from .rows import Rows
from .split import split_windows
from .store import (
    MANIFEST,
    ActivationStore,
    cache_identity,
    prefix_rows,
    read_manifest,
    read_windows,
    write_cache,
)
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
    tokenizer (None when a cache serves the run), the distinct training tokens and the
    seconds spent opening it (a cache written first counts here)."""

    feed: Feed
    windows: Any
    tokenizer: Any
    n_tokens: int
    open_seconds: float = 0.0
    token_filter: dict[str, Any] = field(default_factory=dict)
    activations: ActivationBatch | None = None  # in memory, when the run had them
    fingerprint: dict[str, str] = field(default_factory=dict)  # the model's (or the cache's)
    heldout: Rows | None = None  # held-out rows (later text), for the run's evaluations


def run_hooks(cfg: TrainConfig) -> list[str]:
    """The hooks a single-SAE run reads: its input hook, and a transcoder's target."""
    return [cfg.hook] if cfg.target_hook is None else [cfg.hook, cfg.target_hook]


def token_filter(cfg: TrainConfig, model) -> TokenFilter:
    """The filter `cfg` asks for on `model` (auto: on for causal LMs)."""
    return TokenFilter.for_model(is_causal_lm(model), cfg.drop_first, cfg.max_norm_ratio)


def _cache_info(cfg: TrainConfig, model, tokenizer, keep: TokenFilter, split, complete: bool):
    prefix, suffix = special_frame(tokenizer)
    return {
        "frame": len(prefix) + len(suffix),
        "causal_lm": is_causal_lm(model),
        "token_filter_settings": keep.settings(),
        "max_tokens_asked": cfg.max_tokens + cfg.eval_tokens,
        "corpus_tokens": split.train_tokens + split.heldout_tokens,
        "corpus_complete": complete,
        FINGERPRINT_KEY: model_fingerprint(model),
    }


def collect_cache(cfg: TrainConfig, group: Ranks | None = None, device="cpu") -> Path:
    """Write the activation cache `cfg.cache` of a run with `cfg`: its training windows and
    the held-out ones after them (`sae-fast collect`; a collective in a parallel run)."""
    group = group or SINGLE
    if cfg.cache is None:
        raise ConfigError("give the cache directory to write (--cache DIR)")
    cache = Path(cfg.cache)
    if (cache / MANIFEST).exists():
        raise FileExistsError(f"{cache} already holds an activation cache")
    model, tokenizer = load_model(cfg.model, device, dtype_from_name(cfg.model_dtype))
    for h in run_hooks(cfg):
        resolve_hook(model, h)  # fail before tokenising the corpus
    texts = load_texts(cfg.corpus, cfg.text_field)
    windows, split, complete = _read_windows(cfg, tokenizer, texts)
    windows = windows[: split.end]
    keep = token_filter(cfg, model)
    if group.world > 1:  # each rank's model replica runs over its share; rank 0 writes
        acts: Any = collect_shares(
            model, tokenizer, windows, cfg.hook, group, target_hook=cfg.target_hook, keep=keep
        )  # fmt: skip
    else:  # streamed to disk shard by shard
        acts = iter_activations(
            model, tokenizer, windows, cfg.hook, target_hook=cfg.target_hook, keep=keep
        )
    if group.is_main:
        write_cache(
            cache, acts, cache_identity(cfg, texts, keep), dtype=cfg.cache_dtype,
            counts=keep.counts, windows=windows,
            info=_cache_info(cfg, model, tokenizer, keep, split, complete),
        )  # fmt: skip
    barrier(group)
    return cache


def _read_windows(cfg: TrainConfig, tokenizer, texts: list[str]):
    """(the windows a run reads, their Split, whether they are the whole corpus): the corpus
    is tokenised only as far as the run's training and then held-out tokens reach."""
    frame = sum(len(f) for f in special_frame(tokenizer))
    windows, lengths, complete = [], [], True
    need = [cfg.max_tokens, cfg.eval_tokens]  # training tokens, then held-out ones
    for w in iter_token_windows(tokenizer, texts, cfg.context_size):
        while need and need[0] <= 0:
            need.pop(0)
        if not need:
            complete = False
            break
        windows.append(w)
        lengths.append(len(w) - frame)
        need[0] -= lengths[-1]
    split = split_windows(lengths, cfg.max_tokens, cfg.eval_tokens, f"corpus {cfg.corpus}")
    return windows, split, complete


def _cached_source(cfg: TrainConfig, group: Ranks, t0: float, texts=None) -> Source:
    """The Source of a run served by the complete cache `cfg.cache`: the cache's first
    windows, without the model or the tokenizer."""
    cache = Path(cfg.cache)
    manifest = read_manifest(cache)
    if manifest.get("version", 1) < 2:
        raise ConfigError(
            f"activation cache {cache} was written by an older sae_fast (it does not record "
            "its windows); delete it to rebuild it, or use another --cache directory"
        )
    texts = texts if texts is not None else load_texts(cfg.corpus, cfg.text_field)
    keep = TokenFilter.for_model(manifest["causal_lm"], cfg.drop_first, cfg.max_norm_ratio)
    # the corpus is hashed (read), never tokenised
    read_manifest(cache, cache_identity(cfg, texts, keep))  # ConfigError naming what differs
    windows = read_windows(cache)
    lengths = [len(w) - manifest["frame"] for w in windows]
    split = split_windows(
        lengths, cfg.max_tokens, cfg.eval_tokens, f"activation cache {cache}",
        complete=bool(manifest.get("corpus_complete")),
    )  # fmt: skip
    n_train = prefix_rows(cache, manifest, split.train)
    n_end = prefix_rows(cache, manifest, split.end)
    replica, replicas = getattr(group, "replica", group.rank), getattr(group, "replicas", 1)
    feed = CacheFeed(
        cache, manifest, cfg.hook, cfg.target_hook, batch_size=cfg.batch_size,
        buffer_tokens=cfg.buffer_tokens, seed=cfg.seed, replica=replica, replicas=replicas,
        rows=n_train,
    )  # fmt: skip
    heldout = feed.read(n_train, n_end) if n_end > n_train else None
    return Source(
        feed, windows[: split.train], None, split.train_tokens, time.perf_counter() - t0,
        manifest.get("token_filter_settings", {}), fingerprint=manifest.get(FINGERPRINT_KEY, {}),
        heldout=heldout,
    )  # fmt: skip


def open_source(
    cfg: TrainConfig, group: Ranks | None = None, device="cpu", hooks: list[str] | None = None
) -> Source:
    """The feed of a run with `cfg` on `device` (module docstring), reading `hooks` (default:
    `run_hooks(cfg)`; several only when streaming), and its held-out rows. A collective in a
    parallel run."""
    group = group or SINGLE
    t0 = time.perf_counter()
    hooks = hooks or run_hooks(cfg)
    if cfg.cache is not None and hooks != run_hooks(cfg):
        raise ConfigError(
            "an activation cache holds one hook (and a transcoder's target): train several "
            "hooks from one forward pass by streaming (without --cache)"
        )
    if cfg.cache is not None:
        barrier(group)  # every rank sees the same cache state
        if not (Path(cfg.cache) / MANIFEST).exists():
            collect_cache(cfg, group, device)
        return _cached_source(cfg, group, t0)
    model, tokenizer = load_model(cfg.model, device, dtype_from_name(cfg.model_dtype))
    for h in hooks:
        resolve_hook(model, h)  # fail before tokenising the corpus
    texts = load_texts(cfg.corpus, cfg.text_field)
    windows, split, _complete = _read_windows(cfg, tokenizer, texts)
    keep = token_filter(cfg, model)
    replica, replicas = getattr(group, "replica", group.rank), getattr(group, "replicas", 1)
    if cfg.batch_size % replicas:
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be a multiple of the number of data "
            f"replicas {replicas}"
        )
    heldout = None
    if split.end > split.train:  # the held-out windows' rows, once, before training
        held = list(range(split.train, split.end))
        parts = iter_rows(
            model, tokenizer, [windows[i] for i in held], hooks, 32,
            token_filter(cfg, model), held,
        )  # fmt: skip
        heldout = Rows.cat(list(parts))
    feed: Feed = StreamFeed(
        model, tokenizer, windows[: split.train], hooks, batch_size=cfg.batch_size // replicas,
        buffer_tokens=cfg.buffer_tokens, keep=keep, seed=cfg.seed, part=replica,
        parts=replicas,
    )  # fmt: skip
    return Source(
        feed, windows[: split.train], tokenizer, split.train_tokens, time.perf_counter() - t0,
        keep.settings(), fingerprint=model_fingerprint(model), heldout=heldout,
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

"""Activation collection for a run: the model over the corpus's windows at one hook (and
a transcoder's target hook, in the same pass), into
memory or through the activation cache, and split over the ranks of a parallel run (each
rank runs its own model replica over its share; every rank ends with what one process
would collect)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .activations import (
    ActivationBatch,
    is_causal_lm,
    iter_activations,
    iter_token_windows,
    load_model,
    select_windows,
)
from .corpus import load_texts
from .filters import TokenFilter
from .hooks import resolve_hook
from .store import concat_batches, read_cache

if TYPE_CHECKING:
    from ..config import TrainConfig


class Ranks(Protocol):
    """Where this process is in a parallel run (`training.distributed.Group` is one)."""

    rank: int
    world: int

    @property
    def is_main(self) -> bool: ...


@dataclasses.dataclass(frozen=True)
class _Single:
    rank: int = 0
    world: int = 1
    is_main: bool = True


SINGLE = _Single()


def barrier(group: Ranks) -> None:
    """Wait for every rank (no-op alone)."""
    if group.world > 1:
        dist.barrier()


def collect(
    cfg: TrainConfig, group: Ranks | None = None
) -> tuple[ActivationBatch, list[list[int]], Any]:
    """Training activations (from the cache when it matches), windows and tokenizer.

    In a parallel run (`group`, every rank calls it), each rank runs its own model replica
    over its share of the windows and the shares are gathered, in window order, so every
    rank ends with the activations one process would collect; rank 0 writes the cache."""
    group = group or SINGLE
    model, tokenizer = load_model(cfg.model)
    resolve_hook(model, cfg.hook)  # fail before tokenising the corpus
    if cfg.target_hook is not None:
        resolve_hook(model, cfg.target_hook)
    if cfg.cache is not None:  # written first if absent; its training rows, in order
        from .feeds import open_source

        source = open_source(cfg, group)
        source.feed.close()
        rows = source.feed.n_tokens  # type: ignore[attr-defined]
        return read_cache(cfg.cache, rows=rows), source.windows, tokenizer
    texts = load_texts(cfg.corpus, cfg.text_field)
    windows, _ = select_windows(
        tokenizer, iter_token_windows(tokenizer, texts, cfg.context_size), cfg.max_tokens
    )
    keep = TokenFilter.for_model(is_causal_lm(model), cfg.drop_first, cfg.max_norm_ratio)
    # whole windows, as the stream and the cache read them
    if group.world == 1:
        acts = list(
            iter_activations(
                model, tokenizer, windows, cfg.hook, target_hook=cfg.target_hook, keep=keep
            )
        )
    else:  # the same batches, on every rank: all of them stop here if there are none
        acts = collect_shares(
            model, tokenizer, windows, cfg.hook, group, target_hook=cfg.target_hook, keep=keep
        )  # fmt: skip
    if not acts:
        raise ConfigError(f"corpus {cfg.corpus} produced no tokens")
    return concat_batches(acts), windows, tokenizer


def collect_shares(
    model: torch.nn.Module,
    tokenizer: Any,
    windows: list[list[int]],
    hook: str,
    group: Ranks,
    batch_size: int = 32,
    target_hook: str | None = None,
    keep: TokenFilter | None = None,
) -> list[ActivationBatch]:
    """`list(iter_activations(...))` of all of `windows` with the model's work split over
    the ranks: each rank runs its own replica over every world-th batch of them, and the
    batches are gathered back in order (on every rank)."""
    chosen = windows
    starts = range(group.rank * batch_size, len(chosen), group.world * batch_size)
    mine = []
    for w0 in starts:
        part = chosen[w0 : w0 + batch_size]
        # (a norm-outlier filter keeps its running median per rank)
        for b in iter_activations(
            model, tokenizer, part, hook, batch_size, None, target_hook, keep
        ):
            mine.append(dataclasses.replace(b, window=b.window + w0))
    gathered: list[Any] = [None] * group.world
    dist.all_gather_object(gathered, mine)
    ordered: list[ActivationBatch] = []  # batch i * world + r is gathered[r][i]
    for i in range(max(len(g) for g in gathered)):
        ordered += [g[i] for g in gathered if i < len(g)]
    return ordered

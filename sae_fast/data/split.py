"""Which windows a run reads: the first ones for training, the next ones held out.

A run asks for `max_tokens` distinct training tokens and `eval_tokens` held-out ones. The
training windows are the first windows that reach `max_tokens` real tokens (whole windows,
as every run has read them); the held-out windows are the ones right after, later text the
SAE never trains on. A corpus (or cache) too short for both keeps the held-out slice at its
end and trains on what comes before, and says so: one warning with the real counts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..errors import ConfigError


def warn(message: str) -> None:
    """One line `warning: ...` on stderr (a run goes on)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Split:
    """Windows [0, train) train; windows [train, end) are held out."""

    train: int
    end: int
    train_tokens: int
    heldout_tokens: int


def _reach(lengths: list[int], start: int, tokens: int) -> tuple[int, int]:
    """(the window after those from `start` that reach `tokens` real tokens, their tokens)."""
    n, i = 0, start
    while i < len(lengths) and n < tokens:
        n += lengths[i]
        i += 1
    return i, n


def split_windows(
    lengths: list[int], max_tokens: int, eval_tokens: int, where: str, complete: bool = True
) -> Split:
    """The `Split` of windows with `lengths` real tokens each (module docstring). `where`
    names the source in messages; `complete`: the windows are all the corpus holds (else a
    source short of the training tokens is refused, and one short of the held-out tokens
    holds out what follows the training windows)."""
    total = sum(lengths)
    if total == 0:
        raise ConfigError(f"{where} produced no tokens")
    asked = max_tokens + eval_tokens
    if total < max_tokens and not complete:
        raise ConfigError(
            f"{where} holds {total:,} tokens, fewer than the {max_tokens:,} training tokens "
            "this run asks for: use a larger cache (sae-fast collect --max-tokens N) or "
            "another --cache directory"
        )
    train, n_train = _reach(lengths, 0, max_tokens)
    end, n_held = _reach(lengths, train, eval_tokens)
    if eval_tokens and n_held < eval_tokens and not complete:  # a cache: what follows
        warn(
            f"{where} holds {n_held:,} tokens after this run's {n_train:,} training ones: "
            f"the held-out slice is those {n_held:,}, not {eval_tokens:,}"
            + ("" if n_held else " (no held-out metrics)")
        )
        return Split(train, end, n_train, n_held)
    if eval_tokens and n_held < eval_tokens:  # short: the held-out slice is the corpus's end
        if total < 2 * eval_tokens:
            warn(
                f"{where} holds {total:,} tokens, too few to hold out {eval_tokens:,}: "
                "this run reports no held-out metrics (lower --eval-tokens)"
            )
            return Split(len(lengths), len(lengths), total, 0)
        start, n_held = len(lengths), 0
        while n_held < eval_tokens:
            start -= 1
            n_held += lengths[start]
        train, end = min(train, start), len(lengths)
        n_train = sum(lengths[:train])
    if n_train < max_tokens:
        warn(
            f"{where} holds {total:,} tokens, fewer than the {asked:,} asked for: this run "
            f"trains on {n_train:,} (not {max_tokens:,}) and holds out {n_held:,}"
        )
    return Split(train, end, n_train, n_held)

"""Which tokens' activations are kept, beyond the special tokens `pad_windows` drops.

Causal LMs write attention sinks at position 0 (and at a few other tokens): SmolLM2-135M's
position-0 residual norm at layer 15 is ~22,000 against ~180 elsewhere. Rows like these
dominate an SAE's MSE. `TokenFilter` drops position 0 and any token whose activation norm,
at any hooked point, exceeds `max_norm_ratio` times the running median norm there (the
median of the last `history` forward batches' medians); it counts what it drops. Its state
is plain JSON, so a streamed run's checkpoint restores it exactly.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

DEFAULT_CAUSAL_RATIO = 10.0  # sinks are 10-100x the median; ordinary tokens stay within ~3x


@dataclass
class TokenFilter:
    """Drops position 0 (`drop_first`) and norm outliers (`max_norm_ratio`, None: off)."""

    drop_first: bool = False
    max_norm_ratio: float | None = None
    history: int = 64
    medians: dict[str, list[float]] = field(default_factory=dict)
    kept: int = 0
    dropped_first: int = 0
    dropped_outliers: int = 0

    def __post_init__(self) -> None:
        r = self.max_norm_ratio
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 1):
            raise ConfigError(f"max_norm_ratio must be a number > 1 or None (off), got {r!r}")

    @classmethod
    def for_model(cls, causal: bool, drop_first: str = "auto", ratio: float | None = None):
        """The filter a run asks for: `drop_first` auto|on|off and `ratio` (None: auto, 0:
        off); auto means on for causal LMs (ratio DEFAULT_CAUSAL_RATIO), off otherwise."""
        if drop_first not in ("auto", "on", "off"):
            raise ConfigError(f"drop_first must be auto, on or off, got {drop_first!r}")
        first = causal if drop_first == "auto" else drop_first == "on"
        if ratio is None:
            ratio = DEFAULT_CAUSAL_RATIO if causal else 0.0
        return cls(first, float(ratio) or None)

    def keep(self, keep: Tensor, acts: dict[str, Tensor]) -> Tensor:
        """`keep` `[B, T]` (real tokens) narrowed by this filter, given the activations
        `[B, T, d]` at each hook of the same forward pass; updates the counts and medians."""
        keep = keep.clone()
        if self.drop_first:
            self.dropped_first += int(keep[:, 0].sum())
            keep[:, 0] = False
        if self.max_norm_ratio is not None and bool(keep.any()):
            on = keep.to(next(iter(acts.values())).device)
            outlier = torch.zeros_like(on)
            for hook, a in acts.items():
                norms = a.float().norm(dim=-1)
                past = self.medians.setdefault(hook, [])
                past.append(float(norms[on].median()))
                del past[: -self.history]
                outlier |= norms > self.max_norm_ratio * statistics.median(past)
            outlier = (outlier & on).cpu()
            self.dropped_outliers += int(outlier.sum())
            keep &= ~outlier
        self.kept += int(keep.sum())
        return keep

    def settings(self) -> dict[str, Any]:
        """What the filter drops, as SAE metadata records it (`evaluate` reads it back)."""
        return {"drop_first": self.drop_first, "max_norm_ratio": self.max_norm_ratio}

    def identity(self) -> dict[str, Any] | None:
        """A cache's record of its filter: None when off, as every older cache was."""
        return self.settings() if self.drop_first or self.max_norm_ratio else None

    def counts(self) -> dict[str, int]:
        """Tokens kept and dropped so far (for a run's metrics)."""
        return {
            "tokens_kept": self.kept,
            "dropped_first_position": self.dropped_first,
            "dropped_norm_outliers": self.dropped_outliers,
        }

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly (JSON)."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TokenFilter:
        """Inverse of `state`."""
        return cls(**state)

"""`Rows`: activations of n tokens at one or more hooks of the same forward pass, with
where each token came from: what the data engine moves between model, buffer and trainers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .activations import ActivationBatch


@dataclass
class Rows:
    """`acts[hook]` `[n, d_hook]` for each hook, and each token's id, window and position;
    `index`: the row numbers in a stored set (cache or memory), None when streamed."""

    acts: dict[str, Tensor]
    tokens: Tensor
    window: Tensor
    position: Tensor
    index: Tensor | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def take(self, sl: slice | Tensor) -> Rows:
        """The tokens `sl` (a slice or an index tensor) of every field."""
        acts = {h: a[sl] for h, a in self.acts.items()}
        index = None if self.index is None else self.index[sl]
        return Rows(acts, self.tokens[sl], self.window[sl], self.position[sl], index)

    @staticmethod
    def cat(parts: list[Rows]) -> Rows:
        """All rows of `parts`, in order (every part has the same hooks)."""
        hooks = parts[0].acts.keys()
        indexed = all(p.index is not None for p in parts)
        return Rows(
            {h: torch.cat([p.acts[h] for p in parts]) for h in hooks},
            *(torch.cat([getattr(p, f) for p in parts]) for f in ("tokens", "window", "position")),
            index=torch.cat([p.index for p in parts]) if indexed else None,
        )

    @staticmethod
    def of(
        batch: ActivationBatch, hook: str, target_hook: str | None, index: Tensor | None = None
    ) -> Rows:
        """An `ActivationBatch` (acts at `hook`, targets at `target_hook`) as Rows."""
        acts = {hook: batch.acts}
        if target_hook is not None and batch.target is not None:
            acts[target_hook] = batch.target
        return Rows(acts, batch.tokens, batch.window, batch.position, index)

    def batch(self, hook: str, target_hook: str | None = None) -> ActivationBatch:
        """The `ActivationBatch` of one SAE (input `hook`, a transcoder's `target_hook`)."""
        target = None if target_hook is None else self.acts[target_hook]
        return ActivationBatch(self.acts[hook], self.tokens, self.window, self.position, target)

"""The model over token windows: activations at any number of hooks from one forward pass
(stopped after the deepest), the tokens kept by a `TokenFilter`, as `Rows` on the CPU."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .activations import pad_windows
from .filters import TokenFilter
from .hooks import capture_many, run_hooks
from .rows import Rows


@torch.no_grad()
def iter_rows(
    model: nn.Module,
    tokenizer,
    windows: Sequence[list[int]],
    hooks: list[str],
    batch_size: int = 32,
    keep: TokenFilter | None = None,
    ids: Sequence[int] | None = None,
) -> Iterator[Rows]:
    """Rows of the real tokens of `windows` (`batch_size` windows per forward pass) at each
    of `hooks`, float32 on the CPU; `keep` drops more tokens; `ids` are the windows' numbers
    (default 0, 1, ...), stored in `Rows.window`."""
    device = next(model.parameters()).device
    with capture_many(model, hooks) as box:
        for w0 in range(0, len(windows), batch_size):
            group = list(windows[w0 : w0 + batch_size])
            ids_t, attn, real = pad_windows(tokenizer, group)
            out = run_hooks(model, box, input_ids=ids_t.to(device), attention_mask=attn.to(device))
            if keep is not None:
                real = keep.keep(real, {h: out[h] for h in hooks})
            rows, pos = real.nonzero(as_tuple=True)
            at = rows.to(device), pos.to(device)
            acts = {h: out[h][at].float().cpu() for h in hooks}
            number = rows + w0
            if ids is not None:
                number = torch.as_tensor(list(ids[w0 : w0 + batch_size]), dtype=torch.long)[rows]
            yield Rows(acts, ids_t[rows, pos], number, pos)

"""Held-out evaluation during training: the SAE on rows it never trained on (the windows
after the training ones, `data/split.py`), as it will be used (its inference forward).

- `heldout_fvu`: fraction of variance unexplained over all the held-out rows at once;
- `heldout_l0`: mean active latents per row;
- `heldout_dead_pct`: latents active on none of the held-out rows, percent.
Feature-sharded runs are left out (each rank holds only some latents).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..architectures.losses import fvu

if TYPE_CHECKING:
    from .trainer import Trainer

CHUNK = 4096  # rows per forward pass


@torch.no_grad()
def evaluate(run: Trainer) -> dict[str, float]:
    """The held-out metrics (module docstring) of `run`'s SAE now; {} without held-out rows."""
    rows, cfg, sae = run.source.heldout, run.cfg, run.sae
    if rows is None or run.shard.count > 1:
        return {}
    x_all = rows.acts[cfg.hook]
    y_all = x_all if cfg.target_hook is None else rows.acts[cfg.target_hook]
    y_scale = run.scale if cfg.target_hook is None else run.target_scale
    recon, fired, active = [], torch.zeros(sae.d_sae, dtype=torch.bool), 0
    for lo in range(0, len(x_all), CHUNK):
        x = x_all[lo : lo + CHUNK].to(run.device) * run.scale
        out = sae(x)
        recon.append(out.reconstruction.float().cpu())
        per_row, per_latent = out.counts()
        active += int(per_row.sum())
        fired |= (per_latent > 0).cpu()
    y = y_all.float() * y_scale
    return {
        "heldout_fvu": float(fvu(torch.cat(recon), y)),
        "heldout_l0": active / len(x_all),
        "heldout_dead_pct": 100.0 * float((~fired).sum()) / sae.d_sae,
        "heldout_tokens": float(len(x_all)),
    }

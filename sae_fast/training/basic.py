"""A minimal SAE training loop: Adam on the reconstruction MSE with unit-norm decoder rows.

Enough to check the whole idea on synthetic data (and to drive the demo); the production
trainer (AuxK, L1 schedules, JumpReLU, checkpoints) builds on the two decoder helpers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..architectures.losses import l1, mse
from ..sae import SparseAutoencoder

INIT_BLOCK = 4096  # decoder rows per generator in `init_decoder_rows`


def init_decoder_rows(
    d_sae: int, d_in: int, seed: int, lo: int = 0, hi: int | None = None
) -> Tensor:
    """Unit-norm random decoder rows `[lo, hi)` of a `d_sae x d_in` dictionary (fp32, CPU).

    Each block of INIT_BLOCK rows has a generator of its own, so a slice equals the same rows
    of the whole: a feature-sharded run starts from the single-process weights, and no rank
    ever draws the whole dictionary."""
    hi = d_sae if hi is None else hi
    blocks = []
    for block in range(lo // INIT_BLOCK, (hi + INIT_BLOCK - 1) // INIT_BLOCK):
        start = block * INIT_BLOCK
        rows = min(INIT_BLOCK, d_sae - start)
        g = torch.Generator().manual_seed((seed * 1_000_003 + block) % 2**63)
        w = torch.randn(rows, d_in, generator=g)
        blocks.append(w[max(lo - start, 0) : hi - start])
    w = torch.cat(blocks) if blocks else torch.empty(0, d_in)
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def normalize_decoder_rows(sae: SparseAutoencoder) -> None:
    """Rescale every decoder row `W_dec[f]` to unit L2 norm."""
    sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def project_decoder_grad(sae: SparseAutoencoder) -> None:
    """Remove from `W_dec.grad` the component parallel to each (unit) decoder row."""
    if sae.W_dec.grad is None:
        return
    parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=1, keepdim=True)  # [d_sae, 1]
    sae.W_dec.grad.sub_(parallel * sae.W_dec)


def fit(
    sae: SparseAutoencoder,
    sample: Callable[[int], Tensor],
    steps: int,
    batch_size: int = 1024,
    lr: float = 1e-3,
    l1_coefficient: float = 0.0,
) -> list[float]:
    """Train `sae` for `steps` Adam steps on batches from `sample(batch_size)`.

    Loss: mean over rows of the squared reconstruction error, plus for dense codes
    `l1_coefficient * sum_f a_f * |W_dec[f]|`. Returns the loss of every step.
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    losses: list[float] = []
    sae.train()
    for _ in range(steps):
        x = sample(batch_size)
        out = sae(x)
        loss = mse(out.reconstruction, x)
        if l1_coefficient and out.feature_acts is not None:
            loss = loss + l1_coefficient * l1(out.feature_acts, sae.W_dec)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        project_decoder_grad(sae)
        opt.step()
        normalize_decoder_rows(sae)
        losses.append(float(loss.detach()))
    return losses

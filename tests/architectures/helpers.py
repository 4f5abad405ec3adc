"""Small shared pieces of the architecture tests: a synthetic training run."""

from __future__ import annotations

import torch

from sae_fast import TrainConfig
from sae_fast.data.activations import ActivationBatch
from sae_fast.training.trainer import Trainer


def synthetic_trainer(tmp_path, d_in: int = 16, rows: int = 512, **cfg) -> Trainer:
    """A Trainer on `rows` seeded random activations `[rows, d_in]` (no model, no corpus)."""
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(rows, d_in, generator=g)
    zeros = torch.zeros(rows, dtype=torch.int64)
    data = (ActivationBatch(acts, zeros, zeros, torch.arange(rows)), [], None)
    base = dict(d_sae=64, k=4, batch_size=128, steps=3, progress=False, out=str(tmp_path))
    return Trainer(TrainConfig(**{**base, **cfg}), data)

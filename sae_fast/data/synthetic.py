"""A toy model of superposition: `n_features` sparse ground-truth features packed into a
lower-dimensional space. An SAE trained on it should recover the true directions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ToySuperposition:
    """Sparse features with unit directions `[n_features, d]` in `d < n_features` dims.

    Each feature fires independently with probability `p_active`; when it fires its
    magnitude is uniform in `[min_magnitude, 1]`. A sample is `sum_f m_f * directions[f]`.
    """

    directions: Tensor  # [n_features, d]
    p_active: float
    min_magnitude: float = 0.3

    @classmethod
    def make(
        cls,
        n_features: int = 512,
        d: int = 64,
        active_per_sample: float = 4.0,
        seed: int = 0,
        min_magnitude: float = 0.3,
    ) -> ToySuperposition:
        """Random unit directions; `active_per_sample` features fire per sample on average."""
        if not 0 < active_per_sample <= n_features:
            raise ValueError(f"active_per_sample must be in (0, {n_features}]")
        g = torch.Generator().manual_seed(seed)
        dirs = torch.randn(n_features, d, generator=g)
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
        return cls(dirs, active_per_sample / n_features, min_magnitude)

    @property
    def n_features(self) -> int:
        return self.directions.shape[0]

    @property
    def d(self) -> int:
        return self.directions.shape[1]

    def sample(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """`[batch, d]` float32 activations."""
        n = self.n_features
        fires = torch.rand(batch, n, generator=generator) < self.p_active  # [batch, n]
        mags = self.min_magnitude + (1 - self.min_magnitude) * torch.rand(
            batch, n, generator=generator
        )
        return (fires * mags) @ self.directions  # [batch, d]


def recovered_fraction(W_dec: Tensor, directions: Tensor, min_cosine: float = 0.9) -> float:
    """Fraction of true `directions [n, d]` matched by some decoder row at cosine > min_cosine."""
    dec = W_dec.detach().float()
    dec = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [d_sae, d]
    true = directions.float() / directions.float().norm(dim=1, keepdim=True)
    best = (true @ dec.t()).max(dim=1).values  # [n]
    return float((best > min_cosine).float().mean())

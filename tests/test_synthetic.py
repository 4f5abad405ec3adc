"""The whole idea on synthetic data: a TopK SAE recovers superposed ground-truth features."""

from __future__ import annotations

import time

import pytest
import torch

from sae_fast import SparseAutoencoder
from sae_fast.data.synthetic import ToySuperposition, recovered_fraction
from sae_fast.training import fit


def test_topk_sae_recovers_superposed_features():
    # Distinct seeds: a toy generator seeded like the global RNG would hand the SAE the
    # true directions as its initial decoder.
    toy = ToySuperposition.make(n_features=256, d=64, active_per_sample=3.0, seed=1234)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    sae = SparseAutoencoder(64, 512, activation="topk", k=4, backend="torch")
    assert recovered_fraction(sae.W_dec, toy.directions) < 0.1  # random init recovers ~none
    t0 = time.perf_counter()
    losses = fit(sae, lambda b: toy.sample(b, gen), steps=800, batch_size=512, lr=3e-3)
    elapsed = time.perf_counter() - t0
    frac = recovered_fraction(sae.W_dec, toy.directions)
    assert frac >= 0.9, f"recovered only {frac:.1%} of the true directions"
    assert losses[-1] < 0.5 * losses[0]
    assert elapsed < 60, f"took {elapsed:.0f}s"


def test_recovered_fraction_counts_matches():
    dirs = torch.eye(4, 8)
    dec = torch.cat([torch.eye(4, 8)[:3] * 5.0, torch.ones(2, 8)])  # 3 of 4 present, scaled
    assert recovered_fraction(dec, dirs) == pytest.approx(0.75)


def test_toy_samples_are_sparse_combinations():
    toy = ToySuperposition.make(n_features=100, d=10, active_per_sample=2.0, seed=3)
    x = toy.sample(2000, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 10)
    # Least-squares can't find the code, but norms follow: E|x|^2 ~ active * E[m^2] (~0.43).
    mean_sq = float(x.pow(2).sum(1).mean())
    assert 0.5 < mean_sq < 1.5
    with pytest.raises(ValueError):
        ToySuperposition.make(n_features=10, d=4, active_per_sample=0)

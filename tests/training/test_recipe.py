"""The recipe's learning rate and schedule (training/recipe.py): the rule of batch size, the
same at any width, an explicit --lr winning, and warmup and decay in tokens, the same at any
batch."""

from __future__ import annotations

import math

import pytest
import torch

from sae_fast import TrainConfig
from sae_fast.training import recipe


def test_the_default_lr_follows_the_written_rule_and_an_explicit_lr_wins():
    def lr(batch: int, steps: int) -> float:
        return recipe.peak_lr(TrainConfig(batch_size=batch, steps=steps))

    assert lr(1024, recipe.REF_STEPS) == pytest.approx(recipe.BASE_LR)
    for steps in (500, 250, 1000):
        want = recipe.BASE_LR * (recipe.REF_STEPS / steps) ** recipe.STEPS_POWER
        assert lr(4096, steps) == pytest.approx(want)
    # at equal tokens the rate grows as a power of the batch size
    p = recipe.STEPS_POWER
    assert lr(4096, 500) == pytest.approx(4**p * lr(1024, 2000)) and 0 < p <= 0.5
    assert lr(8192, 250) == pytest.approx(8**p * lr(1024, 2000))
    # outside the measured steps it is held at the ends of the range
    assert lr(1024, 100_000) == lr(1024, recipe.REF_STEPS)
    assert lr(1024, 10) == lr(1024, recipe.MIN_STEPS)
    assert recipe.peak_lr(TrainConfig(batch_size=8192, lr=1e-3)) == 1e-3


def test_the_trainer_takes_the_rate_of_the_rule_at_any_width(tmp_path):
    from sae_fast.data.activations import ActivationBatch
    from sae_fast.training.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    n = 512
    batch = ActivationBatch(
        torch.randn(n, 16, generator=g), torch.zeros(n, dtype=torch.long),
        torch.arange(n) // 64, torch.arange(n) % 64,
    )  # fmt: skip
    rates = []
    for expansion in (2, 1024):  # 32 and 16,384 latents: below and above 8x of MiniLM
        cfg = TrainConfig(
            expansion=expansion, k=4, batch_size=128, steps=4, max_tokens=n, progress=False,
            out=str(tmp_path / f"e{expansion}"), checkpoint_every=0, device="cpu",
        )  # fmt: skip
        rates.append(Trainer(cfg, data=(batch, None, None)).peak_lr)
    assert rates == [recipe.peak_lr(cfg)] * 2
    assert TrainConfig().auxk_coefficient == 1 / 8  # the measured weight (module docstring)


def test_warmup_and_decay_are_counted_in_tokens():
    def curve(batch: int) -> list[float]:
        cfg = TrainConfig(batch_size=batch, steps=2_048_000 // batch)  # 51,200 by default
        return [recipe.lr_factor(s, cfg) for s in range(cfg.steps)]

    small, large = curve(1024), curve(8192)
    # after equal tokens the factor is the same: exactly in the warmup, within one step of
    # the larger batch (1/50 of the decay) after it
    for tokens in (8192, 49_152):
        assert math.isclose(small[tokens // 1024 - 1], large[tokens // 8192 - 1])
    for tokens in (1_024_000, 1_802_240, 2_039_808):
        assert abs(small[tokens // 1024 - 1] - large[tokens // 8192 - 1]) <= 1 / 50 + 1e-9
    assert small[48] < 1.0 == small[49] and large[5] < 1.0 == large[6]  # 51,200 tokens
    assert small[-1] < 0.01 and large[-1] < 0.05


def test_a_short_run_warms_up_over_at_most_a_twentieth_of_its_tokens():
    cfg = TrainConfig(batch_size=256, steps=40)  # 10,240 tokens
    factors = [recipe.lr_factor(s, cfg) for s in range(cfg.steps)]
    assert factors[0] == pytest.approx(0.5) and factors[1] == 1.0  # 512 = 5% of the run
    cfg = TrainConfig(batch_size=256, steps=40, warmup_tokens=2560)  # explicit: as given
    assert recipe.lr_factor(8, cfg) < 1.0 == recipe.lr_factor(9, cfg)

"""The training recipe: the peak learning rate a run uses when `--lr` is not given, and its
schedule, counted in tokens so that it means the same at any batch size.

    lr = BASE_LR * (batch_size / REF_BATCH) ** BATCH_POWER * (REF_WIDTH / d_sae) ** WIDTH_POWER

Adam's step size is set by its normalised update, not by the gradient's size, so a batch
b times larger, whose gradient noise is sqrt(b) times smaller, takes steps up to sqrt(b)
times longer at equal stability. The constants are chosen by measurement (README,
"Training recipe"; `python -m benchmarks recipe`): held-out FVU of TopK SAEs on MiniLM's
residual stream at equal tokens across batch 1024-8192 and widths 8x-32x.

Warmup is `warmup_tokens` long whatever the batch (by default 51,200, at most 5% of a
short run); the decay
starts after `decay_start` of the run's tokens; the dead-latent window (`dead_after_tokens`)
counts tokens too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import TrainConfig

BASE_LR = 4e-4  # at REF_BATCH tokens per step and REF_WIDTH latents
REF_BATCH = 1024
BATCH_POWER = 0.5
REF_WIDTH = 3072
WIDTH_POWER = 0.0
WARMUP_TOKENS = 51_200  # the default warmup...
WARMUP_MAX_FRACTION = 0.05  # ...over at most this share of a short run's tokens


def peak_lr(cfg: TrainConfig, d_sae: int) -> float:
    """`cfg.lr` when given, else the rule of the module docstring for `cfg.batch_size` and
    a `d_sae`-latent dictionary."""
    if cfg.lr is not None:
        return float(cfg.lr)
    batch = (cfg.batch_size / REF_BATCH) ** BATCH_POWER
    return BASE_LR * batch * (REF_WIDTH / d_sae) ** WIDTH_POWER


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The learning-rate multiplier at `step`: linear warmup over `warmup_tokens` (default:
    WARMUP_TOKENS, at most WARMUP_MAX_FRACTION of the run), then linear decay to 0 from
    `decay_start` of the run."""
    tokens = (step + 1) * cfg.batch_size
    warmup = cfg.warmup_tokens
    if warmup is None:
        warmup = min(WARMUP_TOKENS, WARMUP_MAX_FRACTION * cfg.steps * cfg.batch_size)
    warm = min(1.0, tokens / warmup) if warmup > 0 else 1.0
    decay_from = int(cfg.decay_start * cfg.steps)
    if step < decay_from or cfg.steps <= decay_from:
        return warm
    return warm * max(0.0, 1.0 - (step - decay_from) / (cfg.steps - decay_from))

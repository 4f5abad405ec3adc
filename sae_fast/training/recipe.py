"""The training recipe: the peak learning rate a run uses when `--lr` is not given, and its
schedule, counted in tokens so that it means the same at any batch size.

    lr = BASE_LR * (REF_STEPS / steps) ** STEPS_POWER

with `steps` held within [MIN_STEPS, REF_STEPS]. At equal tokens (steps = tokens / batch)
that is lr proportional to batch_size ** 0.4: a batch b times larger has sqrt(b) times less
gradient noise, and Adam's normalised step may grow by up to as much. At equal batch a
longer run gets a lower rate, down to BASE_LR from REF_STEPS on (not measured beyond). The
width of the dictionary does not enter: measured flat between 8x and 32x (below).

Measured (README "Training recipe"; benchmarks/results/recipe-choice-cpu-2026-12-04.md,
recipe-revive-cpu-2026-12-07.md and recipe-width-cpu-2026-12-08.md): TopK k=32 SAEs on
MiniLM's layers.3 residual stream, held-out FVU and dead latents (active on none of ~41k
held-out rows) at equal tokens. Raising the rate lowers held-out FVU until latents start to
die. Without revival, the highest rate that kept dead latents under 1% fell with the run's
steps, about as steps ** -0.4, whatever the batch (2026-12-04: ~6e-4 at 2,000 steps, ~1e-3
at 500, ~1.3e-3 at 250, ~1.8e-3 at 125). With silent latents revived (training/revive.py),
1.25x that line keeps them under 1% at 8x (d_sae 3,072) in every run measured: 512k tokens
at batch 1024 / 4096 / 8192 (0.85 / 0.07 / 0.03% dead, FVU 0.1155 / 0.1345 / 0.1556 against
0.1231 / 0.1434 / 0.1657 at 1x) and 2M tokens (0.88 / 0.62 / 0.62%, FVU 0.0905 / 0.0956 /
0.1009). At 32x (d_sae 12,288) 1.25x left 3.2-3.7% dead at 512k before AuxK acted early,
so until 2026-12-08 32x kept 1x (a width term, (3072 / d_sae) ** 0.161). With AuxK from 42
firing intervals at weight 1/8 (below), 1.25x at 32x and 2M tokens gave held-out FVU 0.0749
/ 0.0797 / 0.0849 at batch 1024 / 4096 / 8192 against 0.0784 / 0.0836 / 0.0896 at 1x and
weight 1/32, with fewer dead latents on the held-out rows (9.7 / 7.9 / 7.7% against 13.7 /
10.3 / 10.1%) and on training rows (0.15 / 0.11 / 0.15% against 0.89 / 0.50 / 0.52%): the
width term was dropped. Its cost, measured after (recipe-512k-cpu-2026-12-08.md): at 32x and
512k tokens, where AuxK's window equals revival's, dead latents rose (batch 1024: 21.6% on the
held-out rows, 8.1% on training rows, against 12.5% held-out at 1x) for 4-7% lower FVU.

Warmup is `warmup_tokens` long whatever the batch (by default 51,200, at most 5% of a
short run); the decay starts after `decay_start` of the run's tokens; the dead-latent window
(`dead_after_tokens`) counts tokens too.

TopK latents silent for `revive_window` tokens are revived (training/revive.py). By default
the window is max(REVIVE_MIN_FIRES, tokens / REVIVE_RUN_TOKENS) of an average latent's firing
intervals, d_sae / k tokens: 42 intervals up to 516k tokens (4,032 tokens at d_sae 3,072, k 32;
16,128 at 12,288), 167 at 2,048,000 (16,000 at 3,072; 64,000 at 12,288). Measured on the
recipe benchmark's data (benchmarks/results/recipe-revive-cpu-2026-12-07.md,
recipe-optimizer-cpu-2026-12-07.md, recipe-window-cpu-2026-12-07.md): a short run needs a
short window (8x, batch 4096, 512k tokens), while a 2,000-step run is hurt by one (8x, batch
1024, 2M tokens: 1.5% dead and FVU 0.0957 at 4,096 tokens; 0.7% / 0.0941 at 16,384; 0.6% /
0.0941 without). A window short against the latents' own firing intervals thrashes: at 32x,
batch 1024, 512k tokens, 4,096 tokens revived ~1,000 latents every step that fell silent
again, and held-out FVU was 0.1525 (16,384: 0.1098; without: 0.1074). A long run thrashes at
42 intervals too: at 32x, batch 1024, 2M tokens, 16,128 tokens revived ~250 rare latents
every step to the end, held-out FVU 0.1027 and 0.228 on training rows, against 0.0794 /
0.0776 at 64,000 and 0.0783 / 0.0699 without.

AuxK trains the latents silent for `auxk_window` tokens: REVIVE_MIN_FIRES average firing
intervals, at most the revival window. Up to 516k tokens that is the revival window itself;
in longer runs AuxK starts before revival (32x, 2M tokens: 16,128 tokens, revival 64,000).
Until 2026-12-07 AuxK waited for `dead_after_tokens` (200,000), longer than any revival
window, so with revival on it never acted. Measured at 32x, 2M tokens
(benchmarks/results/recipe-auxk-cpu-2026-12-07.md): latents that fire on none of 40,960
training rows fell from 2.97% to 0.50% at batch 4096 (AuxK after 16,384 tokens), at the same
held-out FVU. A quarter of the revival window instead (8x, 512k tokens: 1,008 tokens) made
AuxK act every step on hundreds of latents: slower, and not measured for quality. AuxK's
weight (`auxk_coefficient`, architectures/base.py) is 1/8, not Gao et al.'s 1/32: at 32x,
batch 8192, 2M tokens and 1.25x the rate, 1/8 left 7.7% of the latents dead on the held-out
rows and 0.15% on training rows against 16.3% and 1.4% at 1/32, for held-out FVU 0.0849
against 0.0844; at 8x, batch 1024, 2M tokens 0.52% / 0.0904 against 0.8% / 0.0905
(recipe-width-cpu-2026-12-08.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import TrainConfig

BASE_LR = 7.08e-4  # at REF_STEPS steps (and more) (1.25 x 5.66e-4)
REF_STEPS = 2000
STEPS_POWER = 0.4
MIN_STEPS = 60  # shorter runs take the rate of this many steps (the shortest measured: 62)
WARMUP_TOKENS = 51_200  # the default warmup...
WARMUP_MAX_FRACTION = 0.05  # ...over at most this share of a short run's tokens
# The revival window, in an average latent's firing intervals (d_sae / k tokens): at least
# REVIVE_MIN_FIRES, and one per REVIVE_RUN_TOKENS of the run's tokens
REVIVE_MIN_FIRES = 42
REVIVE_RUN_TOKENS = 12_288


def peak_lr(cfg: TrainConfig) -> float:
    """`cfg.lr` when given, else the rule of the module docstring for a run of `cfg.steps`
    steps of `cfg.batch_size` tokens (whatever the dictionary's width)."""
    if cfg.lr is not None:
        return float(cfg.lr)
    steps = min(max(cfg.steps, MIN_STEPS), REF_STEPS)
    return BASE_LR * (REF_STEPS / steps) ** STEPS_POWER


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


def revive_window(cfg: TrainConfig, d_sae: int) -> int:
    """Tokens a TopK latent of a `d_sae`-latent dictionary may stay silent before it is
    revived: `revive_after_tokens` when given (0: never), else max(REVIVE_MIN_FIRES,
    tokens / REVIVE_RUN_TOKENS) average firing intervals of d_sae / k tokens."""
    if cfg.revive_after_tokens is not None:
        return int(cfg.revive_after_tokens)
    tokens = cfg.steps * cfg.batch_size
    return max(REVIVE_MIN_FIRES * d_sae // cfg.k, tokens * d_sae // (cfg.k * REVIVE_RUN_TOKENS))


def auxk_window(cfg: TrainConfig, d_sae: int, revives: bool) -> int:
    """Tokens a latent may stay silent before AuxK trains it: `auxk_after_tokens` when given,
    else, for an architecture that `revives` silent latents (and revival on), REVIVE_MIN_FIRES
    average firing intervals (d_sae / k tokens), at most the revival window and
    `dead_after_tokens`; else `dead_after_tokens`."""
    if cfg.auxk_after_tokens is not None:
        return int(cfg.auxk_after_tokens)
    window = revive_window(cfg, d_sae) if revives else 0
    if window:
        return max(1, min(cfg.dead_after_tokens, window, REVIVE_MIN_FIRES * d_sae // cfg.k))
    return int(cfg.dead_after_tokens)

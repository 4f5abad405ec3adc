"""Starting a training run: the device, the SAE a run builds (this rank's latents), its
initial weights (unit-norm decoder rows, W_enc = W_dec^T, b_dec at the mean target) and the
input and target norm scales, with the finite-data check they share with each step."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import architectures
from ..config import TrainConfig
from ..data.activations import ActivationBatch
from ..errors import ConfigError, DataError
from ..sae import SparseAutoencoder
from . import distributed
from .basic import init_decoder_rows
from .sharded import Shard

SAMPLE_ROWS = 65536  # rows that set the scales and b_dec


def train_device(name: str) -> torch.device:
    """The device of `TrainConfig.device`: "auto" is CUDA when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N)"
        ) from err
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r}: sae_fast trains on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: torch sees no CUDA device here")
    return device


def check_finite(batch: Tensor, index: Tensor, what: str) -> None:
    """DataError naming `what` (the step) and the activation rows if `batch` holds NaN/Inf."""
    bad = ~torch.isfinite(batch)
    if bool(bad.any()):
        rows = index[bad.any(1)]
        shown = ", ".join(str(int(r)) for r in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise DataError(
            f"{what} holds {int(bad.sum())} NaN/Inf activation values, in "
            f"{len(rows)} of its {len(index)} rows (activation rows {shown}{more}); check "
            "the model and hook, or delete the activation cache"
        )


def norm_scale(acts: Tensor) -> float:
    """sqrt(d_in) / mean ||x|| over (up to) SAMPLE_ROWS rows."""
    sample = acts[:SAMPLE_ROWS].double()
    return float(math.sqrt(acts.shape[1]) / sample.norm(dim=1).mean().clamp_min(1e-12))


def build_sae(
    cfg: TrainConfig, d_in: int, d_out: int, d_sae: int, shard: Shard, device, n_tokens: int
) -> SparseAutoencoder:
    """The SAE (or transcoder) a run with `cfg` trains: this shard's latents of `d_sae`."""
    return SparseAutoencoder(
        d_in,
        shard.size,  # this rank's latents (all of them unless feature-sharded)
        activation=cfg.activation,
        k=cfg.k,
        backend=cfg.backend,
        device=device,
        model_name=cfg.model,
        hook_name=cfg.hook,
        options=architectures.get(cfg.activation).train_options(cfg, d_sae),
        transcoder=cfg.target_hook is not None,
        d_out=d_out,
        skip=cfg.skip,
        target_hook_name=cfg.target_hook,
        # Read by `evaluate` to hold out the training tokens of the same corpus.
        metadata={"context_size": cfg.context_size, "corpus": cfg.corpus, "train_tokens": n_tokens},
    )


@torch.no_grad()
def init_weights(
    sae: SparseAutoencoder, cfg: TrainConfig, shard: Shard, data: ActivationBatch
) -> tuple[float, float]:
    """Seeded unit-norm decoder rows (the same rows whatever the sharding), W_enc = W_dec^T
    (its own directions when d_out != d_in), the architecture's training state, and b_dec
    at the scaled mean target. Returns the (input, target) norm scales."""
    acts, targets = data.acts, data.targets
    d_sae = shard.d_sae
    w = init_decoder_rows(d_sae, sae.d_out, cfg.seed, shard.lo, shard.hi)
    sae.W_dec.copy_(w)
    if sae.d_out != sae.d_in:
        w = init_decoder_rows(d_sae, sae.d_in, cfg.seed + 1, shard.lo, shard.hi)
    sae.W_enc.copy_(w.t())
    sae.arch.init_training(sae, cfg)
    for what, rows in (("the activation set", acts), ("the targets", targets)):
        sample = rows[:SAMPLE_ROWS]
        check_finite(sample, torch.arange(len(sample)), what)
    scale = norm_scale(acts) if cfg.normalize_activations else 1.0
    target_scale = norm_scale(targets) if cfg.normalize_activations else 1.0
    sae.b_dec.copy_((targets[:SAMPLE_ROWS].mean(0) * target_scale).to(sae.device))
    return scale, target_scale


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The learning-rate multiplier at `step`: linear warmup, then linear decay to 0 from
    `decay_start * steps`."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    decay_from = int(cfg.decay_start * cfg.steps)
    if step < decay_from or cfg.steps <= decay_from:
        return warm
    return warm * max(0.0, 1.0 - (step - decay_from) / (cfg.steps - decay_from))


def shard_of(cfg: TrainConfig, d_sae: int, group: distributed.Group) -> Shard:
    """This rank's latents of a `d_sae` dictionary; ConfigError when it does not split."""
    shards = group.shards
    if d_sae % shards:
        raise ConfigError(f"d_sae {d_sae} must be a multiple of feature_shards {shards}")
    if architectures.get(cfg.activation).uses_k and cfg.k > d_sae // shards:
        raise ConfigError(
            f"k={cfg.k} is more than the {d_sae // shards} latents of each of "
            f"{shards} feature shards; use fewer shards or a larger dictionary"
        )
    return Shard.of(d_sae, group)


def timings(
    collect_s: float, n_collected: int, train_s: float, steps: int, tokens: int, batch: int
) -> dict[str, float]:
    """Where a run's time went (`<out>/timings.json`): collection against SAE steps."""
    return {
        "collect_seconds": collect_s,
        "collect_tokens_per_s": n_collected / collect_s if collect_s else 0.0,
        "train_seconds": train_s,
        "train_tokens_per_s": tokens / max(train_s, 1e-9),
        "steps": steps,
        "batch_size": batch,
    }

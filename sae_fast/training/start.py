"""Starting a training run: the device, the SAE a run builds (this rank's latents), its
initial weights (unit-norm decoder rows, W_enc = W_dec^T, b_dec at the mean target) and the
input and target norm scales, with the finite-data check they share with each step."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

from .. import architectures
from ..config import TrainConfig
from ..data.feeds import SAMPLE_ROWS  # rows that set the scales and b_dec
from ..data.fingerprint import FINGERPRINT_KEY
from ..data.rows import Rows
from ..errors import ConfigError, DataError
from ..sae import SparseAutoencoder
from . import distributed
from .basic import init_decoder_rows
from .sharded import Shard


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


def check_finite(
    batch: Tensor, index: Tensor, what: str, unit: str = "activation rows", bad_elsewhere=None
) -> None:
    """DataError naming `what` (the step) and the rows (`index`, numbered in `unit`) if
    `batch` holds NaN/Inf. `bad_elsewhere(bad_here)` (a parallel run) says whether any
    replica found some, so that every rank stops together."""
    bad = ~torch.isfinite(batch)
    here = bool(bad.any())
    if bad_elsewhere is not None and bad_elsewhere(here) and not here:
        raise DataError(f"{what}: another data replica's share holds NaN/Inf activation values")
    if here:
        rows = index[bad.any(1)]
        shown = ", ".join(str(int(r)) for r in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise DataError(
            f"{what} holds {int(bad.sum())} NaN/Inf activation values, in "
            f"{len(rows)} of its {len(index)} rows ({unit} {shown}{more}); check "
            "the model and hook, or delete the activation cache"
        )


def check_rows(rows: Rows, hooks: list[str], what: str, group: distributed.Group) -> None:
    """`check_finite` of each hook's activations in `rows` (collective in a parallel run)."""
    index, unit = (rows.index, "activation rows") if rows.index is not None else (
        rows.window, "windows"
    )  # fmt: skip
    elsewhere = None if group.replicas == 1 else lambda here: distributed.any_flag(here, group)
    for hook, name in zip(hooks, (what, f"{what}'s targets"), strict=False):
        check_finite(rows.acts[hook], index, name, unit, elsewhere)


def norm_scale(acts: Tensor, group: distributed.Group | None = None) -> float:
    """sqrt(d_in) / mean ||x|| over (up to) SAMPLE_ROWS rows (averaged over the replicas
    of `group`, when they sample different rows)."""
    mean = acts[:SAMPLE_ROWS].double().norm(dim=1).mean()
    if group is not None:
        mean = distributed.replica_mean(mean, group)
    return float(math.sqrt(acts.shape[1]) / mean.clamp_min(1e-12))


def check_writable(out: Path) -> None:
    """PermissionError unless the run directory `out` can be created and written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output directory {out} is not writable: {err}") from err


def build_sae(
    cfg: TrainConfig, d_in: int, d_out: int, d_sae: int, shard: Shard, device, n_tokens: int,
    token_filter: dict | None = None,
    fingerprint: dict | None = None,
) -> SparseAutoencoder:  # fmt: skip
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
        # `token_filter`: the tokens dropped, applied again by `evaluate`.
        # `model_fingerprint`: checked by every use on a model (data/fingerprint.py).
        metadata={
            "context_size": cfg.context_size,
            "corpus": cfg.corpus,
            "train_tokens": n_tokens,
            "token_filter": token_filter or {},
            **({FINGERPRINT_KEY: fingerprint} if fingerprint else {}),
        },
    )


@torch.no_grad()
def init_weights(
    sae: SparseAutoencoder, cfg: TrainConfig, shard: Shard, sample: Rows, group=None
) -> tuple[float, float]:
    """Seeded unit-norm decoder rows (the same rows whatever the sharding), W_enc = W_dec^T
    (its own directions when d_out != d_in), the architecture's training state, and b_dec
    at the scaled mean target, from the feed's `sample` (averaged over the data replicas
    of `group` when given: they streamed different rows). Returns the (input, target)
    norm scales."""
    d_sae = shard.d_sae
    w = init_decoder_rows(d_sae, sae.d_out, cfg.seed, shard.lo, shard.hi)
    sae.W_dec.copy_(w)
    if sae.d_out != sae.d_in:
        w = init_decoder_rows(d_sae, sae.d_in, cfg.seed + 1, shard.lo, shard.hi)
    sae.W_enc.copy_(w.t())
    sae.arch.init_training(sae, cfg)
    sample = sample.take(slice(0, SAMPLE_ROWS))
    hooks = [cfg.hook] if cfg.target_hook is None else [cfg.hook, cfg.target_hook]
    for hook, what in zip(hooks, ("the activation set", "the targets"), strict=False):
        check_rows(sample, [hook], what, group or distributed.Group())
    acts = sample.acts[cfg.hook]
    targets = acts if cfg.target_hook is None else sample.acts[cfg.target_hook]
    scale = norm_scale(acts, group) if cfg.normalize_activations else 1.0
    target_scale = norm_scale(targets, group) if cfg.normalize_activations else 1.0
    mean = targets.double().mean(0)
    if group is not None:
        mean = distributed.replica_mean(mean, group)
    sae.b_dec.copy_((mean.float() * target_scale).to(sae.device))
    return scale, target_scale


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

"""The SAE trainer: activations of a frozen transformer in, a trained SAE directory out.

Per step: this replica's share of the step's rows from the run's feed (`data.feeds`: the
model through the mixing buffer, a cache, or memory), the architecture's loss, backward,
decoder-parallel gradient removed, global-norm clipping, Adam with linear warmup and linear
decay, decoder rows renormalised, dead latents tracked as tokens since last fired. Inputs
are scaled to mean norm sqrt(d_in), and a transcoder's targets to mean norm sqrt(d_out)
(estimated once, at the start); the scales are folded into the saved weights. Checkpoints
are atomic directories holding the feed's position too; resuming from one continues
bitwise like an uninterrupted run on CPU. `run_together` trains several SAEs from one feed.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import TrainConfig
from ..data import feeds
from ..data.activations import ActivationBatch
from ..data.collect import collect  # noqa: F401  (re-exported: tests and benchmarks)
from ..errors import ConfigError, DataError
from ..files import atomic_file, write_json
from ..ops import native
from ..output import SAEOutput
from ..sae import SparseAutoencoder
from . import checkpoint, distributed, heldout, losses, recipe, sharded, start
from .basic import normalize_decoder_rows, project_decoder_grad


@dataclass
class TrainResult:
    """What `train` returns: the SAE (normalisation folded in), where it was saved, the
    training activations when they were in memory (None when streamed or read from a
    cache), the training windows and tokenizer, and the final metrics."""

    sae: SparseAutoencoder | None  # None on ranks other than shard 0 (feature sharding)
    sae_dir: Path
    activations: ActivationBatch | None
    windows: Any
    tokenizer: Any
    metrics: dict[str, float] = field(default_factory=dict)
    # Where the time went: activation collection (model forward passes, or the cache read)
    # vs SAE optimisation steps; seconds and tokens per second of each (also written to
    # `<out>/timings.json`).
    timings: dict[str, float] = field(default_factory=dict)


class Trainer:
    """One SAE's training run; `run()` trains and saves. Build with `Trainer(cfg)` (the
    feed `cfg` asks for), `Trainer(cfg, data)` (activations in memory), or, for several
    SAEs from one feed (`multi.train_many`), with a shared `source`, `group` and `device`."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: tuple[ActivationBatch, Any, Any] | None = None,
        *,
        source: feeds.Source | None = None,
        group: distributed.Group | None = None,
        device: torch.device | None = None,
    ):
        self.cfg = cfg
        self.out = Path(cfg.out)
        start.check_writable(self.out)
        if group is None:  # a bad device name fails before any data is read
            device = start.train_device(cfg.device)
            group, device = distributed.init(cfg.parallel, device, cfg.feature_shards)
        assert device is not None
        self.group, self.device = group, device
        if source is None:
            source = (
                feeds.memory_source(cfg, data, group)
                if data is not None
                else feeds.open_source(cfg, group, device)
            )
        self.source, self.feed = source, source.feed
        self.collect_seconds = source.open_seconds
        self.hooks = feeds.run_hooks(cfg)
        resume = Path(cfg.resume) if cfg.resume else None
        if resume is not None:  # before the sample: a stream continues where it stood
            self.feed.restore(checkpoint.feed_state(resume, group))
        sample = self.feed.sample()
        if cfg.target_hook is not None and cfg.target_hook not in sample.acts:
            raise ConfigError(f"the activations have no targets at {cfg.target_hook}")
        d_in = sample.acts[cfg.hook].shape[1]
        d_out = sample.acts[self.hooks[-1]].shape[1]
        d_sae = cfg.d_sae or cfg.expansion * d_in
        self.shard = start.shard_of(cfg, d_sae, group)
        self.sae = start.build_sae(
            cfg, d_in, d_out, d_sae, self.shard, device, source.n_tokens, source.token_filter,
            source.fingerprint,
        )  # fmt: skip
        self.scale, self.target_scale = start.init_weights(
            self.sae, cfg, self.shard, sample, group if self.feed.per_replica else None
        )
        # Fused Adam: one kernel over all parameters (CPU and CUDA); ~5x faster than the
        # per-op implementation at d_sae=12288 on CPU.
        self.peak_lr = recipe.peak_lr(cfg)
        self.opt = torch.optim.Adam(
            self.sae.parameters(), lr=self.peak_lr, betas=(0.9, 0.999), fused=True
        )
        self.step = 0
        self.check_tokens()
        self.since_fired = torch.zeros(self.shard.size, dtype=torch.int64, device=self.device)
        if resume is not None:
            checkpoint.load(self, resume)
        self.metrics_path = self.out / "metrics.jsonl"

    def check_tokens(self) -> None:
        """With `--no-repeat-data`, ConfigError when the run's steps would repeat tokens."""
        cfg = self.cfg
        available = getattr(self.feed, "n_tokens", self.source.n_tokens)
        asked = cfg.steps * cfg.batch_size
        if not cfg.repeat_data and asked > available:
            raise ConfigError(
                f"{cfg.steps:,} steps x {cfg.batch_size:,} tokens = {asked:,} tokens, more than "
                f"the {available:,} training tokens this run has; with --no-repeat-data the "
                f"run stops here: use at most --steps {available // cfg.batch_size}, more "
                "--max-tokens (a larger corpus), or --repeat-data to train on them in epochs"
            )

    @property
    def epochs(self) -> float:
        """Passes over the training tokens so far (above 1: tokens seen again)."""
        available = getattr(self.feed, "n_tokens", self.source.n_tokens)
        return self.step * self.cfg.batch_size / max(available, 1)

    @property
    def windows(self) -> Any:
        """The training windows (`Rows.window` indexes them)."""
        return self.source.windows

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (loaded alone, when a cache served the run)."""
        if self.source.tokenizer is None:
            from ..data.activations import load_tokenizer

            self.source.tokenizer = load_tokenizer(self.cfg.model)
        return self.source.tokenizer

    # ------------------------------------------------------------------ one step
    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float], Tensor, SAEOutput]:
        # The architecture gives the forward and its loss terms; feature-sharded, `sae` holds
        # this shard's latents and `shard.sum` adds up the partial reconstructions and
        # per-latent terms, so every shard computes the same loss. A skip transcoder's
        # x @ W_skip.T moves into the target, so the architectures never see it.
        skip = self.sae.skip_output(x)
        target = y if skip is None else y - skip
        out, terms = self.sae.arch.train_terms(self, x, target)
        recon = out.reconstruction
        terms["mse"] = losses.mse(recon, target)
        total = sum(terms.values())
        logs = {n: float(t.detach()) for n, t in terms.items()}
        y_hat = recon if skip is None else recon + skip
        logs["fvu"] = float(losses.fvu(y_hat.detach(), y))
        per_row, per_latent = out.counts()  # one count for both
        logs["l0"] = self.shard.total(float(per_row.float().mean()))
        return total, logs, per_latent > 0, out

    def train_step(self) -> dict[str, float]:
        """One optimiser step; returns the step's logs."""
        cfg = self.cfg
        # this replica's share of the step's rows; the check is collective, so every rank
        # stops together when one finds bad rows
        rows = self.feed.batch(self.step)
        start.check_rows(rows, self.hooks, f"step {self.step}: the batch", self.group)
        x = rows.acts[cfg.hook].to(self.device) * self.scale
        y = x if cfg.target_hook is None else rows.acts[cfg.target_hook].to(self.device)
        if cfg.target_hook is not None:
            y = y * self.target_scale
        lr = self.peak_lr * recipe.lr_factor(self.step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            loss, logs, fired, out = self._loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        sharded.sum_replicated_grad(self.sae.b_dec, self.shard)
        distributed.average_gradients(list(self.sae.parameters()), self.group)
        project_decoder_grad(self.sae)
        if cfg.grad_clip is not None:
            sharded.clip_grad_norm(self.sae, cfg.grad_clip, self.shard)
        self.opt.step()
        normalize_decoder_rows(self.sae)
        self.sae.arch.after_step(self.sae)
        fired = distributed.any_rank(fired, self.group)
        self.since_fired += cfg.batch_size
        self.since_fired[fired] = 0
        update_logs = self.sae.arch.after_update(self, x, out, self.group)
        self.step += 1
        logs.update(
            update_logs,
            loss=float(loss.detach()),
            lr=lr,
            step=self.step,
            epochs=self.epochs,
            dead_pct=100.0
            * self.shard.total(float((self.since_fired >= cfg.dead_after_tokens).sum()))
            / self.shard.d_sae,
        )
        logs = distributed.mean_logs(logs, self.group, self.device)
        if not math.isfinite(logs["loss"]):  # averaged over replicas: every rank sees it
            raise DataError(
                f"step {self.step - 1}: the loss is {logs['loss']} (training diverged); "
                "nothing of this step was saved. Lower --lr or --grad-clip, or check the "
                "activations, and resume from the last checkpoint"
            )
        return logs

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write `checkpoints/step_<n>` atomically and keep the two newest (checkpoint.py)."""
        return checkpoint.save(self)

    # ------------------------------------------------------------------ run
    def final_sae(self) -> SparseAutoencoder | None:
        """A copy of the whole SAE for raw (unnormalised) activations: the scale folded in.
        Feature-sharded: a collective; shard 0 gets the SAE, the other shards None."""
        whole = sharded.consolidate(self.sae, self.shard)
        if whole is None:
            return None
        sae = SparseAutoencoder.from_config(whole.cfg, backend=self.cfg.backend)
        sae.load_state_dict(whole.state_dict())
        sae.fold_input_scale(self.scale, self.target_scale)
        return sae

    def run(self) -> TrainResult:
        """Train to `cfg.steps`, checkpointing; Ctrl-C saves a checkpoint, then exits."""
        return run_together([self])[0]

    def log(self, metrics, logs: dict[str, float], tokens_per_s: float) -> None:
        """Write a metrics line: the step's logs, the throughput and the feed's counts."""
        logs["tokens_per_s"] = tokens_per_s
        logs.update(self.feed.counts())
        metrics.write(json.dumps(logs) + "\n")
        metrics.flush()

    def finish(self, logs: dict[str, float], seconds: float, tokens: int) -> TrainResult:
        """Save the SAE and timings (rank 0) after the last step; a collective."""
        main = self.group.is_main
        produce = getattr(self.feed, "produce_seconds", 0.0)  # a stream's model time
        kept = self.feed.counts().get("tokens_kept", self.source.n_tokens)
        timings = start.timings(
            self.collect_seconds + produce, kept, seconds, self.step, tokens, self.cfg.batch_size
        )
        sae = self.final_sae()
        sae_dir = self.out / "sae"
        if main:
            with atomic_file(self.out / "timings.json") as tmp:
                write_json(tmp, timings)
            sae.save(sae_dir)
        distributed.barrier(self.group)  # the saved SAE exists on return, on every rank
        return TrainResult(
            sae, sae_dir, self.source.activations, self.windows, self.tokenizer, logs, timings
        )


def progress_fields(
    first: dict[str, float], held: dict[str, float], tok_s: float, n_saes: int
) -> dict[str, str]:
    """The progress bar's fields: throughput, the training batch's loss, FVU and L0, and the
    latest held-out metrics, each labelled (`heldout_*`) once there are some."""
    fields = {
        "tok_s": f"{tok_s:,.0f}",
        "loss": f"{first['loss']:.3f}",
        "train_fvu": f"{first['fvu']:.3f}",
        "l0": f"{first['l0']:.1f}",
        "dead": f"{first['dead_pct']:.1f}%",
    }
    if held:
        fields.update(
            heldout_fvu=f"{held['heldout_fvu']:.3f}",
            heldout_l0=f"{held['heldout_l0']:.1f}",
            heldout_dead=f"{held['heldout_dead_pct']:.1f}%",
        )
    if n_saes > 1:
        fields["saes"] = str(n_saes)
    return fields


def run_together(trainers: list[Trainer]) -> list[TrainResult]:
    """Train `trainers` (one feed: each step's rows are drawn once and every SAE trains on
    them) in lockstep to their `cfg.steps`, each logging, checkpointing and saving into its
    own directory; Ctrl-C saves a checkpoint of each, then exits."""
    lead = trainers[0]
    main = lead.group.is_main  # data parallel: rank 0 logs, checkpoints and saves
    steps = lead.cfg.steps
    if any(t.cfg.steps != steps or t.step != lead.step for t in trainers):
        raise ConfigError("SAEs trained from one feed run the same steps from the same step")
    bar = None
    if lead.cfg.progress and main:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=lead.step, unit="step", dynamic_ncols=True)
    if main:  # temp dirs of checkpoint writes that a killed run left behind
        for t in trainers:
            for stale in (t.out / "checkpoints").glob(".*step_*"):
                shutil.rmtree(stale, ignore_errors=True)
    distributed.barrier(lead.group)
    logs: list[dict[str, float]] = [{} for _ in trainers]
    t0, tokens0 = time.perf_counter(), lead.step * lead.cfg.batch_size
    batch, eval_every = lead.cfg.batch_size, lead.cfg.eval_every
    held: list[dict[str, float]] = [{} for _ in trainers]
    shown: dict[str, float] = {}  # the bar's latest held-out metrics (of the first SAE)
    try:
        with contextlib.ExitStack() as files:
            metrics = [
                files.enter_context(open(t.metrics_path, "a")) if main else None for t in trainers
            ]
            while lead.step < steps:
                logs = [t.train_step() for t in trainers]
                step = lead.step
                if bar is not None:
                    bar.update(1)
                # held-out metrics every `eval_every` tokens, and after the last step
                crossed = (
                    eval_every and (step * batch) // eval_every > ((step - 1) * batch) // eval_every
                )
                if step == steps or crossed:
                    held = [heldout.evaluate(t) for t in trainers]
                    for lg, h in zip(logs, held, strict=True):
                        lg.update(h)
                    shown = held[0]
                if main and (step % lead.cfg.log_every == 0 or step == steps or held[0]):
                    tok_s = (step * lead.cfg.batch_size - tokens0) / max(
                        time.perf_counter() - t0, 1e-9
                    )
                    for t, f, lg in zip(trainers, metrics, logs, strict=True):
                        t.log(f, lg, tok_s)
                    if bar is not None:
                        bar.set_postfix(progress_fields(logs[0], shown, tok_s, len(trainers)))
                held = [{} for _ in trainers]
                every = lead.cfg.checkpoint_every
                if every and step % every == 0:
                    for t in trainers:
                        t.save_checkpoint()
    except KeyboardInterrupt:
        paths = [t.save_checkpoint() for t in trainers]
        if bar is not None:
            bar.close()
        lead.feed.close()
        shown = paths[0] if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} more"
        print(
            f"\ninterrupted at step {lead.step}; checkpoint saved to {shown} "
            f"(continue with --resume {paths[0] if len(paths) == 1 else 'latest'})"
        )
        raise SystemExit(130) from None
    except BaseException:
        lead.feed.close()
        raise
    if bar is not None:
        bar.close()
    lead.feed.close()
    seconds, tokens = time.perf_counter() - t0, lead.step * lead.cfg.batch_size - tokens0
    results = [t.finish(lg, seconds, tokens) for t, lg in zip(trainers, logs, strict=True)]
    for t in trainers:  # the run is over: its gradients, and the blocks kept to reuse them, go
        t.opt.zero_grad(set_to_none=True)
    native.release_pooled_blocks()
    return results


def train(cfg: TrainConfig) -> TrainResult:
    """Train an SAE as configured (streaming its activations, or from `cfg.cache`) and save
    it under `cfg.out`/sae (`--resume latest`: from the newest checkpoint there)."""
    from .multi import train_many

    return train_many([cfg])[0]

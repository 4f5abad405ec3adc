"""The SAE trainer: activations of a frozen transformer in, a trained SAE directory out.

Per step: a batch from the `ActivationStore` (pure function of seed and step), the
architecture's loss, backward, decoder-parallel gradient removed, global-norm clipping,
Adam with linear warmup and linear decay, decoder rows renormalised, dead latents tracked as
tokens since last fired. Inputs are scaled to mean norm sqrt(d_in) (estimated once, at the
start) and the scale is folded into the saved weights. Checkpoints are atomic directories;
resuming from one continues bitwise like an uninterrupted run on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import architectures
from ..config import TrainConfig
from ..data.activations import ActivationBatch, iter_activations, load_model, token_windows
from ..data.corpus import corpus_hash, load_texts
from ..data.hooks import resolve_hook
from ..data.store import ActivationStore, concat_batches, read_cache, write_cache
from ..errors import ConfigError, DataError, FormatError
from ..formats._io import atomic_directory, atomic_file, read_json, write_json
from ..sae import SparseAutoencoder
from . import distributed, losses, sharded
from .basic import init_decoder_rows, normalize_decoder_rows, project_decoder_grad

STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.pt"
COUNTERS_FILE = "counters.safetensors"


@dataclass
class TrainResult:
    """What `train` returns: the SAE (normalisation folded in), where it was saved, the
    training activations with their provenance, and the final metrics."""

    sae: SparseAutoencoder | None  # None on ranks other than shard 0 (feature sharding)
    sae_dir: Path
    activations: ActivationBatch
    windows: list[list[int]]
    tokenizer: Any
    metrics: dict[str, float] = field(default_factory=dict)
    # Where the time went: activation collection (model forward passes, or the cache read)
    # vs SAE optimisation steps; seconds and tokens per second of each (also written to
    # `<out>/timings.json`).
    timings: dict[str, float] = field(default_factory=dict)


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    decay_from = int(cfg.decay_start * cfg.steps)
    if step < decay_from or cfg.steps <= decay_from:
        return warm
    return warm * max(0.0, 1.0 - (step - decay_from) / (cfg.steps - decay_from))


def collect(
    cfg: TrainConfig, group: distributed.Group | None = None
) -> tuple[ActivationBatch, list[list[int]], Any]:
    """Training activations (from the cache when it matches), windows and tokenizer.

    In a parallel run (`group`, every rank calls it), each rank runs its own model replica
    over its share of the windows and the shares are gathered, in window order, so every
    rank ends with the activations one process would collect; rank 0 writes the cache."""
    group = group or distributed.Group()
    model, tokenizer = load_model(cfg.model)
    resolve_hook(model, cfg.hook)  # fail before tokenising the corpus
    texts = load_texts(cfg.corpus, cfg.text_field)
    windows = token_windows(tokenizer, texts, cfg.context_size)
    identity = {
        "model": cfg.model,
        "hook": cfg.hook,
        "context_size": cfg.context_size,
        "corpus_hash": corpus_hash(texts),
        "max_tokens": cfg.max_tokens,
    }
    cache = None if cfg.cache is None else Path(cfg.cache)
    distributed.barrier(group)  # every rank sees the same cache state
    if cache is not None and (cache / "manifest.json").exists():
        return read_cache(cache, identity), windows, tokenizer
    if group.world == 1:  # streamed into the cache, if any
        acts = iter_activations(model, tokenizer, windows, cfg.hook, max_tokens=cfg.max_tokens)
    else:  # the same batches, on every rank: all of them stop here if there are none
        acts = distributed.collect_shares(
            model, tokenizer, windows, cfg.hook, cfg.max_tokens, group
        )
        if not acts:
            raise ConfigError(f"corpus {cfg.corpus} produced no tokens")
    if cache is not None:
        if group.is_main:
            write_cache(cache, acts, identity)
        distributed.barrier(group)
        return read_cache(cache, identity), windows, tokenizer
    acts = list(acts)
    if not acts:
        raise ConfigError(f"corpus {cfg.corpus} produced no tokens")
    return concat_batches(acts), windows, tokenizer


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


def _check_finite(batch: Tensor, index: Tensor, what: str) -> None:
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


def _norm_scale(acts: Tensor) -> float:
    """sqrt(d_in) / mean ||x|| over (up to) 65536 rows."""
    sample = acts[:65536].double()
    return float(math.sqrt(acts.shape[1]) / sample.norm(dim=1).mean().clamp_min(1e-12))


class Trainer:
    """One training run; `run()` trains and saves. Build with `Trainer(cfg)`."""

    def __init__(self, cfg: TrainConfig, data: tuple[ActivationBatch, list, Any] | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write_test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise PermissionError(f"output directory {self.out} is not writable: {err}") from err
        self.device = train_device(cfg.device)  # before collecting: a bad name fails fast
        self.group, self.device = distributed.init(cfg.parallel, self.device, cfg.feature_shards)
        t0 = time.perf_counter()
        self.data, self.windows, self.tokenizer = (
            data if data is not None else collect(cfg, self.group)
        )
        self.collect_seconds = time.perf_counter() - t0 if data is None else 0.0
        acts = self.data.acts
        d_in = acts.shape[1]
        d_sae = cfg.d_sae or cfg.expansion * d_in
        self.shard = self._shard(d_sae)
        self.sae = SparseAutoencoder(
            d_in,
            self.shard.size,  # this rank's latents (all of them unless feature-sharded)
            activation=cfg.activation,
            k=cfg.k,
            backend=cfg.backend,
            device=self.device,
            model_name=cfg.model,
            hook_name=cfg.hook,
            options=architectures.get(cfg.activation).train_options(cfg, d_sae),
            # Read by `evaluate` to hold out the training tokens of the same corpus.
            metadata={
                "context_size": cfg.context_size,
                "corpus": cfg.corpus,
                "train_tokens": int(acts.shape[0]),
            },
        )
        with torch.no_grad():
            w = init_decoder_rows(d_sae, d_in, cfg.seed, self.shard.lo, self.shard.hi)
            self.sae.W_dec.copy_(w)
            self.sae.W_enc.copy_(w.t())
            self.sae.arch.init_training(self.sae, cfg)
        sample = acts[:65536]  # sets the input scale and b_dec
        _check_finite(sample, torch.arange(len(sample)), "the activation set")
        self.scale = _norm_scale(acts) if cfg.normalize_activations else 1.0
        with torch.no_grad():  # b_dec starts at the (scaled) mean, a common choice
            self.sae.b_dec.copy_((acts[:65536].mean(0) * self.scale).to(self.device))
        self.store = ActivationStore(acts, seed=cfg.seed)
        # Fused Adam: one kernel over all parameters (CPU and CUDA); ~5x faster than the
        # per-op implementation at d_sae=12288 on CPU.
        self.opt = torch.optim.Adam(
            self.sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), fused=True
        )
        self.step = 0
        self.since_fired = torch.zeros(self.shard.size, dtype=torch.int64, device=self.device)
        if cfg.resume:
            self._load_checkpoint(Path(cfg.resume))
        self.metrics_path = self.out / "metrics.jsonl"

    def _shard(self, d_sae: int) -> sharded.Shard:
        """This rank's latents; ConfigError when the dictionary does not split."""
        shards = self.group.shards
        if d_sae % shards:
            raise ConfigError(f"d_sae {d_sae} must be a multiple of feature_shards {shards}")
        if architectures.get(self.cfg.activation).uses_k and self.cfg.k > d_sae // shards:
            raise ConfigError(
                f"k={self.cfg.k} is more than the {d_sae // shards} latents of each of "
                f"{shards} feature shards; use fewer shards or a larger dictionary"
            )
        return sharded.Shard.of(d_sae, self.group)

    # ------------------------------------------------------------------ one step
    def _loss(self, x: Tensor) -> tuple[Tensor, dict[str, float], Tensor]:
        # The architecture gives the forward and its loss terms; feature-sharded, `sae` holds
        # this shard's latents and `shard.sum` adds up the partial reconstructions and
        # per-latent terms, so every shard computes the same loss.
        out, terms = self.sae.arch.train_terms(self, x)
        recon = out.reconstruction
        terms["mse"] = losses.mse(recon, x)
        total = sum(terms.values())
        logs = {n: float(t.detach()) for n, t in terms.items()}
        logs["fvu"] = float(losses.fvu(recon.detach(), x))
        logs["l0"] = self.shard.total(float(out.l0()))
        return total, logs, out.fired()

    def train_step(self) -> dict[str, float]:
        """One optimiser step; returns the step's logs."""
        cfg = self.cfg
        # every rank draws the same global batch and keeps its share (data parallel), so
        # every rank finds the same bad rows and stops together
        index = self.store.indices(self.step, cfg.batch_size)
        batch = self.store.acts[index]
        _check_finite(batch, index, f"step {self.step}: the batch")
        x = distributed.share(batch, self.group).to(self.device) * self.scale
        lr = cfg.lr * _lr_factor(self.step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            loss, logs, fired = self._loss(x)
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
        self.step += 1
        logs.update(
            loss=float(loss.detach()),
            lr=lr,
            step=self.step,
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
        """Write `checkpoints/step_<n>` atomically; keep the two newest.

        Layout: `sae/` (the whole SAE, an ordinary SAE directory), `trainer_state.json`, and
        the optimiser state and dead-latent counters: in the root when every rank holds all
        latents (data-parallel ranks are identical, so rank 0 writes them), else one
        `shards/shard-<i>/` per feature shard, written by replica 0's ranks into a staging
        directory that joins the checkpoint in the final rename."""
        ckpt_root = self.out / "checkpoints"
        path = ckpt_root / f"step_{self.step:08d}"
        group = self.group
        staging = ckpt_root / f".staging-step_{self.step:08d}"
        if group.shards > 1:
            if group.is_main:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            distributed.barrier(group)
            if group.replica == 0:
                with atomic_directory(staging / f"shard-{group.shard:03d}") as tmp:
                    self._write_state(tmp)
        sae = sharded.consolidate(self.sae, self.shard) if group.replica == 0 else None
        if group.is_main:
            assert sae is not None
            with atomic_directory(path) as tmp:
                sae.save(tmp / "sae")
                write_json(
                    tmp / STATE_FILE,
                    {
                        "step": self.step,
                        "scale": self.scale,
                        "batchtopk_threshold": self.sae.batchtopk_threshold,  # for older readers
                        "feature_shards": group.shards,
                        "config": self.cfg.to_dict(),
                    },
                )
                if group.shards > 1:
                    os.rename(staging, tmp / "shards")
                else:
                    self._write_state(tmp)
            old = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())[:-2]
            for p in old:  # renamed first: a kill mid-delete must not leave a torn step_*
                doomed = p.with_name(f".{p.name}.deleting")
                os.rename(p, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
        distributed.barrier(group)
        return path

    def _write_state(self, where: Path) -> None:
        """This rank's optimiser state and dead-latent counters, into directory `where`."""
        from safetensors.torch import save_file

        torch.save(self.opt.state_dict(), where / OPTIM_FILE)
        save_file({"since_fired": self.since_fired.cpu()}, str(where / COUNTERS_FILE))

    def _load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = read_json(path / STATE_FILE)
        shards = int(state.get("feature_shards", 1))
        if shards != self.group.shards:
            raise ConfigError(
                f"checkpoint {path} was written by a run with {shards} feature shard(s); "
                f"resume it with {shards} (--parallel features --feature-shards {shards}, "
                f"or no sharding for 1), not {self.group.shards}"
            )
        if shards > 1:
            sharded.load_shard(self.sae, path / "sae", self.shard)
            where = path / "shards" / f"shard-{self.group.shard:03d}"
        else:
            saved = SparseAutoencoder.load(path / "sae", backend=self.cfg.backend)
            if (saved.d_in, saved.d_sae, saved.activation) != (
                self.sae.d_in,
                self.sae.d_sae,
                self.sae.activation,
            ):
                raise ConfigError(
                    f"checkpoint {path} is a {saved.activation} SAE {saved.d_in}->{saved.d_sae}, "
                    f"but this run builds {self.sae.activation} {self.sae.d_in}->{self.sae.d_sae} "
                    "(d_in comes from the model and hook)"
                )
            self.sae.load_state_dict(saved.state_dict())
            where = path
        try:
            opt_state = torch.load(where / OPTIM_FILE, map_location="cpu", weights_only=True)
        except Exception as err:
            raise FormatError(f"{where / OPTIM_FILE} is unreadable: {err}") from err
        self.opt.load_state_dict(opt_state)
        self.since_fired = load_file(str(where / COUNTERS_FILE))["since_fired"].to(self.device)
        self.step = int(state["step"])
        self.scale = float(state["scale"])
        if self.sae.batchtopk_threshold is None and state.get("batchtopk_threshold") is not None:
            self.sae.batchtopk_threshold = state["batchtopk_threshold"]  # a checkpoint of before

    # ------------------------------------------------------------------ run
    def final_sae(self) -> SparseAutoencoder | None:
        """A copy of the whole SAE for raw (unnormalised) activations: the scale folded in.
        Feature-sharded: a collective; shard 0 gets the SAE, the other shards None."""
        whole = sharded.consolidate(self.sae, self.shard)
        if whole is None:
            return None
        sae = SparseAutoencoder.from_config(whole.cfg, backend=self.cfg.backend)
        sae.load_state_dict(whole.state_dict())
        s = self.scale
        with torch.no_grad():  # pre((s x)) == pre'(x) with W_enc * s; recon / s
            sae.W_enc.mul_(s)
            sae.W_dec.div_(s)
            sae.b_dec.div_(s)
        return sae

    def run(self) -> TrainResult:
        """Train to `cfg.steps`, checkpointing; Ctrl-C saves a checkpoint, then exits."""
        cfg = self.cfg
        bar = None
        main = self.group.is_main  # data parallel: rank 0 logs, checkpoints and saves
        if cfg.progress and main:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True)
        if main:  # temp dirs of checkpoint writes that a killed run left behind
            for stale in (self.out / "checkpoints").glob(".*step_*"):
                shutil.rmtree(stale, ignore_errors=True)
        distributed.barrier(self.group)
        logs: dict[str, float] = {}
        t0, tokens0 = time.perf_counter(), self.step * cfg.batch_size
        try:
            with open(self.metrics_path, "a") if main else contextlib.nullcontext() as metrics:
                while self.step < cfg.steps:
                    logs = self.train_step()
                    if bar is not None:
                        bar.update(1)
                    if main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                        tok_s = (self.step * cfg.batch_size - tokens0) / max(
                            time.perf_counter() - t0, 1e-9
                        )
                        logs["tokens_per_s"] = tok_s
                        metrics.write(json.dumps(logs) + "\n")
                        metrics.flush()
                        if bar is not None:
                            bar.set_postfix(
                                tok_s=f"{tok_s:,.0f}",
                                loss=f"{logs['loss']:.3f}",
                                fvu=f"{logs['fvu']:.3f}",
                                l0=f"{logs['l0']:.1f}",
                                dead=f"{logs['dead_pct']:.1f}%",
                            )
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save_checkpoint()
        except KeyboardInterrupt:
            path = self.save_checkpoint()
            if bar is not None:
                bar.close()
            print(
                f"\ninterrupted at step {self.step}; checkpoint saved to {path} "
                f"(continue with --resume {path})"
            )
            raise SystemExit(130) from None
        if bar is not None:
            bar.close()
        train_s = time.perf_counter() - t0
        n_collected = len(self.data.tokens)
        timings = {
            "collect_seconds": self.collect_seconds,
            "collect_tokens_per_s": n_collected / self.collect_seconds
            if self.collect_seconds
            else 0.0,
            "train_seconds": train_s,
            "train_tokens_per_s": (self.step * cfg.batch_size - tokens0) / max(train_s, 1e-9),
        }
        timings["steps"] = self.step
        timings["batch_size"] = cfg.batch_size
        sae = self.final_sae()
        sae_dir = self.out / "sae"
        if main:
            with atomic_file(self.out / "timings.json") as tmp:
                write_json(tmp, timings)
            sae.save(sae_dir)
        distributed.barrier(self.group)  # the saved SAE exists on return, on every rank
        return TrainResult(sae, sae_dir, self.data, self.windows, self.tokenizer, logs, timings)


def train(cfg: TrainConfig) -> TrainResult:
    """Collect activations, train an SAE as configured, save it under `cfg.out`/sae."""
    return Trainer(cfg).run()

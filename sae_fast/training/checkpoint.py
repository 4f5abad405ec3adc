"""Training checkpoints: `checkpoints/step_<n>/` written atomically (the two newest kept)
and read back for `--resume`, bitwise on the CPU.

Layout: `sae/` (the whole SAE, an ordinary SAE directory), `trainer_state.json`, and the
optimiser state and dead-latent counters: in the root when every rank holds all latents
(data-parallel ranks are identical, so rank 0 writes them), else one `shards/shard-<i>/` per
feature shard, written by replica 0's ranks into a staging directory that joins the
checkpoint in the final rename."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError, FormatError
from ..files import atomic_directory, read_json, write_json
from ..sae import SparseAutoencoder
from . import distributed, sharded

if TYPE_CHECKING:
    from .trainer import Trainer

STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.pt"
COUNTERS_FILE = "counters.safetensors"


def save(run: Trainer) -> Path:
    """Write `checkpoints/step_<n>` of `run` atomically (layout: the module docstring) and
    keep the two newest; a collective in a parallel run. Returns the checkpoint's path."""
    ckpt_root = run.out / "checkpoints"
    path = ckpt_root / f"step_{run.step:08d}"
    group = run.group
    staging = ckpt_root / f".staging-step_{run.step:08d}"
    if group.shards > 1:
        if group.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        distributed.barrier(group)
        if group.replica == 0:
            with atomic_directory(staging / f"shard-{group.shard:03d}") as tmp:
                write_state(run, tmp)
    sae = sharded.consolidate(run.sae, run.shard) if group.replica == 0 else None
    feeds = distributed.gather_objects(run.feed.state(), group)  # a stream's, per rank
    if group.is_main:
        assert sae is not None
        with atomic_directory(path) as tmp:
            sae.save(tmp / "sae")
            write_json(
                tmp / STATE_FILE,
                {
                    "step": run.step,
                    "scale": run.scale,
                    "target_scale": run.target_scale,
                    "batchtopk_threshold": run.sae.batchtopk_threshold,  # for older readers
                    "feature_shards": group.shards,
                    "feeds": feeds,
                    "config": run.cfg.to_dict(),
                },
            )
            if group.shards > 1:
                os.rename(staging, tmp / "shards")
            else:
                write_state(run, tmp)
        old = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())[:-2]
        for p in old:  # renamed first: a kill mid-delete must not leave a torn step_*
            doomed = p.with_name(f".{p.name}.deleting")
            os.rename(p, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    distributed.barrier(group)
    return path


def write_state(run: Trainer, where: Path) -> None:
    """This rank's optimiser state and dead-latent counters, into directory `where`."""

    torch.save(run.opt.state_dict(), where / OPTIM_FILE)
    save_file({"since_fired": run.since_fired.cpu()}, str(where / COUNTERS_FILE))


def feed_state(path: Path, group: distributed.Group) -> dict:
    """The position of this rank's feed in checkpoint `path` (a streamed run's ranks each
    have their own; older checkpoints, of runs from memory or a cache, have none)."""
    state = read_json(path / STATE_FILE)
    feeds = state.get("feeds") or [{"kind": "memory"}]
    if feeds[0].get("kind") == "stream" and len(feeds) != group.world:
        raise ConfigError(
            f"checkpoint {path} was written by a streamed run of {len(feeds)} rank(s); "
            f"resume it with {len(feeds)}, not {group.world}"
        )
    return feeds[group.rank] if len(feeds) == group.world else feeds[0]


def latest(out: Path) -> Path:
    """The newest checkpoint of the run directory `out` (FileNotFoundError if none)."""
    found = sorted(p for p in (out / "checkpoints").glob("step_*") if p.is_dir())
    if not found:
        raise FileNotFoundError(f"no checkpoint in {out / 'checkpoints'} to resume from")
    return found[-1]


def load(run: Trainer, path: Path) -> None:
    """Continue `run` from checkpoint `path`: the SAE (or this shard of it), the optimiser,
    the counters, the step and the input scale."""

    state = read_json(path / STATE_FILE)
    shards = int(state.get("feature_shards", 1))
    if shards != run.group.shards:
        raise ConfigError(
            f"checkpoint {path} was written by a run with {shards} feature shard(s); "
            f"resume it with {shards} (--parallel features --feature-shards {shards}, "
            f"or no sharding for 1), not {run.group.shards}"
        )
    if shards > 1:
        sharded.load_shard(run.sae, path / "sae", run.shard)
        where = path / "shards" / f"shard-{run.group.shard:03d}"
    else:
        saved = SparseAutoencoder.load(path / "sae", backend=run.cfg.backend)

        def shape(sae: SparseAutoencoder) -> tuple:
            return sae.d_in, sae.d_sae, sae.d_out, sae.activation, sae.cfg.transcoder

        if shape(saved) != shape(run.sae):
            if saved.cfg.transcoder or run.sae.cfg.transcoder:
                got, want = (
                    f"{s.activation} {'transcoder' if s.cfg.transcoder else 'SAE'} "
                    f"{s.d_in}->{s.d_sae}->{s.d_out}"
                    for s in (saved, run.sae)
                )
                where = "d_in and d_out come from the model and hooks"
            else:
                got = f"{saved.activation} SAE {saved.d_in}->{saved.d_sae}"
                want = f"{run.sae.activation} {run.sae.d_in}->{run.sae.d_sae}"
                where = "d_in comes from the model and hook"
            raise ConfigError(f"checkpoint {path} is a {got}, but this run builds {want} ({where})")
        run.sae.load_state_dict(saved.state_dict())
        where = path
    try:
        opt_state = torch.load(where / OPTIM_FILE, map_location="cpu", weights_only=True)
    except Exception as err:
        raise FormatError(f"{where / OPTIM_FILE} is unreadable: {err}") from err
    run.opt.load_state_dict(opt_state)
    run.since_fired = load_file(str(where / COUNTERS_FILE))["since_fired"].to(run.device)
    run.step = int(state["step"])
    run.scale = float(state["scale"])
    run.target_scale = float(state.get("target_scale", run.scale))  # older: an SAE's one
    if run.sae.batchtopk_threshold is None and state.get("batchtopk_threshold") is not None:
        run.sae.batchtopk_threshold = state["batchtopk_threshold"]  # a checkpoint of before

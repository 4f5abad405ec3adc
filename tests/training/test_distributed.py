"""Data-parallel training on 2 gloo processes (spawned here, bounded in time) against the
single-process run with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_fast import ConfigError, SparseAutoencoder, TrainConfig
from sae_fast.architectures.batchtopk import batch_winners
from sae_fast.data import collect as data_collect
from sae_fast.data.store import read_cache, read_windows
from sae_fast.ops import reference as ref
from sae_fast.training import distributed, sharded
from sae_fast.training.trainer import Trainer, collect, train
from tests.training.ranks import BASE, TIMEOUT_S, assert_same_sae, free_port, join_env, spawn

ROOT = Path(__file__).resolve().parents[2]


def train_ranks(rank: int, world: int, port: int, cfgs: list[dict]) -> None:
    """One rank of a parallel run: train every config in turn."""
    join_env(rank, world, port)
    try:
        for cfg in cfgs:
            train(TrainConfig(**cfg))
    finally:
        torch.distributed.destroy_process_group()


def _collectives_main(rank: int, world: int, port: int) -> None:
    join_env(rank, world, port)
    group, _ = distributed.init("data", torch.device("cpu"))
    try:
        # gradients: the mean over ranks, not the sum (Adam would hide a wrong scale)
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = torch.full((3,), float(rank + 1))
        distributed.average_gradients([p], group)
        assert torch.equal(p.grad, torch.full((3,), 1.5)), p.grad
        fired = torch.tensor([rank == 0, rank == 1, False])
        assert distributed.any_rank(fired, group).tolist() == [True, True, False]
        assert distributed.mean_logs({"l0": float(rank)}, group, torch.device("cpu")) == {"l0": 0.5}
        assert distributed.share(torch.arange(8), group).tolist() == [
            4 * rank + i for i in range(4)
        ]
        with pytest.raises(ConfigError, match="multiple of the number of data replicas 2"):
            distributed.share(torch.arange(7), group)
        # BatchTopK over the global batch: each replica's rows, one exchange of candidates
        shard = sharded.Shard.of(10, group)
        full = torch.randint(-2, 3, (6, 10), generator=torch.Generator().manual_seed(1))
        full = full.float().relu()
        mine = distributed.share(full, group)
        for k in (1, 3, 10):
            mask = batch_winners(mine, k, shard)
            parts = [torch.empty_like(mask) for _ in range(2)]
            torch.distributed.all_gather(parts, mask)
            assert torch.equal(full * torch.cat(parts), ref.batchtopk_act(full, k)), k
    finally:
        torch.distributed.destroy_process_group()


def test_collectives_average_or_and_split(tmp_path):
    spawn(_collectives_main, ())


def _collect_main(rank: int, world: int, port: int, out: str) -> None:
    join_env(rank, world, port)
    group, _ = distributed.init("data", torch.device("cpu"))
    runs = []  # the windows each rank's model replica ran on
    real = data_collect.iter_activations

    def counted(model, tokenizer, windows, *args, **kwargs):
        runs.append(len(windows))
        return real(model, tokenizer, windows, *args, **kwargs)

    data_collect.iter_activations = counted
    try:
        cfg = TrainConfig(**BASE, cache=str(Path(out) / "cache"))
        data, _, _ = collect(cfg, group)
        sizes = [None] * world
        torch.distributed.all_gather_object(sizes, sum(runs))
        chosen = len(read_windows(Path(out) / "cache"))  # training and held-out windows
        assert sum(sizes) == chosen and max(sizes) - min(sizes) <= 32, (sizes, chosen)
        if rank == 0:
            save_file({"acts": data.acts, "window": data.window}, str(Path(out) / "acts.st"))
    finally:
        torch.distributed.destroy_process_group()


def test_each_rank_collects_its_share_of_the_activations(tmp_path):
    """No cache yet: each rank runs its model replica over half of the windows; every rank
    ends with what one process collects, and rank 0 writes the cache."""
    want, _, _ = collect(TrainConfig(**BASE))
    spawn(_collect_main, (str(tmp_path),))
    got = load_file(str(tmp_path / "acts.st"))
    assert torch.equal(got["window"], want.window)
    torch.testing.assert_close(got["acts"], want.acts, rtol=1e-4, atol=1e-4)
    cached = read_cache(tmp_path / "cache")  # the training rows, then the held-out ones
    assert torch.equal(cached.acts[: len(got["acts"])], got["acts"])


def _run_data_parallel(cfg: dict) -> None:
    spawn(train_ranks, ([cfg],))


def test_data_parallel_equals_one_process_and_resumes(tmp_path, cache):
    single = train(TrainConfig(**BASE, cache=cache, out=str(tmp_path / "single")))
    assert single.metrics["dead_pct"] > 0  # the dead-latent path was exercised
    logs = (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
    assert any(json.loads(line)["revived"] > 0 for line in logs)  # and revival (gathered)
    dp = dict(BASE, cache=cache, out=str(tmp_path / "dp"), parallel="data")
    _run_data_parallel(dp)
    assert_same_sae(tmp_path / "dp" / "sae", tmp_path / "single" / "sae")
    lines = (tmp_path / "dp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # rank 0 alone logs (steps 2, 4, 6, 8)
    # the checkpoint is one ordinary SAE directory, loadable in a single process
    ckpt = tmp_path / "dp" / "checkpoints" / "step_00000004"
    assert SparseAutoencoder.load(ckpt / "sae").d_sae == 768
    # resume the data-parallel run from step 4: same weights as the uninterrupted runs
    _run_data_parallel(dict(dp, out=str(tmp_path / "resumed"), resume=str(ckpt)))
    assert_same_sae(tmp_path / "resumed" / "sae", tmp_path / "single" / "sae")


@pytest.mark.parametrize(
    "arch",
    [
        dict(activation="batchtopk"),  # selects over the global batch
        dict(activation="matryoshka_batchtopk", matryoshka_widths="128,384"),
        dict(activation="gated", l1_coefficient=0.5),
    ],
    ids=lambda a: a["activation"],
)
def test_data_parallel_equals_one_process_for_each_architecture(tmp_path, cache, arch):
    cfg = dict(BASE, cache=cache, steps=4, checkpoint_every=0, **arch)
    single = train(TrainConfig(**cfg, out=str(tmp_path / "single")))
    _run_data_parallel(dict(cfg, out=str(tmp_path / "dp"), parallel="data"))
    assert_same_sae(tmp_path / "dp" / "sae", tmp_path / "single" / "sae")
    dp = SparseAutoencoder.load(tmp_path / "dp" / "sae")
    assert dp.activation == arch["activation"]
    if single.sae.batchtopk_threshold is not None:
        assert dp.batchtopk_threshold == pytest.approx(single.sae.batchtopk_threshold, rel=1e-4)


@pytest.mark.parametrize("mode", [["data"], ["features", "--feature-shards", "2"]])
def test_torchrun_command_line(tmp_path, cache, mode):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port())]
    cmd += ["-m", "sae_fast.cli", "train", "--parallel", *mode, "--cache", cache]
    cmd += ["--max-tokens", "2048", "--steps", "3", "--batch-size", "128", "--d-sae", "512"]
    cmd += ["--context-size", "64", "--seed", "3"]
    cmd += ["--k", "8", "--no-progress", "--checkpoint-every", "0", "--out", str(tmp_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert SparseAutoencoder.load(tmp_path / "sae").d_sae == 512
    assert done.stdout.count("saved ") == 2  # each rank reports the one saved SAE


def test_data_parallel_refuses_bad_setups(tmp_path, cache, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    cfg = TrainConfig(**BASE, cache=cache, out=str(tmp_path), parallel="data")
    with pytest.raises(ConfigError, match="needs torchrun"):
        Trainer(cfg)
    with pytest.raises(ConfigError, match="unknown parallel mode"):
        TrainConfig(**BASE, parallel="pipeline")

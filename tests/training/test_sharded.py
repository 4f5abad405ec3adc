"""Feature-sharded training on 2 and 4 gloo processes (spawned here, bounded in time): the
candidate exchange against the reference selection, and whole runs against the
single-process run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sae_fast import ConfigError, SparseAutoencoder, TrainConfig
from sae_fast.architectures.batchtopk import batch_winners
from sae_fast.ops import reference as ref
from sae_fast.training import distributed, sharded
from sae_fast.training.trainer import Trainer, train
from tests.training.ranks import BASE, assert_same_sae, join_env, spawn
from tests.training.test_distributed import train_ranks

STEPS_SHORT = 4  # relu, jumprelu, batchtopk runs


def _exchange_main(rank: int, world: int, port: int, tmp: str, single_ckpt: str) -> None:
    join_env(rank, world, port)
    group, _ = distributed.init("features", torch.device("cpu"))
    try:
        assert (group.shards, group.shard, group.replicas) == (2, rank, 1)
        shard = sharded.Shard.of(10, group)
        g = torch.Generator().manual_seed(0)
        # integer scores: ties everywhere, also across the two shards
        full = torch.randint(-2, 3, (6, 10), generator=g).float()
        local = full[:, shard.lo : shard.hi]
        for k in (1, 3, 5, 7):  # 7 > the 5 columns of a shard: padded candidates
            vals, pos = shard.topk_act(local, k, torch.arange(shard.lo, shard.hi))
            dense = torch.zeros_like(local).scatter_add_(1, pos, vals)
            want = ref.densify(*ref.topk_act(full, k), 10)
            assert torch.equal(shard.gather(dense), want), k
            # the raw exchange: the winners' global indices are the reference's
            v, i = ref.topk_select(local, min(k, 5))
            won = shard.winners(v, i + shard.lo, k)
            mine = torch.zeros_like(local, dtype=torch.bool).scatter_(1, i, won)
            picked = ref.topk_select(full, k).indices
            want_mask = torch.zeros_like(full, dtype=torch.bool).scatter_(1, picked, True)
            assert torch.equal(shard.gather(mine), want_mask), k
        acts = full.relu()
        for k in (1, 2, 5, 10):  # BatchTopK: B*k of the whole batch (10: every entry)
            mask = batch_winners(acts[:, shard.lo : shard.hi], k, shard)
            got = shard.gather(acts[:, shard.lo : shard.hi] * mask)
            assert torch.equal(got, ref.batchtopk_act(full, k)), k
        # the sum's backward is the identity: each shard's gradient is its own, not summed
        p = torch.ones(3, requires_grad=True)
        out = shard.sum(p * (rank + 1))
        assert out.tolist() == [3.0, 3.0, 3.0]
        out.sum().backward()
        assert p.grad.tolist() == [float(rank + 1)] * 3
        assert shard.total(float(rank), op="max") == 1.0
        # consolidate -> save -> load_shard round trip, and the global-norm clip
        torch.manual_seed(5)
        whole = SparseAutoencoder(6, 10, activation="jumprelu", k=None)
        with torch.no_grad():
            whole.threshold.uniform_()
            whole.b_enc.uniform_()
            whole.b_dec.uniform_()
        part = SparseAutoencoder(6, 5, activation="jumprelu", k=None)
        with torch.no_grad():
            for name, prm in part.named_parameters():
                dim = sharded.shard_dims(part).get(name)
                w = getattr(whole, name)
                prm.copy_(w if dim is None else w.narrow(dim, shard.lo, 5))
        got = sharded.consolidate(part, shard)
        if rank == 0:
            for name, w in whole.state_dict().items():
                assert torch.equal(got.state_dict()[name], w), name
            got.save(Path(tmp) / "whole")
        else:
            assert got is None
        distributed.barrier(group)
        again = SparseAutoencoder(6, 5, activation="jumprelu", k=None)
        sharded.load_shard(again, Path(tmp) / "whole", shard)
        for name, w in part.state_dict().items():
            assert torch.equal(again.state_dict()[name], w), name
        for module in (whole, part):
            for name, prm in module.named_parameters():
                prm.grad = torch.ones_like(prm) * (2.0 if name == "b_dec" else 1.0)
        torch.nn.utils.clip_grad_norm_(whole.parameters(), 0.5)
        sharded.clip_grad_norm(part, 0.5, shard)
        for name, prm in part.named_parameters():
            dim = sharded.shard_dims(part).get(name)
            want = whole.get_parameter(name).grad
            want = want if dim is None else want.narrow(dim, shard.lo, 5)
            torch.testing.assert_close(prm.grad, want, msg=name)
        # bad setups: each a ConfigError on every rank, before any collective
        with pytest.raises(ConfigError, match="must divide the world size 2"):
            distributed.init("features", torch.device("cpu"), feature_shards=3)
        with pytest.raises(ConfigError, match="needs --parallel features"):
            distributed.init("data", torch.device("cpu"), feature_shards=2)
        cfg = dict(BASE, cache=str(Path(tmp) / "cache"), out=str(Path(tmp) / "bad"))
        cfg["parallel"] = "features"
        with pytest.raises(ConfigError, match="multiple of feature_shards 2"):
            Trainer(TrainConfig(**dict(cfg, d_sae=767)))
        with pytest.raises(ConfigError, match="latents of each of 2 feature shards"):
            Trainer(TrainConfig(**dict(cfg, d_sae=12, k=8)))
        with pytest.raises(ConfigError, match="written by a run with 1 feature shard"):
            Trainer(TrainConfig(**dict(cfg, resume=single_ckpt)))
    finally:
        torch.distributed.destroy_process_group()


def test_exchange_selection_clip_and_checkpoint_slices(tmp_path, cache):
    single = train(TrainConfig(**BASE, cache=cache, out=str(tmp_path / "single")))
    assert single.sae is not None
    (tmp_path / "cache").symlink_to(cache)
    ckpt = tmp_path / "single" / "checkpoints" / "step_00000004"
    spawn(_exchange_main, (str(tmp_path), str(ckpt)))


SHORT = dict(steps=STEPS_SHORT, checkpoint_every=0)
RUNS = {  # name -> config on top of BASE; every one also runs sharded
    "topk": {},
    "relu": dict(SHORT, activation="relu", l1_coefficient=0.5),
    "jumprelu": dict(SHORT, activation="jumprelu", jumprelu_init_threshold=0.05),
    "batchtopk": dict(SHORT, activation="batchtopk"),
    "gated": dict(SHORT, activation="gated", l1_coefficient=0.5),
    # the widths cross the shards' boundary (768 latents, 384 a shard)
    "matryoshka": dict(SHORT, activation="matryoshka_batchtopk", matryoshka_widths="128,512"),
    # the recipe's revival window, from the whole dictionary's d_sae on every shard: 2,016
    # tokens here, none revived in 8 steps; a shard that used its own 384 latents (1,008)
    # would revive one at step 5 and differ
    "topk_window": dict(k=16, revive_after_tokens=None, checkpoint_every=0),
}


def test_feature_sharding_equals_one_process_and_resumes(tmp_path, cache):
    def cfg(name: str, where: str, **extra) -> dict:
        return dict(BASE, **RUNS[name], cache=cache, out=str(tmp_path / where / name), **extra)

    for name in RUNS:
        result = train(TrainConfig(**cfg(name, "single")))
        if name == "topk":
            assert result.metrics["dead_pct"] > 0  # AuxK ran, across shards below
            logs = (tmp_path / "single" / name / "metrics.jsonl").read_text().splitlines()
            assert any(json.loads(line)["revived"] > 0 for line in logs)  # and revival
    ckpt = tmp_path / "sharded" / "topk" / "checkpoints" / "step_00000004"
    runs = [cfg(name, "sharded", parallel="features") for name in RUNS]
    runs.append(cfg("topk", "resumed", parallel="features", resume=str(ckpt)))
    spawn(train_ranks, (runs,))
    for name in RUNS:
        assert_same_sae(tmp_path / "sharded" / name / "sae", tmp_path / "single" / name / "sae")
    assert_same_sae(tmp_path / "resumed" / "topk" / "sae", tmp_path / "single" / "topk" / "sae")
    bt = [SparseAutoencoder.load(tmp_path / w / "batchtopk" / "sae") for w in ("single", "sharded")]
    assert bt[1].batchtopk_threshold == pytest.approx(bt[0].batchtopk_threshold, rel=1e-4)
    # the checkpoint: one whole SAE (loads in one process) and each shard's optimiser state
    assert SparseAutoencoder.load(ckpt / "sae").d_sae == BASE["d_sae"]
    for i in range(2):
        assert (ckpt / "shards" / f"shard-{i:03d}" / "optimizer.pt").is_file()
    assert not list(ckpt.parent.glob(".staging-*"))
    lines = (tmp_path / "sharded" / "topk" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # rank 0 alone logs


def test_grid_of_two_replicas_by_two_shards_equals_one_process(tmp_path, cache):
    runs = []
    for name in ("topk", "batchtopk"):
        cfg = dict(BASE, **RUNS[name], cache=cache)
        train(TrainConfig(**cfg, out=str(tmp_path / "single" / name)))
        runs.append(dict(cfg, out=str(tmp_path / "grid" / name), parallel="features"))
    spawn(train_ranks, ([dict(r, feature_shards=2) for r in runs],), world=4)
    for name in ("topk", "batchtopk"):
        assert_same_sae(tmp_path / "grid" / name / "sae", tmp_path / "single" / name / "sae")

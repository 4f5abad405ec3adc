"""Streaming under torch.distributed (2 gloo processes): each data replica streams its own
share of the windows (no rank holds the whole set) and resumes at its own stream
position; the feature shards of a replica read the same stream, so a feature-sharded
streamed run equals the single-process one."""

from __future__ import annotations

import json

from sae_fast import TrainConfig
from sae_fast.training.trainer import train
from tests.training.ranks import BASE, assert_same_sae, spawn
from tests.training.test_distributed import train_ranks

STREAM = dict(BASE, buffer_tokens=1024, cache=None)


def test_data_parallel_replicas_stream_their_own_share_and_resume(tmp_path):
    dp = dict(STREAM, out=str(tmp_path / "dp"), parallel="data")
    spawn(train_ranks, ([dp],))
    ckpt = tmp_path / "dp" / "checkpoints" / "step_00000004"
    feeds = json.loads((ckpt / "trainer_state.json").read_text())["feeds"]
    assert [f["kind"] for f in feeds] == ["stream", "stream"]  # one position per rank
    spawn(train_ranks, ([dict(dp, out=str(tmp_path / "resumed"), resume=str(ckpt))],))
    assert_same_sae(tmp_path / "resumed" / "sae", tmp_path / "dp" / "sae", rtol=0, atol=0)


def test_feature_shards_read_one_stream_and_equal_one_process(tmp_path):
    train(TrainConfig(**STREAM, out=str(tmp_path / "single")))
    fs = dict(STREAM, out=str(tmp_path / "fs"), parallel="features")
    spawn(train_ranks, ([fs],))
    assert_same_sae(tmp_path / "fs" / "sae", tmp_path / "single" / "sae")

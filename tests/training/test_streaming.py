"""Training from the data engine: a streamed run resumes at its stream position bitwise,
a cached run (a cache in bfloat16, read out of core) too; many SAEs from one forward pass
equal their separate runs, each in its own directory with its own resume; a causal LM's
token filter is on by default and counted; bad requests get one clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sae_fast import ConfigError, FormatError, SparseAutoencoder, TrainConfig
from sae_fast.training.multi import parse_hooks, plan, train_many
from sae_fast.training.trainer import Trainer
from tests.helpers import SMALL_TRAIN, tiny_gpt2_dir

RUN = dict(SMALL_TRAIN, batch_size=128, buffer_tokens=1024, d_sae=768, steps=12, seed=3)


def _same(a: SparseAutoencoder, b: SparseAutoencoder) -> None:
    for name, t in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], t), name


def _cut_and_resume(tmp_path: Path, cut_at: int, **cfg) -> tuple[Trainer, SparseAutoencoder]:
    """Train `cut_at` steps, checkpoint, stop; resume in a new trainer and finish."""
    cut = Trainer(TrainConfig(**{**RUN, **cfg, "out": str(tmp_path / "cut")}))
    for _ in range(cut_at):
        cut.train_step()
    ckpt = cut.save_checkpoint()
    cut.feed.close()
    resumed = Trainer(
        TrainConfig(**{**RUN, **cfg, "out": str(tmp_path / "cut"), "resume": str(ckpt)})
    )
    assert resumed.step == cut_at
    return resumed, resumed.run().sae


@pytest.mark.parametrize("cut_at", [5, 9])  # inside the first block, and in a later one
def test_a_streamed_run_resumes_at_its_stream_position_bitwise(tmp_path, cut_at):
    whole = Trainer(TrainConfig(**RUN, out=str(tmp_path / "whole"))).run()
    assert whole.activations is None  # streamed: never all in memory
    _resumed, sae = _cut_and_resume(tmp_path, cut_at)
    _same(whole.sae, sae)
    state = json.loads(
        next((tmp_path / "cut" / "checkpoints").glob("step_*"))
        .joinpath("trainer_state.json")
        .read_text()
    )
    assert state["feeds"][0]["kind"] == "stream"
    last = json.loads((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["tokens_kept"] > 0 and last["dropped_first_position"] == 0


def test_a_run_from_a_bfloat16_cache_resumes_bitwise(tmp_path):
    cfg = dict(cache=str(tmp_path / "acts"), cache_dtype="bfloat16")
    whole = Trainer(TrainConfig(**RUN, **cfg, out=str(tmp_path / "whole"))).run()
    manifest = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["dtype"] == "bfloat16"
    _resumed, sae = _cut_and_resume(tmp_path, 7, **cfg)
    _same(whole.sae, sae)
    with pytest.raises(ConfigError, match="streams from the model"):
        ckpt = next((tmp_path / "cut" / "checkpoints").glob("step_*"))
        Trainer(TrainConfig(**RUN, out=str(tmp_path / "x"), resume=str(ckpt)))


def test_a_shard_lost_mid_run_is_named_and_the_last_checkpoint_still_loads(tmp_path):
    cache = tmp_path / "acts"
    cfg = TrainConfig(**{**RUN, "buffer_tokens": 512}, cache=str(cache), out=str(tmp_path / "r"))
    run = Trainer(cfg)
    run.train_step()
    ckpt = run.save_checkpoint()
    (cache / "shard_00000.safetensors").unlink()
    with pytest.raises(FormatError, match="shard_00000.safetensors is missing or corrupt"):
        for _ in range(RUN["steps"]):
            run.train_step()
    run.feed.close()
    assert SparseAutoencoder.load(ckpt / "sae").d_sae == 768


PAIRS = "layers.1.residual,layers.3.residual,layers.2.mlp_in:layers.2.mlp_out"


def test_many_saes_from_one_pass_equal_their_separate_runs(tmp_path):
    base = TrainConfig(**RUN, out=str(tmp_path / "many"))
    cfgs = plan(base, parse_hooks(PAIRS), [1, 2], None)
    outs = [Path(c.out).relative_to(tmp_path / "many").as_posix() for c in cfgs]
    assert outs == [
        "layers.1.residual/x1", "layers.1.residual/x2", "layers.3.residual/x1",
        "layers.3.residual/x2", "layers.2.mlp_in-to-layers.2.mlp_out/x1",
        "layers.2.mlp_in-to-layers.2.mlp_out/x2",
    ]  # fmt: skip
    results = train_many(cfgs)
    for c, r in zip(cfgs, results, strict=True):
        assert r.sae_dir == Path(c.out) / "sae" and (Path(c.out) / "metrics.jsonl").is_file()
    assert results[4].sae.cfg.transcoder and results[4].sae.d_sae == 384
    # bitwise what one run per SAE trains: the same rows, from a pass that stopped earlier
    for i in (0, 5):
        alone = Trainer(TrainConfig(**{**cfgs[i].to_dict(), "out": str(tmp_path / f"a{i}")}))
        _same(alone.run().sae, results[i].sae)


def test_many_saes_resume_latest_each_from_its_own_checkpoint(tmp_path):
    base = TrainConfig(**{**RUN, "checkpoint_every": 4}, out=str(tmp_path / "m"))
    cfgs = plan(base, None, None, [4, 8])
    assert [Path(c.out).name for c in cfgs] == ["k4", "k8"]
    want = train_many(cfgs)
    # killed between the two SAEs' checkpoint writes of step 12: k8 has only step 8, so
    # both resume from step 8, the newest step both have
    shutil.rmtree(Path(cfgs[1].out) / "checkpoints" / "step_00000012")
    assert (Path(cfgs[0].out) / "checkpoints" / "step_00000012").is_dir()
    again = train_many(
        plan(TrainConfig(**{**base.to_dict(), "resume": "latest"}), None, None, [4, 8])
    )
    for a, b in zip(want, again, strict=True):
        _same(a.sae, b.sae)


def test_two_saes_asked_to_write_one_directory_and_unknown_hooks_are_refused(tmp_path):
    base = TrainConfig(**RUN, out=str(tmp_path / "d"))
    with pytest.raises(ConfigError, match="two SAEs would write the same directory"):
        plan(base, parse_hooks("layers.1.residual,layers.1.residual"), None, None)
    with pytest.raises(ConfigError, match="unknown hook 'layers.9.residual'"):
        train_many(plan(base, parse_hooks("layers.1.residual,layers.9.residual"), None, None))
    with pytest.raises(ConfigError, match="an activation cache holds one hook"):
        cfg = TrainConfig(**{**base.to_dict(), "cache": str(tmp_path / "c")})
        train_many(plan(cfg, parse_hooks("layers.1.residual,layers.2.residual"), None, None))


def test_a_causal_lm_drops_position_zero_and_sinks_by_default(tmp_path):
    model = tiny_gpt2_dir(tmp_path / "gpt2")
    cfg = TrainConfig(
        **{**RUN, "d_sae": 64, "k": 4, "steps": 3},
        model=str(model), hook="layers.1.residual", out=str(tmp_path / "r"), log_every=1,
    )  # fmt: skip
    result = Trainer(cfg).run()
    assert result.sae.cfg.metadata["token_filter"] == {"drop_first": True, "max_norm_ratio": 10.0}
    last = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("tokens_kept", "dropped_first_position", "dropped_norm_outliers"):
        assert key in last
    off = TrainConfig(**{**cfg.to_dict(), "drop_first": "off", "max_norm_ratio": 0.0})
    assert Trainer(off).source.token_filter == {"drop_first": False, "max_norm_ratio": None}


def test_a_buffer_smaller_than_two_batches_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="buffer_tokens=200 is smaller than two batches"):
        Trainer(TrainConfig(**{**RUN, "buffer_tokens": 200}, out=str(tmp_path / "r")))

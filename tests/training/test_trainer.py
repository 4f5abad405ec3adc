"""The trainer end to end on the embedded default (small budgets), resume, bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch

import sae_fast
from sae_fast import ConfigError, SparseAutoencoder, TrainConfig
from sae_fast.ops import reference as ref
from sae_fast.training.trainer import Trainer, collect
from tests.helpers import SMALL_TRAIN

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BASE = dict(SMALL_TRAIN, steps=30, d_sae=768, log_every=10, dead_after_tokens=2000)


@pytest.fixture(scope="module")
def data():
    """Activations of the embedded model at layers.3.residual, collected once."""
    return collect(TrainConfig(**BASE))


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "relu", "jumprelu"])
def test_trains_and_saves_every_architecture(tmp_path, data, activation):
    cfg = TrainConfig(**{**BASE, "activation": activation, "out": str(tmp_path / "run")})
    result = Trainer(cfg, data).run()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["step"] for m in lines] == [10, 20, 30]
    assert lines[-1]["fvu"] < lines[0]["fvu"] and lines[-1]["tokens_per_s"] > 0
    loaded = SparseAutoencoder.load(tmp_path / "run" / "sae")
    assert (loaded.d_in, loaded.d_sae, loaded.activation) == (384, 768, activation)
    assert loaded.cfg.hook_name == "layers.3.residual" and loaded.cfg.model_name == "embedded"
    x = data[0].acts[:64]
    loaded.eval()
    result.sae.eval()
    assert torch.equal(loaded(x).reconstruction, result.sae(x).reconstruction)
    if activation == "batchtopk":
        assert loaded.batchtopk_threshold is not None and loaded.batchtopk_threshold > 0


def test_normalisation_is_folded_into_the_saved_weights(tmp_path, data):
    cfg = TrainConfig(**{**BASE, "out": str(tmp_path / "run"), "steps": 5})
    trainer = Trainer(cfg, data)
    trainer.run()
    assert trainer.scale != 1.0
    x = data[0].acts[:32]
    raw = trainer.final_sae()(x).reconstruction  # folded SAE on raw activations
    scaled = trainer.sae(x * trainer.scale).reconstruction / trainer.scale
    torch.testing.assert_close(raw, scaled, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_resume_reaches_bitwise_the_same_weights(tmp_path, data, activation):
    cfg = dict(BASE, activation=activation)
    full = Trainer(TrainConfig(**cfg, out=str(tmp_path / "a")), data).run().sae
    cut = Trainer(TrainConfig(**cfg, out=str(tmp_path / "b")), data)
    for _ in range(12):
        cut.train_step()
    ckpt = cut.save_checkpoint()
    resumed = Trainer(TrainConfig(**cfg, out=str(tmp_path / "b"), resume=str(ckpt)), data).run().sae
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_dead_latents_are_tracked_and_auxk_engages(tmp_path, data):
    cfg = TrainConfig(
        **{
            **BASE,
            "out": str(tmp_path / "run"),
            "d_sae": 3072,
            "steps": 12,
            "dead_after_tokens": 1024,
        }
    )
    trainer = Trainer(cfg, data)
    logs = [trainer.train_step() for _ in range(12)]
    assert logs[-1]["dead_pct"] > 0  # 3072 latents, k=8, 3000 tokens: many never fire
    assert logs[-1]["auxk"] > 0
    fired_now = trainer.since_fired == 0
    assert fired_now.any() and (trainer.since_fired[~fired_now] >= 256).all()


def test_checkpoints_keep_the_two_newest(tmp_path, data):
    cfg = TrainConfig(**{**BASE, "out": str(tmp_path / "run"), "checkpoint_every": 5, "steps": 20})
    Trainer(cfg, data).run()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step_00000015", "step_00000020"]


def test_resume_with_another_width_is_refused(tmp_path, data):
    t = Trainer(TrainConfig(**{**BASE, "out": str(tmp_path / "a"), "steps": 2}), data)
    t.run()
    ckpt = t.save_checkpoint()
    with pytest.raises(ConfigError, match="topk SAE 384->768, but this run builds"):
        Trainer(
            TrainConfig(**{**BASE, "out": str(tmp_path / "b"), "d_sae": 1536, "resume": str(ckpt)}),
            data,
        )


def test_unwritable_output_dir(tmp_path, data):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        Trainer(TrainConfig(**{**BASE, "out": str(tmp_path / "file" / "run")}), data)


def test_training_device(tmp_path, data):
    cfg = TrainConfig(**{**BASE, "out": str(tmp_path / "run"), "device": "cpu"})
    assert Trainer(cfg, data).sae.W_enc.device.type == "cpu"
    for name, match in (("tpu:0", "not a device name|trains on cpu or cuda"), ("meta", "trains")):
        with pytest.raises(ConfigError, match=match):
            Trainer(TrainConfig(**{**cfg.to_dict(), "device": name}), data)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            Trainer(TrainConfig(**{**cfg.to_dict(), "device": "cuda"}), data)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"activation": "gelu"}, "unknown activation"),
        ({"k": 0}, "k must be >= 1"),
        ({"lr": -1.0}, "lr must be a number >= 0"),
        ({"decay_start": 2.0}, "decay_start must be in"),
        ({"steps": 1.5}, "steps must be an integer"),
    ],
)
def test_bad_train_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_public_train_function_with_cache_and_bad_inputs(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in ref.__doc__.split("\n\n")))
    cfg = TrainConfig(
        **{
            **BASE,
            "corpus": str(corpus),
            "max_tokens": 400,
            "steps": 3,
            "cache": str(tmp_path / "cache"),
            "out": str(tmp_path / "run"),
        }
    )
    result = sae_fast.train(cfg)
    assert (tmp_path / "cache" / "manifest.json").exists() and result.sae_dir.exists()
    t = result.timings  # where the time went: collection vs SAE steps
    assert t["collect_seconds"] > 0 and t["collect_tokens_per_s"] > 0
    assert t["train_seconds"] > 0
    assert t["train_tokens_per_s"] == pytest.approx(3 * 256 / t["train_seconds"], rel=1e-6)
    saved = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert saved == {**t, "steps": 3, "batch_size": 256}
    again = sae_fast.train(cfg)  # reads the cache: the same batches, the same SAE
    assert result.activations is None  # read out of core, never all in memory
    for name, t in result.sae.state_dict().items():
        assert torch.equal(again.sae.state_dict()[name], t), name
    with pytest.raises(ConfigError, match="does not match this run"):
        sae_fast.train(TrainConfig(**{**cfg.to_dict(), "hook": "layers.2.residual"}))
    with pytest.raises(ConfigError, match="unknown hook 'layers.9.residual'"):
        sae_fast.train(TrainConfig(**{**cfg.to_dict(), "hook": "layers.9.residual", "cache": None}))
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ConfigError, match="is empty"):
        sae_fast.train(
            TrainConfig(**{**cfg.to_dict(), "corpus": str(tmp_path / "blank.txt"), "cache": None})
        )
    with pytest.raises(ConfigError, match="cannot load model"):
        sae_fast.train(
            TrainConfig(**{**cfg.to_dict(), "model": str(tmp_path / "no_model"), "cache": None})
        )


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_bf16_autocast_trains(tmp_path, data, activation):
    cfg = TrainConfig(
        **{**BASE, "activation": activation, "autocast_bf16": True, "out": str(tmp_path / "run")}
    )
    result = Trainer(cfg, data).run()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in lines)
    assert lines[-1]["fvu"] < lines[0]["fvu"]
    assert result.sae.W_enc.dtype == torch.float32  # autocast: fp32 master weights


def test_resume_with_another_d_in_is_refused(tmp_path, data):
    from sae_fast.data.activations import ActivationBatch

    small = ActivationBatch(
        torch.randn(500, 16),
        torch.zeros(500, dtype=torch.long),
        torch.zeros(500, dtype=torch.long),
        torch.arange(500),
    )
    t = Trainer(TrainConfig(**{**BASE, "out": str(tmp_path / "a"), "steps": 2}), (small, [], None))
    t.run()
    ckpt = t.save_checkpoint()
    with pytest.raises(
        ConfigError,
        match=r"topk SAE 16->768, but this run builds topk "
        r"384->768 \(d_in comes from the model and hook\)",
    ):
        Trainer(TrainConfig(**{**BASE, "out": str(tmp_path / "b"), "resume": str(ckpt)}), data)

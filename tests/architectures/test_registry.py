"""The architecture registry and interface: names resolve (SAELens's too), each
architecture's state lives in the state_dict, nothing outside `sae_fast/architectures/`
branches on an architecture's name, and a new architecture needs only its class and a
registry entry to build, run, save and load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from sae_fast import SparseAutoencoder, architectures
from sae_fast.architectures.topk import TopK
from sae_fast.config import SAEConfig
from sae_fast.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2] / "sae_fast"


def test_registry_names_and_saelens_aliases():
    assert architectures.names()[:4] == ("topk", "batchtopk", "relu", "jumprelu")
    assert architectures.get("standard") is architectures.get("relu")  # SAELens's name
    for name in architectures.names():
        arch = architectures.get(name)
        assert arch.name == name and architectures.get(arch.saelens_name) is arch
    with pytest.raises(ConfigError, match="unknown activation 'gelu'.*topk"):
        architectures.get("gelu")
    assert SAEConfig(8, 16, activation="standard").activation == "relu"


def test_each_architecture_validates_its_own_fields():
    with pytest.raises(ConfigError, match="needs k"):
        SAEConfig(8, 16, activation="topk", k=None)
    with pytest.raises(ConfigError, match="k must be <= d_sae"):
        SAEConfig(8, 16, activation="batchtopk", k=17)
    assert SAEConfig(8, 16, activation="jumprelu", k=5).k is None  # not one of its fields


def test_batchtopk_threshold_is_a_buffer_in_the_state_dict(tmp_path):
    sae = SparseAutoencoder(8, 32, activation="batchtopk", k=3)
    assert sae.batchtopk_threshold is None and "topk_threshold" in sae.state_dict()
    sae.batchtopk_threshold = 0.25
    other = SparseAutoencoder(8, 32, activation="batchtopk", k=3)
    other.load_state_dict(sae.state_dict())
    assert other.batchtopk_threshold == 0.25
    back = SparseAutoencoder.load(sae.save(tmp_path / "bt"))
    assert back.batchtopk_threshold == 0.25
    x = torch.randn(5, 8)
    back.eval()  # the threshold, not the batch, decides: one row alone gives the same code
    alone, batched = back.encode(x[:1]), back.encode(x)[:1]
    assert torch.equal(alone != 0, batched != 0) and torch.allclose(alone, batched, atol=1e-6)
    assert (alone[alone != 0] > 0.25).all()
    topk = SparseAutoencoder(8, 32, activation="topk", k=3)
    assert topk.batchtopk_threshold is None and "topk_threshold" not in topk.state_dict()
    with pytest.raises(ConfigError, match="no batchtopk_threshold"):
        topk.batchtopk_threshold = 1.0


NAME_BRANCH = re.compile(r"""(activation|arch\.name)\s*(==|!=|in)\s*[("']""")


def test_no_architecture_name_branch_outside_the_architectures():
    """`activation == "..."` / `activation in ("...")` only in sae_fast/architectures/."""
    hits = []
    for path in ROOT.rglob("*.py"):
        if "architectures" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if NAME_BRANCH.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


class _ShiftedTopK(TopK):
    """A toy architecture: TopK with a different name, for the registry test below."""

    name: ClassVar[str] = "shifted_topk"
    saelens_name: ClassVar[str] = "shifted_topk"


def test_a_new_architecture_needs_only_its_class_and_a_registry_entry(monkeypatch, tmp_path):
    monkeypatch.setitem(architectures.REGISTRY, "shifted_topk", _ShiftedTopK)
    monkeypatch.setitem(architectures._BY_ALIAS, "shifted_topk", _ShiftedTopK)
    sae = SparseAutoencoder(8, 32, activation="shifted_topk", k=4, backend="torch")
    assert sae.arch is _ShiftedTopK
    x = torch.randn(6, 8)
    out = sae(x)
    assert out.values.shape == (6, 4) and out.l0() <= 4
    back = SparseAutoencoder.load(sae.save(tmp_path / "s"), backend="torch")
    assert back.arch is _ShiftedTopK and torch.equal(back(x).reconstruction, out.reconstruction)


@pytest.mark.parametrize("name", architectures.names())
def test_fold_input_scale_keeps_every_architectures_code(name):
    """An SAE trained on s * x, folded, reads x with the same code and recon / s."""
    torch.manual_seed(1)
    options = {"matryoshka_widths": [8]} if name == "matryoshka_batchtopk" else {}
    sae = SparseAutoencoder(6, 24, activation=name, k=3, backend="torch", dtype=torch.float64,
                            options=options)  # fmt: skip
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, s = torch.randn(5, 6, dtype=torch.float64), 3.5
    want = sae(s * x)
    sae.fold_input_scale(s)
    got = sae(x)
    torch.testing.assert_close(got.dense_acts(), want.dense_acts())
    torch.testing.assert_close(got.reconstruction, want.reconstruction / s)


def test_training_settings_live_with_their_architectures():
    import dataclasses

    from sae_fast import TrainConfig, architectures
    from sae_fast.config import _RunSettings

    common = {f.name for f in dataclasses.fields(_RunSettings)}
    owned = [f.name for c in architectures.train_configs() for f in dataclasses.fields(c)]
    assert len(owned) == len(set(owned))  # each setting has one owner
    assert {f.name for f in dataclasses.fields(TrainConfig)} == common | set(owned)
    assert not common & set(owned)
    for arch in architectures.REGISTRY.values():  # what an architecture reads, it declares
        for settings in arch.train_configs:
            assert settings in architectures.train_configs()
    assert {"l1_coefficient", "l1_warmup_steps"} == {
        f.name for c in architectures.get("gated").train_configs for f in dataclasses.fields(c)
    }
    with pytest.raises(ConfigError, match="l0_coefficient must be a number >= 0"):
        TrainConfig(l0_coefficient=-1.0)

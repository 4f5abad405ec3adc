"""Native (SAELens) format: round trip, key/shape contract, SAELens-written dirs, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sae_fast import ConfigError, FormatError, SparseAutoencoder
from sae_fast.formats import saelens as fmt
from tests.helpers import assert_close

ARCH = {"topk": "topk", "batchtopk": "batchtopk", "relu": "standard", "jumprelu": "jumprelu"}


def _trained_like(activation: str, dtype=torch.float32) -> SparseAutoencoder:
    torch.manual_seed(1)
    sae = SparseAutoencoder(
        7,
        13,
        activation=activation,
        k=3,
        dtype=dtype,
        model_name="m",
        hook_name="layers.1.residual",
        metadata={"context_size": 128},
    )
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return sae


@pytest.mark.parametrize("activation", list(ARCH))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_every_architecture(tmp_path, activation, dtype):
    sae = _trained_like(activation, dtype)
    if activation == "batchtopk":
        sae.batchtopk_threshold = 0.25
    sae.save(tmp_path / "sae")
    back = SparseAutoencoder.load(tmp_path / "sae")
    assert back.cfg == sae.cfg and back.dtype == dtype
    assert back.batchtopk_threshold == sae.batchtopk_threshold
    for (n, p), (n2, p2) in zip(sae.named_parameters(), back.named_parameters(), strict=True):
        assert n == n2 and torch.equal(p, p2), n
    x = torch.randn(4, 7).to(dtype)
    sae.eval()
    back.eval()
    assert torch.equal(sae(x).reconstruction, back(x).reconstruction)


@pytest.mark.parametrize("activation", list(ARCH))
def test_saelens_key_and_shape_contract(tmp_path, activation):
    _trained_like(activation).save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == ARCH[activation]
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (7, 13, "float32")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    # SAELens's TransformerLens name (HF activations: no processing), and ours
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["metadata"]["model_from_pretrained_kwargs"] == {"center_writing_weights": False}
    assert cfg["sae_fast"]["hook_name"] == "layers.1.residual"
    assert cfg["metadata"]["context_size"] == 128
    assert cfg.get("k") == (3 if activation in ("topk", "batchtopk") else None)
    with safe_open(str(tmp_path / "sae" / "sae_weights.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    want = {"W_enc": (7, 13), "b_enc": (13,), "W_dec": (13, 7), "b_dec": (7,)}
    if activation == "jumprelu":
        want["threshold"] = (13,)
    assert shapes == want


def _write_saelens_dir(path, cfg: dict, tensors: dict) -> None:
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))


def _saelens_params(d_in=6, d_sae=10, seed=0, jumprelu=False):
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }
    if jumprelu:
        t["threshold"] = torch.rand(d_sae, generator=g) * 0.5
    return t


def _saelens_forward(t, x, arch, k=None, apply_b_dec=True):
    """SAELens' inference math, written from its documented behaviour."""
    sae_in = x - t["b_dec"] * apply_b_dec
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if arch == "standard":
        acts = torch.relu(pre)
    elif arch == "jumprelu":
        acts = torch.relu(pre) * (pre > t["threshold"])
    else:
        top = torch.topk(pre, k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return acts @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize(
    "arch,apply_b_dec",
    [("standard", True), ("standard", False), ("topk", True), ("jumprelu", False)],
)
def test_loads_a_saelens_v6_directory_with_same_outputs(tmp_path, arch, apply_b_dec):
    t = _saelens_params(jumprelu=arch == "jumprelu")
    cfg = {
        "architecture": arch,
        "d_in": 6,
        "d_sae": 10,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": "gpt2",
            "hook_name": "blocks.3.hook_resid_post",
            "sae_lens_version": "6.12.1",
        },
    }
    if arch == "topk":
        cfg["k"] = 4
    _write_saelens_dir(tmp_path / "d", cfg, t)
    sae = SparseAutoencoder.load(tmp_path / "d", dtype=torch.float64)
    # SAELens's TransformerLens name read at sae_fast's hook, and kept for saving
    assert sae.cfg.hook_name == "layers.3.residual" and sae.cfg.model_name == "gpt2"
    assert sae.cfg.metadata["transformer_lens_hook_name"] == "blocks.3.hook_resid_post"
    x = torch.randn(9, 6)
    want = _saelens_forward({k: v.double() for k, v in t.items()}, x.double(), arch, 4, apply_b_dec)
    assert_close(sae(x.double()).reconstruction, want, f"{arch} recon", rtol=1e-9, atol=1e-9)


def test_loads_older_saelens_topk_config(tmp_path):
    t = _saelens_params()
    cfg = {
        "architecture": "standard",
        "d_in": 6,
        "d_sae": 10,
        "dtype": "torch.float32",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3},
        "hook_name": "blocks.0.hook_resid_pre",
        "apply_b_dec_to_input": True,
    }
    _write_saelens_dir(tmp_path / "d", cfg, t)
    sae = SparseAutoencoder.load(tmp_path / "d")
    assert sae.activation == "topk" and sae.k == 3
    assert sae.cfg.hook_name == "embeddings"
    x = torch.randn(5, 6)
    assert_close(
        sae(x).reconstruction, _saelens_forward(t, x, "topk", 3), "recon", rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------- bad files


def _good_dir(tmp_path):
    d = tmp_path / "good"
    _trained_like("topk").save(d)
    return d


def _edit_cfg(d, **changes):
    cfg = json.loads((d / "cfg.json").read_text())
    for k, v in changes.items():
        if v is ...:
            del cfg[k]
        else:
            cfg[k] = v
    (d / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "changes,err,match",
    [
        ({"d_in": ...}, ConfigError, "missing the key 'd_in'"),
        ({"d_sae": "13"}, ConfigError, "'d_sae' must be int, got str"),
        ({"d_in": True}, ConfigError, "'d_in' must be int, got bool"),
        ({"k": "3"}, ConfigError, "'k' must be int/float"),
        ({"k": 2.5}, ConfigError, "fractional"),
        ({"k": 99}, ConfigError, "k must be <= d_sae"),
        ({"architecture": "temporal"}, FormatError, "architecture 'temporal' is not supported"),
        ({"architecture": "transcoder"}, ConfigError, "missing the key 'd_out'"),
        (
            {"architecture": "transcoder", "d_out": 8, "apply_b_dec_to_input": True},
            FormatError,
            "a transcoder cannot have apply_b_dec_to_input=true",
        ),
        ({"dtype": "int8"}, ConfigError, "unknown dtype"),
        ({"apply_b_dec_to_input": "yes"}, ConfigError, "must be bool"),
        ({"normalize_activations": "rms"}, FormatError, "normalize_activations='rms' is not a"),
        (
            {"normalize_activations": "expected_average_only_in"},
            FormatError,
            "expected_average_only_in' scales the input by a factor this directory does not",
        ),
        (
            {"normalize_activations": "covariance_whitening"},
            FormatError,
            "covariance_whitening' needs the whitening statistics",
        ),
        ({"reshape_activations": "hook_z"}, FormatError, "reshape_activations='hook_z'"),
        ({"rescale_acts_by_decoder_norm": "yes"}, ConfigError, "must be bool"),
        ({"metadata": [1]}, ConfigError, "'metadata' must be an object"),
        ({"d_in": 8}, FormatError, r"W_dec has shape \(13, 7\), expected \(13, 8\)"),
    ],
)
def test_bad_cfg_json(tmp_path, changes, err, match):
    d = _good_dir(tmp_path)
    _edit_cfg(d, **changes)
    with pytest.raises(err, match=match):
        SparseAutoencoder.load(d)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SparseAutoencoder.load(tmp_path / "nope")
    d = _good_dir(tmp_path)
    (d / "cfg.json").write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        SparseAutoencoder.load(d)
    (d / "cfg.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match="JSON object"):
        SparseAutoencoder.load(d)

    d = _good_dir(tmp_path / "b")
    w = d / "sae_weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="truncated or corrupt"):
        SparseAutoencoder.load(d)
    w.write_bytes(b"\x00" * 3)
    with pytest.raises(FormatError, match="truncated or corrupt"):
        SparseAutoencoder.load(d)
    w.unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors is missing"):
        fmt.load_saelens(d)

    d = _good_dir(tmp_path / "c")
    t = {"W_enc": torch.zeros(7, 13), "b_enc": torch.zeros(13), "W_dec": torch.zeros(13, 7)}
    save_file(t, str(d / "sae_weights.safetensors"))
    with pytest.raises(FormatError, match=r"missing tensors \['b_dec'\]"):
        SparseAutoencoder.load(d)
    save_file(
        {**t, "b_dec": torch.zeros(7), "W_skip": torch.zeros(7, 7)},
        str(d / "sae_weights.safetensors"),
    )
    with pytest.raises(FormatError, match=r"unexpected tensors \['W_skip'\]"):
        SparseAutoencoder.load(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="holds no SAE"):
        SparseAutoencoder.load(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        SparseAutoencoder.load(tmp_path / "file")


def test_save_is_atomic(tmp_path, monkeypatch):
    sae = _trained_like("topk")
    target = tmp_path / "sae"
    sae.save(target)
    (target / "sparsity.safetensors").write_bytes(b"keep me")
    before = (target / "sae_weights.safetensors").read_bytes()

    def crash(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fmt, "write_json", crash)
    with torch.no_grad():
        sae.W_enc.mul_(2)
    with pytest.raises(OSError, match="No space left"):
        sae.save(target)
    # The old SAE is intact and no temp dir is left behind.
    assert (target / "sae_weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    monkeypatch.undo()
    with pytest.raises(OSError):  # a crash on a fresh path leaves nothing at all
        monkeypatch.setattr(fmt, "write_json", crash)
        sae.save(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    monkeypatch.undo()
    sae.save(target)  # a successful re-save replaces weights and keeps other files
    assert (target / "sparsity.safetensors").read_bytes() == b"keep me"
    assert torch.equal(SparseAutoencoder.load(target).W_enc, sae.W_enc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_save_into_unwritable_or_file_path(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        _trained_like("relu").save(tmp_path / "f")
    with pytest.raises(PermissionError, match="cannot write under"):
        _trained_like("relu").save(tmp_path / "f" / "sub")

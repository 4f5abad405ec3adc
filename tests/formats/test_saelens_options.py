"""SAELens cfg options beyond the weights, without SAELens (test_saelens_interop checks them
against SAELens itself): the runtime input normalisations in every backend, the folds
(decoder norms, the scaling factor), and the refusals, each naming what is wrong."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from sae_fast import SparseAutoencoder
from sae_fast.errors import ConfigError, FormatError
from sae_fast.formats.saelens import load_saelens
from sae_fast.input_norm import denormalise, normalise, output_scale
from sae_fast.ops.dispatch import available_backends
from tests.helpers import assert_close

D_IN, D_SAE = 6, 12


def _rand_sae(activation="topk", k=3, seed=0, **kw) -> SparseAutoencoder:
    sae = SparseAutoencoder(
        D_IN, D_SAE, activation, k=k if activation in ("topk", "batchtopk") else None,
        backend="torch", **kw,
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if name == "threshold" else 1))
            if name == "threshold":
                p.abs_()
    return sae


def _x(rows=7, seed=1) -> torch.Tensor:
    return torch.randn(rows, D_IN, generator=torch.Generator().manual_seed(seed)) * 3 + 1


def test_each_normalisation_is_the_formula_and_undoes_itself():
    x = _x().double()
    n, st = normalise(x, ("constant_norm_rescale",))
    assert_close(n, x * math.sqrt(D_IN) / x.norm(dim=-1, keepdim=True), "cnr", rtol=1e-12)
    mu, sd = x.mean(-1, keepdim=True), torch.std(x, dim=-1, keepdim=True)  # unbiased, as SAELens
    n, st = normalise(x, ("layer_norm",))
    assert_close(n, (x - mu) / (sd + 1e-5), "ln", rtol=1e-12)
    assert_close(denormalise(n, st), (n * sd + mu), "ln out", rtol=1e-12)
    assert_close(output_scale(st), sd, "ln scale", rtol=1e-12)
    n, st = normalise(x, ("center", "constant_norm_rescale"))
    c = x - mu
    assert_close(n, c * math.sqrt(D_IN) / c.norm(dim=-1, keepdim=True), "center+cnr", rtol=1e-12)
    assert_close(denormalise(n, st), x, "center+cnr undone", rtol=1e-12)
    assert output_scale(normalise(x, ("center",))[1]) is None
    zero, _ = normalise(torch.zeros(2, D_IN), ("constant_norm_rescale",))
    assert torch.isfinite(zero).all()  # a zero row stays zero, not NaN


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu", "gated"])
@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm", "center"])
def test_runtime_normalisation_in_every_backend(activation, norm):
    x = _x()
    want = _rand_sae(activation, input_norm=(norm,))
    xn, st = normalise(x, (norm,))
    plain = _rand_sae(activation)  # same weights (same seed), no normalisation
    with torch.no_grad():
        acts = plain.encode(xn)
        assert_close(want.encode(x), acts, f"{norm} encode", rtol=1e-6, atol=1e-6)
        recon = denormalise(plain.decode(acts), st)
        assert_close(want(x).reconstruction, recon, f"{norm} forward", rtol=1e-5, atol=1e-5)
        assert_close(want.decode(acts, like=x), recon, f"{norm} decode", rtol=1e-5, atol=1e-5)
        values, indices = want.encode_sparse(x)
        assert_close(want.decode_sparse(values, indices, like=x), recon, "sparse", atol=1e-5)
        for backend in available_backends("cpu", torch.float32):
            want.backend = backend
            got = want(x).reconstruction
            assert_close(got, recon, f"{norm} {backend}", rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=f"normalises its input at run time \\({norm}\\)"):
        want.decode(acts)
    with pytest.raises(ValueError, match="rows"):
        want.decode(acts, like=x[:2])


def test_transcoder_normalises_its_input_only_and_refuses_centring():
    tc = _rand_sae("relu", transcoder=True, d_out=4, input_norm=("layer_norm",))
    plain = _rand_sae("relu", transcoder=True, d_out=4)
    x = _x()
    with torch.no_grad():
        want = plain(normalise(x, ("layer_norm",))[0]).reconstruction  # output not mapped back
        assert_close(tc(x).reconstruction, want, "transcoder", rtol=1e-6, atol=1e-6)
        assert_close(tc.decode(tc.encode(x)), want, "transcoder decode", rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="'center'.*is for SAEs"):
        _rand_sae("relu", transcoder=True, d_out=4, input_norm=("center",))
    with pytest.raises(ConfigError, match="not one of"):
        _rand_sae("relu", input_norm=("rms",))


def test_save_writes_the_mode_and_loads_it_back(tmp_path):
    sae = _rand_sae("jumprelu", input_norm=("layer_norm",))
    path = sae.save(tmp_path / "ln")
    assert json.loads((path / "cfg.json").read_text())["normalize_activations"] == "layer_norm"
    back = SparseAutoencoder.load(path, backend="torch")
    assert back.cfg.input_norm == ("layer_norm",)
    x = _x()
    with torch.no_grad():
        assert torch.equal(back(x).reconstruction, sae(x).reconstruction)
    two = _rand_sae("relu", input_norm=("layer_norm", "constant_norm_rescale"))
    with pytest.raises(ConfigError, match="one input normalisation"):
        two.save(tmp_path / "two")
    with pytest.raises(ConfigError, match="normalised away"):
        sae.fold_input_scale(2.0)


def _saelens_dir(path, cfg: dict, tensors: dict) -> None:
    path.mkdir(parents=True)
    base = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.1.hook_resid_pre"},
    }
    (path / "cfg.json").write_text(json.dumps({**base, **cfg}))
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(path / "sae_weights.safetensors")
    )


def _tensors(seed=3, zero_row=False) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g),
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) * 3,
        "b_dec": torch.randn(D_IN, generator=g),
    }
    if zero_row:
        t["W_dec"][5] = 0
    return t


def test_decoder_norm_rescaling_follows_saelens_semantics(tmp_path):
    t = _tensors(zero_row=True)
    _saelens_dir(tmp_path / "r", {"architecture": "topk", "k": 3,
                                  "rescale_acts_by_decoder_norm": True}, t)  # fmt: skip
    sae = load_saelens(tmp_path / "r", dtype=torch.float64, backend="torch")
    x = _x().double()
    t = {k: v.double() for k, v in t.items()}
    n = t["W_dec"].norm(dim=1)
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * n  # SAELens's TopKSAE.encode
    top = pre.topk(3, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    with torch.no_grad():
        assert_close(sae.encode(x), acts, "rescaled codes", rtol=1e-9, atol=1e-9)
        safe = torch.where(n > 0, 1 / n, torch.zeros_like(n))  # SAELens: 0 * inf = NaN there
        recon = (acts * safe) @ t["W_dec"] + t["b_dec"]
        assert_close(sae(x).reconstruction, recon, "rescaled recon", rtol=1e-9, atol=1e-9)
        assert torch.isfinite(sae.W_dec).all()
    # an architecture whose SAELens class has no such field ignores it, as SAELens does
    _saelens_dir(tmp_path / "s", {"architecture": "standard",
                                  "rescale_acts_by_decoder_norm": True}, _tensors())  # fmt: skip
    std = load_saelens(tmp_path / "s", backend="torch")
    assert torch.equal(std.W_dec, _tensors()["W_dec"])


def test_scaling_factor_from_the_registry_or_the_checkpoint(tmp_path):
    t = _tensors()
    cfg = {"architecture": "standard", "normalize_activations": "expected_average_only_in"}
    _saelens_dir(tmp_path / "a", cfg, t)
    with pytest.raises(FormatError, match="expected_average_only_in.*norm_scaling_factor="):
        load_saelens(tmp_path / "a")
    given = load_saelens(tmp_path / "a", norm_scaling_factor=0.5, backend="torch")
    (tmp_path / "a" / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.5}))
    ckpt = load_saelens(tmp_path / "a", backend="torch")
    x = _x()
    with torch.no_grad():
        pre = torch.relu((0.5 * x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])  # trained on 0.5 x
        assert_close(given.encode(x), pre, "scaled codes", rtol=1e-5, atol=1e-5)
        assert_close(given(x).reconstruction, (pre @ t["W_dec"] + t["b_dec"]) / 0.5, "unscaled")
        assert torch.equal(ckpt.encode(x), given.encode(x))
    with pytest.raises(FormatError, match="positive number"):
        load_saelens(tmp_path / "a", norm_scaling_factor=-1.0)


def test_older_files_and_refusals(tmp_path):
    t = _tensors()
    pre6 = {
        "architecture": "standard",
        "hook_point": "blocks.2.hook_resid_pre",
        "metadata": None,
        "model_name": "gpt2",
        "model_from_pretrained_kwargs": {"center_writing_weights": True},
    }
    _saelens_dir(tmp_path / "old", {}, {**t, "scaling_factor": torch.ones(D_SAE)})
    raw = json.loads((tmp_path / "old" / "cfg.json").read_text())
    raw.pop("metadata")
    raw.update({k: v for k, v in pre6.items() if v is not None})
    (tmp_path / "old" / "cfg.json").write_text(json.dumps(raw))
    sae = load_saelens(tmp_path / "old")
    assert sae.cfg.model_name == "gpt2"
    assert sae.cfg.metadata["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    raw["normalize_activations"] = True  # pre-6.0: the April update's scaling
    (tmp_path / "old" / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(FormatError, match="expected_average_only_in"):
        load_saelens(tmp_path / "old")
    _saelens_dir(tmp_path / "ft", {"architecture": "standard"},
                 {**t, "scaling_factor": torch.full((D_SAE,), 2.0)})  # fmt: skip
    with pytest.raises(FormatError, match="finetuning scaling_factor"):
        load_saelens(tmp_path / "ft")
    wh = {
        "architecture": "jumprelu_transcoder",
        "d_out": 4,
        "apply_b_dec_to_input": False,
        "normalize_activations": "covariance_whitening",
    }
    _saelens_dir(tmp_path / "tw", wh, {})
    with pytest.raises(FormatError, match="covariance_whitening' on a transcoder"):
        load_saelens(tmp_path / "tw")


def test_registry_overrides_win_over_what_sae_fast_added(tmp_path):
    path = _rand_sae("relu", hook_name="layers.1.residual").save(tmp_path / "ours")
    assert load_saelens(path).cfg.metadata == {}  # our no-processing default dropped again
    kwargs = {"center_writing_weights": True}
    sae = load_saelens(path, cfg_overrides={"model_from_pretrained_kwargs": kwargs})
    assert sae.cfg.metadata["model_from_pretrained_kwargs"] == kwargs

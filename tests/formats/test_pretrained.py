"""Pretrained SAEs: SAELens registry releases and plain Hugging Face repos, loaded offline
from a Hugging Face cache laid out in a temp dir as huggingface_hub lays out a download
(blobs, snapshots/<commit> symlinks, refs/main), through the API, `load_any` and the CLI."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save, save_file

from sae_fast import ConfigError, FormatError, SparseAutoencoder
from sae_fast.analysis.labels import Labels
from sae_fast.cli import main
from sae_fast.eval.metrics import load_sparsity, save_sparsity
from sae_fast.formats import pretrained
from sae_fast.formats.transformer_lens import activation_transform

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "testorg/test-saes"
REGISTRY = f"""
test-res:
  repo_id: {REPO}
  model: embedded
  conversion_func: null
  config_overrides:
    dataset_path: testorg/test-corpus
    model_from_pretrained_kwargs:
      center_writing_weights: false
  saes:
  - id: layers.3.residual
    path: res/layers.3
    neuronpedia: embedded/3-res-test
    norm_scaling_factor: 2.5
  - id: layer_1/width_16k/average_l0_82
    path: deep/l1/16k
  - id: 7
    path: 7
test-sparsify:
  repo_id: testorg/sparsify-saes
  conversion_func: sparsify
  saes:
  - id: layers.3
    path: layers.3
    neuronpedia: embedded/3-sparsify
test-dl:
  repo_id: testorg/dl-saes
  conversion_func: dictionary_learning_1
  saes:
  - id: blocks.3.hook_resid_post__trainer_0
    path: resid_post_layer_3/trainer_0
test-llama:
  repo_id: fnlp/Llama-Scope
  conversion_func: llama_scope
  saes:
  - id: l0r_8x
    path: L0R-8x
test-gemma:
  repo_id: google/gemma-scope-2b-pt-res
  conversion_func: gemma_2
  saes:
  - id: layer_1/width_16k/average_l0_105
    path: layer_1/width_16k/average_l0_105
  - id: embedding/width_4k/average_l0_6
    path: embedding/width_4k/average_l0_6
test-gemma3:
  repo_id: google/gemma-scope-2-270m-pt
  conversion_func: gemma_3
  saes:
  - id: resid_post/layer_2_width_16k_l0_small
    path: resid_post/layer_2_width_16k_l0_small
  - id: mlp_out/layer_2_width_16k_l0_small
    path: mlp_out/layer_2_width_16k_l0_small
"""


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline, and the test registry; returns the cache."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    registry = tmp_path / "pretrained_saes.yaml"
    registry.write_text(REGISTRY)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv(pretrained.REGISTRY_ENV, str(registry))
    monkeypatch.setattr(pretrained, "_FETCHED", {})
    return cache


def cache_files(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Put `files` (repo path -> bytes) into `cache` as huggingface_hub stores a download:
    blobs/<sha256>, snapshots/<commit>/<path> symlinked to them, refs/main = the commit.
    Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)  # no newline: huggingface_hub reads it raw
    return snapshot


def cache_dir_files(cache: Path, repo_id: str, folder: str, local: Path) -> Path:
    """Cache every file of directory `local` under `folder` of `repo_id`; the folder."""
    prefix = f"{folder}/" if folder else ""
    files = {prefix + p.name: p.read_bytes() for p in sorted(local.iterdir())}
    return cache_files(cache, repo_id, files) / folder


def make_sae(d_in: int = 16, d_sae: int = 32, seed: int = 0, **kw) -> SparseAutoencoder:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(d_in, d_sae, "topk", k=4, **kw)
    with torch.no_grad():  # biases off zero, so a dropped or swapped one shows
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def cache_sae(cache, tmp_path, sae, repo_id, folder, name="saved") -> Path:
    saved = sae.save(tmp_path / name)
    return cache_dir_files(cache, repo_id, folder, Path(saved))


def same_outputs(a: SparseAutoencoder, b: SparseAutoencoder, seed: int = 1) -> bool:
    x = torch.randn(9, a.d_in, generator=torch.Generator().manual_seed(seed))
    codes = a.encode(x)
    return torch.equal(codes, b.encode(x)) and torch.equal(a.decode(codes), b.decode(codes))


def test_registry_release_loads_offline_with_the_same_outputs(hub, tmp_path):
    sae = make_sae(model_name="embedded", hook_name="layers.3.residual")
    folder = cache_sae(hub, tmp_path, sae, REPO, "res/layers.3")
    assert (folder / "cfg.json").is_symlink()  # a real cache layout, not plain files
    got = SparseAutoencoder.from_pretrained("test-res", "layers.3.residual")
    assert same_outputs(sae, got)
    meta = got.cfg.metadata  # the registry's overrides and neuronpedia id reached the cfg
    assert meta["neuronpedia_id"] == "embedded/3-res-test"
    assert meta["dataset_path"] == "testorg/test-corpus"
    assert pretrained.pretrained_dir("test-res", "layers.3.residual") == folder
    target = pretrained.resolve("test-res", "layers.3.residual")
    assert (target.repo_id, target.folder, target.layout) == (REPO, "res/layers.3", "sae_lens")
    assert target.norm_scaling_factor == 2.5  # what load_saelens is given to fold


def test_load_pretrained_passes_the_registry_entry_to_load_saelens(hub, tmp_path, monkeypatch):
    cache_sae(hub, tmp_path, make_sae(), REPO, "res/layers.3")
    seen = {}

    def spy(path, **kw):
        seen.update(kw, path=path)
        return make_sae()

    monkeypatch.setattr(pretrained, "load_saelens", spy)
    pretrained.load_pretrained("test-res", "layers.3.residual", dtype="float64")
    assert seen["cfg_overrides"] == {
        "dataset_path": "testorg/test-corpus",
        "model_from_pretrained_kwargs": {"center_writing_weights": False},
        "neuronpedia_id": "embedded/3-res-test",
    }
    assert seen["norm_scaling_factor"] == 2.5 and seen["dtype"] == "float64"
    assert Path(seen["path"]) == hub / f"models--testorg--test-saes/snapshots/{COMMIT}/res/layers.3"


def test_spec_strings_ids_with_slashes_and_numbers(hub, tmp_path):
    a, b = make_sae(seed=1), make_sae(seed=2)
    cache_sae(hub, tmp_path, a, REPO, "deep/l1/16k", "a")
    cache_sae(hub, tmp_path, b, REPO, "7", "b")
    spec = "test-res/layer_1/width_16k/average_l0_82"
    assert pretrained.split_spec(spec) == ("test-res", "layer_1/width_16k/average_l0_82")
    assert same_outputs(a, SparseAutoencoder.from_pretrained(spec))  # one string
    assert same_outputs(a, SparseAutoencoder.load(spec))  # load_any falls back to it
    assert same_outputs(b, SparseAutoencoder.from_pretrained("test-res", "7"))  # int id/path
    assert not same_outputs(a, b)


def test_plain_repo_ids_with_and_without_a_folder(hub, tmp_path):
    a, b = make_sae(seed=3), make_sae(seed=4)
    density = torch.linspace(0, 0.5, a.d_sae)
    save_sparsity(a.save(tmp_path / "a"), density)  # the optional file SAELens fetches too
    cache_dir_files(hub, "someorg/plain", "a/b", tmp_path / "a")
    cache_sae(hub, tmp_path, b, "someorg/root-sae", "", "b")
    assert same_outputs(a, SparseAutoencoder.from_pretrained("someorg/plain", "a/b"))
    assert same_outputs(a, SparseAutoencoder.load("someorg/plain/a/b"))
    assert same_outputs(b, SparseAutoencoder.from_pretrained("someorg/root-sae"))
    assert torch.allclose(load_sparsity("someorg/plain/a/b"), density.double(), atol=1e-6)
    target = pretrained.resolve("someorg/plain/a/b")
    assert (target.repo_id, target.folder, target.layout, target.release) == (
        "someorg/plain", "a/b", None, None,
    )  # fmt: skip
    with pytest.raises(FormatError, match=r"someorg/plain, folder a: .*not in the cache"):
        SparseAutoencoder.from_pretrained("someorg/plain", "a")  # no SAE files there


def _sparsify_files(tmp: Path, d_in=8, d_sae=24, k=3) -> dict[str, bytes]:
    g = torch.Generator().manual_seed(5)
    t = {
        "encoder.weight": torch.randn(d_sae, d_in, generator=g),
        "encoder.bias": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }
    tmp = tmp / "sae.safetensors"
    save_file(t, str(tmp))
    cfg = {"d_in": d_in, "num_latents": d_sae, "k": k, "activation": "topk"}
    return {"cfg.json": json.dumps(cfg).encode(), "sae.safetensors": tmp.read_bytes()}


def _dl_files(tmp: Path, d_in=8, d_sae=24, k=3) -> dict[str, bytes]:
    g = torch.Generator().manual_seed(6)
    st = {
        "encoder.weight": torch.randn(d_sae, d_in, generator=g),
        "encoder.bias": torch.randn(d_sae, generator=g),
        "decoder.weight": torch.randn(d_in, d_sae, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
        "k": torch.tensor(k),
        "threshold": torch.tensor(-1.0),
    }
    tmp = tmp / "ae.pt"
    torch.save(st, tmp)
    trainer = {"dict_class": "AutoEncoderTopK", "activation_dim": d_in, "dict_size": d_sae, "k": k}
    cfg = {"trainer": trainer, "buffer": {"model_name": "pythia-70m"}}
    return {"config.json": json.dumps(cfg).encode(), "ae.pt": tmp.read_bytes()}


@pytest.mark.parametrize("layout", ["sparsify", "dictionary_learning"])
def test_converted_releases_and_detected_layouts(hub, tmp_path, layout):
    files = (_sparsify_files if layout == "sparsify" else _dl_files)(tmp_path)
    release, sae_id, repo, folder = {
        "sparsify": ("test-sparsify", "layers.3", "testorg/sparsify-saes", "layers.3"),
        "dictionary_learning": ("test-dl", "blocks.3.hook_resid_post__trainer_0",
                                "testorg/dl-saes", "resid_post_layer_3/trainer_0"),
    }[layout]  # fmt: skip
    snap = cache_files(hub, repo, {f"{folder}/{n}": data for n, data in files.items()})
    local = SparseAutoencoder.load(snap / folder)  # the same files, read as a directory
    got = SparseAutoencoder.from_pretrained(release, sae_id)
    assert same_outputs(local, got)
    if layout == "sparsify":
        assert got.cfg.metadata["neuronpedia_id"] == "embedded/3-sparsify"
    # the same folder as a plain repo: the layout is told by its files
    assert same_outputs(local, SparseAutoencoder.from_pretrained(repo, folder))


def test_unsupported_conversion_names_the_release_and_the_function(hub):
    with pytest.raises(FormatError, match=r"test-llama.*'llama_scope'.*sparsify"):
        SparseAutoencoder.from_pretrained("test-llama", "l0r_8x")


def _gemma_params(d_in: int, d_sae: int, prefix: str = "W_") -> dict[str, np.ndarray]:
    g = np.random.default_rng(0)
    return {f"{prefix}enc": g.normal(size=(d_in, d_sae)).astype(np.float32),
            f"{prefix}dec": g.normal(size=(d_sae, d_in)).astype(np.float32),
            "b_enc": g.normal(size=d_sae).astype(np.float32) * 0.1,
            "b_dec": g.normal(size=d_in).astype(np.float32),
            "threshold": np.abs(g.normal(size=d_sae)).astype(np.float32)}  # fmt: skip


def _jumprelu(p: dict[str, np.ndarray], x: torch.Tensor) -> torch.Tensor:
    """Gemma Scope's JumpReLU written out: it does not centre its input."""
    t = {k.lower(): torch.from_numpy(v).double() for k, v in p.items()}
    pre = x @ t["w_enc"] + t["b_enc"]
    return (pre * (pre > t["threshold"])) @ t["w_dec"] + t["b_dec"]


def test_gemma_scope_releases_load_as_jumprelu(hub, tmp_path):
    folder = "layer_1/width_16k/average_l0_105"
    params = _gemma_params(2304, 16384)
    buf = io.BytesIO()
    np.savez(buf, **params)
    cache_files(hub, "google/gemma-scope-2b-pt-res", {f"{folder}/params.npz": buf.getvalue()})
    sae = SparseAutoencoder.from_pretrained("test-gemma", folder, backend="torch", dtype="float64")
    assert (sae.activation, sae.d_in, sae.d_sae) == ("jumprelu", 2304, 16384)
    assert sae.cfg.model_name == "google/gemma-2-2b" and sae.cfg.hook_name == "layers.1.residual"
    x = torch.randn(3, 2304, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            sae(x).reconstruction, _jumprelu(params, x), rtol=1e-9, atol=1e-9
        )
    with pytest.raises(FormatError, match="embedding SAEs were trained"):
        SparseAutoencoder.from_pretrained("test-gemma", "embedding/width_4k/average_l0_6")
    # Gemma Scope 2 (Gemma 3): safetensors with lower-case names, widths from the weights
    params3 = _gemma_params(640, 96, prefix="w_")
    data = save(
        {k: torch.from_numpy(v) for k, v in params3.items()}  # bytes, as the hub stores them
    )
    name = "resid_post/layer_2_width_16k_l0_small"
    cache_files(hub, "google/gemma-scope-2-270m-pt", {f"{name}/params.safetensors": data})
    sae3 = SparseAutoencoder.from_pretrained("test-gemma3", name, backend="torch", dtype="float64")
    assert (sae3.d_in, sae3.d_sae, sae3.cfg.hook_name) == (640, 96, "layers.2.residual")
    assert sae3.cfg.model_name == "google/gemma-3-270m-pt"
    x3 = torch.randn(3, 640, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            sae3(x3).reconstruction, _jumprelu(params3, x3), rtol=1e-9, atol=1e-9
        )
    with pytest.raises(FormatError, match="normalises its MLP's output"):
        SparseAutoencoder.from_pretrained("test-gemma3", "mlp_out/layer_2_width_16k_l0_small")


def test_unknown_releases_and_sae_ids(hub):
    with pytest.raises(ConfigError, match=r"no SAE id 'layers\.4\.residual'.*layers\.3\.residual"):
        SparseAutoencoder.from_pretrained("test-res", "layers.4.residual")
    with pytest.raises(ConfigError, match=r"needs an sae_id; its ids are layers\.3\.residual"):
        SparseAutoencoder.from_pretrained("test-res")
    with pytest.raises(ConfigError, match=r"'test-rse' is not in the SAELens registry.*test-res"):
        SparseAutoencoder.from_pretrained("test-rse", "layers.3.residual")
    with pytest.raises(ConfigError, match="relative path"):
        SparseAutoencoder.from_pretrained("someorg/plain", "../x")


def test_an_empty_offline_cache_is_one_clear_error(hub, capsys):
    with pytest.raises(FormatError) as err:
        SparseAutoencoder.from_pretrained("test-res", "layers.3.residual")
    msg = str(err.value)
    assert all(s in msg for s in (REPO, "res/layers.3", "HF_HUB_OFFLINE", str(hub)))
    with pytest.raises(FormatError, match=r"repo someorg/nothing.*not in the cache.*OFFLINE"):
        SparseAutoencoder.from_pretrained("someorg/nothing")
    with pytest.raises(FormatError, match=r"directory someorg/x does not exist, and as a Hug"):
        SparseAutoencoder.load("someorg/x")  # no such local path either
    assert main(["eval", "test-res/layers.3.residual"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_an_existing_directory_wins_and_a_missing_path_stays_missing(hub, tmp_path, monkeypatch):
    cached, local = make_sae(seed=7), make_sae(seed=8)
    cache_sae(hub, tmp_path, cached, REPO, "res/layers.3", "c")
    work = tmp_path / "work"
    local.save(work / "test-res" / "layers.3.residual")
    (work / "runs").mkdir()
    monkeypatch.chdir(work)
    assert same_outputs(local, SparseAutoencoder.load("test-res/layers.3.residual"))
    assert pretrained.sae_directory("test-res/layers.3.residual") == Path(
        "test-res/layers.3.residual"
    )
    monkeypatch.chdir(tmp_path)  # the local copy is not here: the cached one loads
    assert same_outputs(cached, SparseAutoencoder.load("test-res/layers.3.residual"))
    monkeypatch.chdir(work)
    for missing in ("runs/sae", "nope", "./a/b", str(work / "x" / "y")):  # local paths
        assert not pretrained.is_pretrained_spec(missing)
        with pytest.raises(FileNotFoundError, match="does not exist"):
            SparseAutoencoder.load(missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SparseAutoencoder.load(Path("someorg/plain"))  # a Path is always a path


def test_no_registry_and_no_huggingface_hub(hub, monkeypatch):
    monkeypatch.delenv(pretrained.REGISTRY_ENV)
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    assert pretrained.registry_path() is None
    with pytest.raises(ConfigError, match="no SAELens registry was found"):
        SparseAutoencoder.from_pretrained("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    assert pretrained.resolve("jbloom/GPT2-Small-SAEs-Reformatted", "x").folder == "x"
    monkeypatch.setenv(pretrained.REGISTRY_ENV, "/nonexistent/registry.yaml")
    with pytest.raises(ConfigError, match=r"registry .*nonexistent.* does not exist"):
        pretrained.resolve("test-res", "layers.3.residual")
    monkeypatch.delenv(pretrained.REGISTRY_ENV)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install huggingface_hub.*sae_fast\[hub\]"):
        SparseAutoencoder.from_pretrained("someorg/plain", "a")


def test_a_broken_registry_is_named(hub, tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rel:\n  repo_id: a/b\n  saes:\n  - id: x\n")
    with pytest.raises(FormatError, match=r"bad\.yaml \[rel\].*'id' and a 'path'"):
        pretrained.resolve("rel", "x", registry=bad)
    bad.write_text("rel: [unclosed\n")
    with pytest.raises(FormatError, match=r"cannot read the SAELens registry .*bad\.yaml"):
        pretrained.resolve("rel", "x", registry=bad)


def _peer_registry() -> Path:
    pattern = "benchmarks/peers/.venv/lib/python*/site-packages/sae_lens/pretrained_saes.yaml"
    found = sorted(glob.glob(str(ROOT / pattern)))
    if not found:
        if os.environ.get("CI"):
            pytest.fail("CI must make the peer environment (sae-lens's registry): make peers")
        pytest.skip("no peer environment with sae-lens: bash benchmarks/peers/setup.sh")
    return Path(found[-1])


def test_sae_lens_own_registry_resolves_and_loads_offline(hub, tmp_path):
    registry = _peer_registry()
    target = pretrained.resolve("gpt2-small-res-jb", "blocks.8.hook_resid_pre", registry=registry)
    assert (target.repo_id, target.folder, target.layout) == (
        "jbloom/GPT2-Small-SAEs-Reformatted", "blocks.8.hook_resid_pre", "sae_lens",
    )  # fmt: skip
    assert target.overrides["neuronpedia_id"] == "gpt2-small/8-res-jb"
    sae = make_sae(768, 64, model_name="gpt2", hook_name="blocks.8.hook_resid_pre")
    saved = sae.save(tmp_path / "jb")
    cfg = json.loads((saved / "cfg.json").read_text())  # as SAELens wrote it: no sae_fast part
    del cfg["sae_fast"]
    cfg["metadata"].pop("model_from_pretrained_kwargs")
    (saved / "cfg.json").write_text(json.dumps(cfg))
    cache_dir_files(hub, target.repo_id, target.folder, saved)
    got = pretrained.load_pretrained(
        "gpt2-small-res-jb/blocks.8.hook_resid_pre", registry=registry, cache_dir=hub
    )
    assert same_outputs(sae, got) and got.cfg.metadata["neuronpedia_id"] == "gpt2-small/8-res-jb"
    # the registry says TransformerLens centred GPT-2's writing weights for these SAEs: the
    # SAE reads layers.7.residual, centred as TransformerLens's blocks.8.hook_resid_pre was
    meta = got.cfg.metadata
    assert meta["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    assert got.cfg.hook_name == "layers.7.residual"
    assert meta["transformer_lens_hook_name"] == "blocks.8.hook_resid_pre"
    assert activation_transform(meta, "blocks.8.hook_resid_pre", "gpt2").kind == "center"
    spec = "gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82"  # an id with slashes
    assert pretrained.split_spec(spec, registry=registry)[1] == "layer_12/width_16k/average_l0_82"
    assert pretrained.resolve(spec, registry=registry).layout == "gemma_2"  # Gemma Scope
    llama = next(r for r, v in pretrained.read_registry(registry).items()
                 if v.conversion_func == "llama_scope")  # fmt: skip
    with pytest.raises(FormatError, match=r"'llama_scope'"):
        pretrained.resolve(llama, next(iter(pretrained.read_registry(registry)[llama].paths)),
                           registry=registry)  # fmt: skip


def test_cli_commands_take_a_release_spec(hub, tmp_path, capsys):
    sae = make_sae(384, 64, model_name="embedded", hook_name="layers.3.residual")
    folder = cache_sae(hub, tmp_path, sae, REPO, "res/layers.3")
    spec = "test-res/layers.3.residual"
    assert main(["trace", spec, "--text", "not found", "--position", "1"]) == 0
    assert "attribution" in capsys.readouterr().out
    assert main(["label", spec, "0", "a greeting"]) == 0  # written beside the cached SAE
    assert json.loads((folder / "labels.json").read_text())["labels"]["0"]["label"] == (
        "a greeting"
    )
    assert Labels.load(spec, 64).get(0).label == "a greeting"  # and read back from there
    assert main(["trace", "test-res/layers.9.residual", "--text", "x", "--position", "0"]) == 2
    assert "no SAE id 'layers.9.residual'" in capsys.readouterr().err
    for command in ("eval", "features", "steer", "monitor", "trace", "probe", "export"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "RELEASE/SAE_ID" in capsys.readouterr().out

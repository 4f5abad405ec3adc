"""The bad-input sweep: one table of wrong inputs to the API and to every CLI subcommand.

Each row must end in one clear error: the API raises the named exception with a message
that says what is wrong; the CLI exits non-zero with `error: ...` (or argparse's usage
line) on stderr and no traceback. Any other exception fails the row.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_fast import (
    ConfigError,
    DataError,
    FormatError,
    SparseAutoencoder,
    TrainConfig,
)
from sae_fast.cli import main
from sae_fast.data.activations import ActivationBatch
from sae_fast.data.store import read_cache
from sae_fast.ops import native
from sae_fast.ops import reference as ref
from sae_fast.training.trainer import Trainer, collect

os.environ.setdefault("HF_HUB_OFFLINE", "1")
WEIGHTS = "sae_weights.safetensors"
# A small train run on the embedded default whose cache the NaN row poisons.
TRAIN = ["--max-tokens", "300", "--context-size", "32", "--steps", "2", "--batch-size", "64"]
TRAIN += ["--d-sae", "768", "--k", "4", "--no-progress", "--checkpoint-every", "0"]


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    """Paths of the broken things the rows use (and of a valid SAE to break)."""
    root = tmp_path_factory.mktemp("bad")
    paths = {"root": root}
    torch.manual_seed(0)
    sae = SparseAutoencoder(384, 768, k=4, model_name="embedded", hook_name="layers.3.residual")
    paths["sae"] = sae.save(root / "sae")
    SparseAutoencoder(16, 32, k=4, model_name="embedded", hook_name="layers.3.residual").save(
        root / "narrow"
    )
    paths["narrow"] = root / "narrow"  # d_in 16: not the model's width
    for name in ("truncated", "tampered", "badcfg", "noweights"):
        sae.save(root / name)
        paths[name] = root / name
    data = (root / "truncated" / WEIGHTS).read_bytes()
    (root / "truncated" / WEIGHTS).write_bytes(data[: len(data) // 2])
    tensors = load_file(str(root / "tampered" / WEIGHTS))
    tensors["W_dec"] = tensors["W_dec"][:, :100].contiguous()  # a shape cfg.json denies
    save_file(tensors, str(root / "tampered" / WEIGHTS))
    cfg = json.loads((root / "badcfg" / "cfg.json").read_text())
    cfg["d_sae"] = "many"
    (root / "badcfg" / "cfg.json").write_text(json.dumps(cfg))
    (root / "noweights" / WEIGHTS).unlink()
    (root / "a_file").write_text("not a directory")
    (root / "empty.txt").write_text("")
    paths["empty"] = root / "empty.txt"
    paths["unwritable"] = root / "a_file" / "sub"  # cannot be created, even as root
    # an activation cache of the TRAIN run, one value poisoned with NaN
    args = dict(max_tokens=300, context_size=32, cache=str(root / "nan_cache"))
    collect(TrainConfig(**args))
    shard = root / "nan_cache" / "shard_00000.safetensors"
    t = load_file(str(shard))
    t["acts"][37, 5] = float("nan")
    save_file(t, str(shard))
    paths["nan_cache"] = root / "nan_cache"
    incomplete = root / "incomplete_cache"
    incomplete.mkdir()
    manifest = json.loads((root / "nan_cache" / "manifest.json").read_text())
    (incomplete / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    paths["incomplete_cache"] = incomplete
    rules = root / "rules.json"
    rules.write_text(json.dumps({"rules": [{"name": "r", "feature": 99999, "threshold": 1}]}))
    paths["rules"] = rules
    inputs = root / "in.jsonl"
    inputs.write_text('{"id": 1, "text": "fine"}\n{not json\n')
    paths["inputs"] = inputs
    return paths


def _sae() -> SparseAutoencoder:
    torch.manual_seed(0)
    return SparseAutoencoder(8, 16, k=4)


def _nan_training(root: Path, later: bool) -> None:
    """Train on activations with one Inf in row 300: in the set from the start, or turning
    up in memory after the trainer has started (found by the step that draws it)."""
    acts = torch.randn(512, 8)
    zeros = torch.zeros(512, dtype=torch.int64)
    data = ActivationBatch(acts, tokens=zeros, window=zeros, position=torch.arange(512))
    if not later:
        acts[300, 2] = float("inf")
    cfg = TrainConfig(d_sae=16, k=4, batch_size=64, steps=20, progress=False, out=str(root))
    trainer = Trainer(cfg, (data, [], None))
    trainer.feed.store.acts[300, 2] = float("inf")
    trainer.run()


class _Payload:
    """Unpickling this runs code: it creates the file `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _resume_tampered_checkpoint(root: Path) -> None:
    """Resume from a checkpoint whose optimizer.pt is a pickle that would run code."""
    acts = torch.randn(256, 8)
    zeros = torch.zeros(256, dtype=torch.int64)
    data = (ActivationBatch(acts, zeros, zeros, torch.arange(256)), [], None)
    cfg = dict(d_sae=16, k=4, batch_size=64, steps=2, progress=False, out=str(root))
    Trainer(TrainConfig(**cfg, checkpoint_every=2), data).run()
    ckpt = root / "checkpoints" / "step_00000002"
    marker = root / "code_ran"
    torch.save({"state": _Payload(marker)}, ckpt / "optimizer.pt")
    try:
        Trainer(TrainConfig(**cfg, resume=str(ckpt)), data)
    finally:
        assert not marker.exists(), "loading the checkpoint ran code"


I64 = torch.int64
# (id, call(paths), exception, message regex)
API = [
    ("forward-width", lambda p: _sae()(torch.randn(3, 9)), ValueError, "last dim 8"),
    ("forward-int", lambda p: _sae()(torch.ones(3, 8, dtype=I64)), TypeError, "floating"),
    ("forward-dtype", lambda p: _sae()(torch.randn(3, 8).double()), TypeError, "float64"),
    ("forward-device", lambda p: _sae()(torch.randn(3, 8, device="meta")), ValueError, "meta"),
    ("forward-empty", lambda p: _sae()(torch.randn(0, 8)), ValueError, "empty"),
    ("forward-list", lambda p: _sae()([[1.0] * 8]), TypeError, "torch.Tensor"),
    ("k-zero", lambda p: SparseAutoencoder(8, 16, k=0), ConfigError, "k must be"),
    ("k-above-d_sae", lambda p: SparseAutoencoder(8, 16, k=17), ConfigError, "k must be <="),
    ("activation", lambda p: SparseAutoencoder(8, 16, activation="gelu"), ConfigError, "gelu"),
    ("ref-k", lambda p: ref.topk_select(torch.randn(2, 5), 6), ValueError, "k must be in"),
    (
        "decode-index",
        lambda p: _sae().decode_sparse(torch.ones(2, 4), torch.full((2, 4), 16, dtype=I64)),
        IndexError,
        r"\[0, 16\)",
    ),
    (
        "decode-index-dtype",
        lambda p: _sae().decode_sparse(torch.ones(2, 4), torch.zeros(2, 4, dtype=torch.int32)),
        TypeError,
        "int64",
    ),
    (
        "native-decode-index",
        lambda p: native.decode_sparse(
            torch.ones(2, 3),
            torch.tensor([[0, 1, 99], [0, 1, 2]]),
            torch.randn(10, 4),
            torch.zeros(4),
        ),
        RuntimeError,
        r"indices must be in \[0, 10\)",
    ),
    (
        "native-grad-index",
        lambda p: native.grad_values(
            torch.ones(2, 4), torch.tensor([[-1, 1, 2], [0, 1, 2]]), torch.randn(10, 4)
        ),
        RuntimeError,
        "indices must be in",
    ),
    (
        "native-topk-k",
        lambda p: native.encode_topk(
            torch.randn(2, 4), torch.randn(4, 10), torch.zeros(10), torch.zeros(4), 11
        ),
        RuntimeError,
        r"k must be in \[1, 10\]",
    ),
    (
        "native-topk-shape",
        lambda p: native.encode_topk(
            torch.randn(2, 5), torch.randn(4, 10), torch.zeros(10), torch.zeros(4), 2
        ),
        RuntimeError,
        "W_enc must have shape",
    ),
    (
        "load-missing",
        lambda p: SparseAutoencoder.load(p["root"] / "nope"),
        FileNotFoundError,
        "nope",
    ),
    ("load-truncated", lambda p: SparseAutoencoder.load(p["truncated"]), FormatError, WEIGHTS),
    ("load-tampered", lambda p: SparseAutoencoder.load(p["tampered"]), FormatError, "W_dec"),
    ("load-cfg-type", lambda p: SparseAutoencoder.load(p["badcfg"]), ConfigError, "d_sae"),
    (
        "load-no-weights",
        lambda p: SparseAutoencoder.load(p["noweights"]),
        FileNotFoundError,
        WEIGHTS,
    ),
    ("save-unwritable", lambda p: _sae().save(p["unwritable"]), PermissionError, "a_file"),
    ("config-steps", lambda p: TrainConfig(steps=-1), ConfigError, "steps"),
    ("config-lr-type", lambda p: TrainConfig(lr="fast"), ConfigError, "lr"),
    ("cache-incomplete", lambda p: read_cache(p["incomplete_cache"]), FormatError, "incomplete"),
    (
        "resume-pickle",
        lambda p: _resume_tampered_checkpoint(p["root"] / "pickled"),
        FormatError,
        "optimizer.pt is unreadable",
    ),
    (
        "train-inf",
        lambda p: _nan_training(p["root"] / "inf_run", later=False),
        DataError,
        r"the activation set holds 1 NaN/Inf activation values.*activation rows 300\b",
    ),
    (
        "train-inf-in-a-batch",
        lambda p: _nan_training(p["root"] / "inf_later", later=True),
        DataError,
        r"step \d+: the batch holds 1 NaN/Inf activation values.*activation rows 300\b",
    ),
    (
        "train-unwritable",
        lambda p: Trainer(TrainConfig(out=str(p["unwritable"]))),
        PermissionError,
        "not writable",
    ),
]


@pytest.mark.parametrize("call, exc, message", [r[1:] for r in API], ids=[r[0] for r in API])
def test_api_rejects(bad, call, exc, message):
    with pytest.raises(exc, match=message):
        call(bad)


# (id, argv(paths), stderr regex); every one must exit non-zero without a traceback
CLI = [
    ("train-k", lambda p: ["train", *TRAIN, "--k", "0"], "k must be"),
    ("train-activation", lambda p: ["train", *TRAIN, "--activation", "gelu"], "gelu"),
    ("train-int-flag", lambda p: ["train", "--steps", "many"], "invalid int value"),
    ("train-out", lambda p: ["train", *TRAIN, "--out", str(p["unwritable"])], "not writable"),
    ("train-corpus", lambda p: ["train", *TRAIN, "--corpus", "/nonexistent/c.txt"], "nonexistent"),
    ("train-device", lambda p: ["train", *TRAIN, "--device", "tpu"], "tpu"),
    (
        "train-empty-corpus",
        lambda p: ["train", *TRAIN, "--corpus", str(p["empty"]), "--out", str(p["root"] / "e")],
        "no tokens|empty",
    ),
    ("train-resume", lambda p: ["train", *TRAIN, "--resume", "/nonexistent/ckpt"], "nonexistent"),
    (
        "train-nan-cache",
        lambda p: ["train", *TRAIN, "--cache", str(p["nan_cache"]), "--out", str(p["root"] / "o")],
        r"the activation set holds 1 NaN/Inf .*activation rows 37\b",
    ),
    (
        "train-incomplete-cache",
        lambda p: ["train", *TRAIN, "--cache", str(p["incomplete_cache"])],
        "incomplete",
    ),
    ("eval-missing", lambda p: ["eval", str(p["root"] / "nope")], "nope"),
    ("eval-truncated", lambda p: ["eval", str(p["truncated"])], WEIGHTS),
    ("eval-cfg-type", lambda p: ["eval", str(p["badcfg"])], "d_sae"),
    ("eval-width", lambda p: ["eval", str(p["narrow"]), "--max-tokens", "200"], "d_in|width|16"),
    ("sweep-expansions", lambda p: ["sweep", *TRAIN[:-2], "--expansions", "4,x"], "expansions"),
    ("features-missing", lambda p: ["features", str(p["noweights"])], WEIGHTS),
    ("features-top", lambda p: ["features", str(p["sae"]), "--top", "0"], "top"),
    ("label-range", lambda p: ["label", str(p["sae"]), "768", "x"], "out of range"),
    ("label-tampered", lambda p: ["label", str(p["tampered"]), "1", "x"], "W_dec"),
    (
        "steer-feature",
        lambda p: ["steer", str(p["sae"]), "--prompt", "x", "--feature", "a"],
        "ID=VALUE",
    ),
    (
        "steer-range",
        lambda p: ["steer", str(p["sae"]), "--prompt", "x", "--feature", "999999=1"],
        "999999",
    ),
    (
        "monitor-rules",
        lambda p: [
            "monitor",
            str(p["sae"]),
            "--rules",
            str(p["rules"]),
            "--input",
            str(p["inputs"]),
        ],
        "unknown keys",
    ),
    (
        "monitor-missing",
        lambda p: ["monitor", str(p["sae"]), "--rules", "/nonexistent.json", "--input", "x"],
        "nonexistent",
    ),
    (
        "trace-position",
        lambda p: ["trace", str(p["sae"]), "--text", "a b", "--position", "99"],
        "position",
    ),
    (
        "trace-width",
        lambda p: ["trace", str(p["narrow"]), "--text", "a", "--position", "0"],
        "d_in|width|16",
    ),
    ("hooks-model", lambda p: ["hooks", "/nonexistent/model"], "nonexistent"),
]


@pytest.mark.parametrize("argv, message", [r[1:] for r in CLI], ids=[r[0] for r in CLI])
def test_cli_rejects(bad, argv, message, capsys, monkeypatch):
    monkeypatch.chdir(bad["root"])  # runs/ of the default --out lands in the temp dir
    try:
        code = main(argv(bad))
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    assert code not in (0, None), f"exit {code}; stderr: {err}"
    assert "Traceback" not in err, err
    assert re.search(message, err), f"{message!r} not in stderr: {err}"
    assert err.strip().splitlines()[-1].startswith(("error:", "sae-fast")), err

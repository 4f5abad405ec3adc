"""Packaging promises: imports without the extension (one warning), demo runs, CLI-free API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sae_fast

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env_extra) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


def test_imports_without_extension_with_one_warning():
    code = (
        "import sys, warnings\n"
        "sys.modules['sae_fast._C'] = None  # as if the extension was never built\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import sae_fast, torch\n"
        "msgs = [str(x.message) for x in w if 'sae_fast._C' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert not sae_fast.NATIVE_AVAILABLE\n"
        "sae = sae_fast.SparseAutoencoder(4, 8, k=2)\n"
        "print(sae(torch.randn(3, 4)).reconstruction.shape, msgs[0])\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "torch.Size([3, 4])" in r.stdout and "falling back to the 'torch' backend" in r.stdout


def test_extension_is_built_in_this_install():
    # make test installs with SAE_FAST_REQUIRE_EXT=1; a silent fallback here would hide rot.
    if os.environ.get("SAE_FAST_REQUIRE_EXT") == "1":
        assert sae_fast.NATIVE_AVAILABLE, sae_fast.NATIVE_IMPORT_ERROR


def _demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sae_fast.demo", "--steps", "40", "--max-tokens", "4000", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_demo_runs_the_three_uses_on_smollm2_by_default(tmp_path):
    r = _demo("--out", str(tmp_path / "demo"), "--new-tokens", "8", "--eval-tokens", "600")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "1. trained a TopK SAE 576 -> 4608 (k=32)" in out and "of smollm2 layers.9" in out
    for step in ("2. features whose top contexts", "3. steering feature", "4. monitor", "5. trace"):
        assert step in out, out
    assert "log P(top tokens) per generated token" in out and "[[" in out
    assert "6. held-out" in out and "CE loss recovered" in out and "KL" in out
    sae = sae_fast.SparseAutoencoder.load(tmp_path / "demo" / "sae")
    assert (sae.d_in, sae.d_sae, sae.k) == (576, 4608, 32)


def test_demo_on_the_embedded_encoder_trains_and_shows_features(tmp_path):
    r = _demo("--model", "embedded", "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trained a topk SAE 384 -> 3072 (k=32) on 40,960 activations (4," in r.stdout
    assert "FVU" in r.stdout and "dead latents" in r.stdout
    assert "[[" in r.stdout  # at least one feature's top context with its token marked
    sae = sae_fast.SparseAutoencoder.load(tmp_path / "demo" / "sae")
    assert (sae.d_in, sae.d_sae, sae.k) == (384, 3072, 32)


def test_cli_train_hooks_and_errors(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "sae_fast.cli", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )

    r = cli("hooks")
    assert r.returncode == 0 and r.stdout.split()[:2] == ["embeddings", "layers.0.attn_out"]
    assert len(r.stdout.split()) == 1 + 6 * 4  # attn_out, mlp_in, mlp_out, residual
    r = cli("train", "--hook", "layers.9.residual")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: unknown hook 'layers.9.residual'")
    r = cli(
        "train",
        "--steps",
        "3",
        "--max-tokens",
        "500",
        "--batch-size",
        "64",
        "--d-sae",
        "512",
        "--no-progress",
        "--out",
        str(tmp_path / "run"),
    )
    assert r.returncode == 0, r.stderr
    assert "saved" in r.stdout and (tmp_path / "run" / "sae" / "cfg.json").exists()
    assert "time: activations" in r.stdout and "SAE steps" in r.stdout
    r = cli("train", "--help")
    assert r.returncode == 0 and "--dead-after-tokens" in r.stdout and "(default: 32)" in r.stdout
    # an MLP skip transcoder from the command line
    r = cli(
        "train", "--hook", "layers.1.mlp_in", "--target-hook", "layers.1.mlp_out", "--skip",
        "--steps", "3", "--max-tokens", "500", "--batch-size", "64", "--d-sae", "512",
        "--no-progress", "--out", str(tmp_path / "tc"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "tc" / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk_skip_transcoder"
    assert cfg["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"  # SAELens's name
    assert cfg["sae_fast"]["hook_name_out"] == "layers.1.mlp_out"


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path):
    import signal
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [
        sys.executable,
        "-m",
        "sae_fast.cli",
        "train",
        "--max-tokens",
        "800",
        "--batch-size",
        "64",
        "--d-sae",
        "512",
        "--no-progress",
        "--log-every",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]
    proc = subprocess.Popen(
        [*args, "--steps", "1000000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.stat().st_size > 0:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "checkpoint saved" in out and "Traceback" not in err
    (ckpt,) = (tmp_path / "run" / "checkpoints").iterdir()
    step = int(ckpt.name.split("_")[1])
    r = subprocess.run(
        [*args, "--steps", str(step + 2), "--resume", str(ckpt)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["step"] == step + 2

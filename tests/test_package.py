"""Packaging promises: imports without the extension (one warning), demo runs, CLI-free API."""

from __future__ import annotations

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


def test_demo_runs_and_saves_a_loadable_sae(tmp_path):
    out = tmp_path / "toy"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sae_fast.demo",
            "--features",
            "128",
            "--dim",
            "32",
            "--k",
            "4",
            "--steps",
            "300",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "recovered" in r.stdout and "true directions" in r.stdout
    sae = sae_fast.SparseAutoencoder.load(out)
    assert (sae.d_in, sae.d_sae, sae.k) == (32, 256, 4)

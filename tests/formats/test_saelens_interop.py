"""Every SAELens inference architecture round-trips with SAELens itself (<= 1e-5 on encode,
decode and forward): files SAELens 6.54.12 wrote load here (committed fixtures, every run),
and ours load in SAELens (its own environment, benchmarks/peers/.venv, which `make test`
makes; see saelens_interop.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import peers
from tests.formats import saelens_interop as interop

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "saelens-6.54.12"
SCRIPT = Path(__file__).resolve().with_name("saelens_interop.py")


def test_files_saelens_wrote_load_with_the_same_outputs():
    errs = interop.check_theirs(FIXTURES)
    assert set(errs) == set(interop.THEIRS)  # standard, topk, jumprelu, gated, 4 transcoders
    assert max(errs.values()) <= interop.TOL


def test_saelens_loads_ours_and_we_load_what_it_writes(tmp_path):
    if not peers.ready():
        if os.environ.get("CI"):
            pytest.fail("CI must make the peer environment: make peers")
        pytest.skip("no peer environment: bash benchmarks/peers/setup.sh")
    interop.write_ours(tmp_path)
    run = subprocess.run(
        [str(peers.python()), str(SCRIPT), "saelens", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": ""},  # SAELens alone: sae_fast is not importable
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    for case in interop.OURS:
        assert f"saelens loads ours  {case} " in run.stdout, run.stdout
    errs = interop.check_theirs(tmp_path)
    assert set(errs) == set(interop.THEIRS) and max(errs.values()) <= interop.TOL

"""Every SAELens inference architecture round-trips with SAELens itself (<= 1e-5 on encode,
decode and forward), with each option sae_fast honours (decoder-norm rescaling, the four
input normalisations, what SAELens's trainers save): files SAELens 6.54.12 wrote load here
(committed fixtures, every run); ours load in SAELens, and so does each of SAELens's saved
again by sae_fast (its own environment, benchmarks/peers/.venv, which `make test` makes; see
saelens_interop.py)."""

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
    # standard, topk, jumprelu, gated, 4 transcoders, and each option case
    assert set(errs) == set(interop.THEIRS) | set(interop.OPTIONS)
    assert max(errs.values()) <= interop.TOL


def _in_saelens(step: str, root: Path) -> str:
    """Run `step` of saelens_interop.py with SAELens alone (sae_fast not importable)."""
    run = subprocess.run(
        [str(peers.python()), str(SCRIPT), step, str(root)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_saelens_loads_ours_and_we_load_what_it_writes(tmp_path):
    if not peers.ready():
        if os.environ.get("CI"):
            pytest.fail("CI must make the peer environment: make peers")
        pytest.skip("no peer environment: bash benchmarks/peers/setup.sh")
    interop.write_ours(tmp_path)
    out = _in_saelens("saelens", tmp_path)
    for case in interop.OURS:
        assert f"saelens loads ours  {case} " in out, out
    errs = interop.check_theirs(tmp_path)
    cases = set(interop.THEIRS) | set(interop.OPTIONS)
    assert set(errs) == cases and max(errs.values()) <= interop.TOL
    # saved again by sae_fast (folds applied, runtime modes written back): SAELens agrees
    interop.write_back(tmp_path)
    out = _in_saelens("saelens-back", tmp_path)
    for case in cases:
        assert f"saelens loads back {case} " in out, out

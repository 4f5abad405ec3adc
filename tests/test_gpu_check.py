"""`python -m benchmarks.gpu_check --smoke` end to end (CPU, Triton interpreter): every row
type reaches the JSONL and the markdown, a failing check is isolated (the rows after it
still run), a lost CUDA context resumes in a child, the budget skips rows, and the
dispatch table is in the format `triton_dispatch.measured_table` reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_cases import CheckFailed, compare_codes
from sae_fast.ops import reference as ref

ROOT = Path(__file__).resolve().parents[1]
PER_DTYPE = [
    "encode_fused", "encode_chunked", "encode_relu", "encode_jumprelu", "decode",
    "grad_values", "sparse_backward", "sae_step", "int64_probe", "gemm", "time_encode_fused",
    "time_encode_chunked", "time_encode_auto", "dispatch", "time_decode", "time_grad_values",
    "time_sparse_backward", "step_triton", "adam", "step_dense", "step_sparsify",
]  # fmt: skip
TINY = ["--shape", "16,128,16,4", "--dtype", "fp32"]  # the failure tests' quick run


def _run(out: Path, *args: str) -> tuple[int, list[dict], str]:
    """(exit status, JSONL rows, output) of one smoke run writing to `out`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OUT", None)
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--smoke", "--out", str(out), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (jsonl,) = out.glob("gpu-check-*.jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return p.returncode, rows, p.stdout + p.stderr


def _by_key(rows: list[dict]) -> dict[str, dict]:
    return {f"{r['check']}/{r.get('dtype', '')}": r for r in rows}


def test_smoke_run_passes_every_row_and_writes_the_files(tmp_path):
    table = tmp_path / "gpu_dispatch.json"
    rc, rows, out = _run(tmp_path, "--write-dispatch", str(table))
    assert rc == 0, out[-3000:]
    assert rows[0]["check"] == "env" and rows[0]["torch"] == torch.__version__
    got = _by_key(rows[1:])
    want = [f"{n}/{d}" for d in ("float32", "bfloat16") for n in PER_DTYPE]
    assert sorted(got) == sorted(want)
    for key, row in got.items():
        ok = ("PASS", "SKIP (not importable)") if key.startswith("step_sparsify") else ("PASS",)
        assert row["status"] in ok, (key, row)
    assert got["encode_fused/bfloat16"]["rows_equal"] == 1.0
    assert got["time_decode/float32"]["x_gemm"] == pytest.approx(
        got["time_decode/float32"]["ms"] / got["gemm/float32"]["ms"]
    )
    md = next(tmp_path.glob("gpu-check-*.md")).read_text()
    assert "| sparse_backward | bfloat16 | PASS |" in md and "Rows: " in md
    (dispatch,) = tmp_path.glob("gpu-dispatch-*.json")
    suggested = {r["key"]: r["method"] for r in json.loads(dispatch.read_text())}
    assert set(suggested) == {"32,32,256,8,float32", "32,32,256,8,bfloat16"}
    assert set(suggested.values()) <= {"fused", "chunked"}

    from sae_fast.ops import triton_dispatch

    saved = triton_dispatch.TABLE
    try:  # both tables read back through the dispatcher's own loader
        for path in (table, tmp_path / "gpu_dispatch.json"):
            triton_dispatch.TABLE = path
            triton_dispatch.measured_table.cache_clear()
            assert suggested.items() <= triton_dispatch.measured_table().items()
            assert json.loads(path.read_text())["measured"].startswith("cpu, ")
    finally:
        triton_dispatch.TABLE = saved
        triton_dispatch.measured_table.cache_clear()


def test_a_failing_check_is_isolated(tmp_path):
    """decode fails (the run goes on in-process); sparse_backward fails as if the CUDA
    context were lost (the rest runs in a child process appending to the same files)."""
    rc, rows, out = _run(tmp_path, "--inject-failure", "decode,sparse_backward:fatal", *TINY)
    assert rc != 0, out[-3000:]
    assert rows[0]["check"] == "env"
    checks = [f"{r['check']}/{r['dtype']}" for r in rows if r["check"] != "env"]
    assert checks == [f"{n}/float32" for n in PER_DTYPE]  # each once, in order
    got = _by_key(rows)
    for name in ("decode", "sparse_backward"):
        assert got[f"{name}/float32"]["status"] == "FAIL"
        assert "injected failure" in got[f"{name}/float32"]["error"]
    for name in PER_DTYPE:  # the others still ran, and were written row by row
        if name not in ("decode", "sparse_backward"):
            assert got[f"{name}/float32"]["status"] in ("PASS", "SKIP (not importable)"), name
    envs = [r for r in rows if r["check"] == "env"]  # the child wrote an env row of its own
    assert len(envs) == 2 and envs[1]["resumed_after"] == "sparse_backward/float32"
    assert "resuming in a child process" in out
    md = next(tmp_path.glob("gpu-check-*.md")).read_text()
    assert "| decode | float32 | FAIL |" in md and "| adam | float32 | PASS |" in md


def test_an_exhausted_budget_skips_rows_without_failing(tmp_path):
    rc, rows, out = _run(tmp_path, "--budget-s", "0", *TINY)
    assert rc == 0, out[-3000:]
    assert len(rows) == 1 + len(PER_DTYPE)
    assert {r["status"] for r in rows[1:]} == {"SKIP (budget)"}


def test_compare_codes_refuses_a_wrong_code():
    pre = torch.randn(200, 64, generator=torch.Generator().manual_seed(0))
    want = ref.topk_act(pre, 5)
    assert compare_codes(want.values, want.indices, want, "float32")["rows_equal"] == 1.0
    idx = want.indices.clone()
    idx[:3, 0] = idx[:3, 1]  # 1.5% of rows wrong: over the 1% allowed
    with pytest.raises(CheckFailed, match="rows have the reference's indices"):
        compare_codes(want.values, idx, want, "float32")
    with pytest.raises(CheckFailed, match="values relative error"):
        compare_codes(want.values * 1.01, want.indices, want, "float32")

"""The benchmarks run end to end at tiny sizes (timings here mean nothing; the code paths,
the correctness checks before timing, and the result files are what is tested)."""

from __future__ import annotations

import csv

import pytest

from tests.conftest import DEVICE


def test_triton_step_benchmark_tiny(tmp_path, capsys):
    pytest.importorskip("triton", reason="triton is not installed")
    from benchmarks import triton_step

    rows = triton_step.main(["--tiny", "--device", DEVICE, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "check vs reference: 100.0% rows with identical indices" in out
    ops = [r["op"] for r in rows]
    assert ops[0].startswith("encoder GEMM") and "triton train step fwd+bwd" in ops
    assert rows[0]["ratio_to_gemm"] == 1.0 and all(r["ms"] > 0 for r in rows)
    (csv_path,) = tmp_path.glob("*-triton_step.csv")
    with open(csv_path) as f:
        assert [r["op"] for r in csv.DictReader(f)] == ops


def test_sparse_decode_benchmark_small(capsys):
    from benchmarks import sparse_decode

    sparse_decode.main(
        ["--B", "64", "--d-in", "16", "--d-sae", "128", "--k", "4", "--repeats", "1"]
    )
    out = capsys.readouterr().out
    assert "reference (embedding_bag)" in out and "x vs dense" in out


def test_cpu_step_benchmark_small(tmp_path, capsys):
    import sae_fast

    if not sae_fast.NATIVE_AVAILABLE:
        pytest.skip(f"sae_fast._C not built: {sae_fast.NATIVE_IMPORT_ERROR}")
    from benchmarks import cpu_step

    rows = cpu_step.main(["--small", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "check: 100.0% rows with identical indices" in out
    steps = {r["op"]: r for r in rows if r["benchmark"] == "train_step"}
    assert steps["encoder GEMM alone"]["ratio_to_gemm"] == 1.0
    assert steps["native TopK step (fwd+bwd+Adam)"]["ms"] > 0
    mem = {r["op"]: r["value"] for r in rows if r["benchmark"] == "encode_memory"}
    assert set(mem) == {"encode (native)", "encode (torch)"}
    assert len(list(tmp_path.glob("cpu-*-cpu_step.csv"))) == 1

"""The static GPU performance model and its report (issue 16, point 5): projections read the
compiled kernels' figures, and the dispatch follows the model's choice."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_projection
from sae_fast.ops import gpu_model as gm
from sae_fast.ops import triton_dispatch as td

pytest.importorskip("triton", reason="triton is not installed")


def _compile_report(tmp_path, fused_sass: int, dense_sass: int = 1200):
    rows = [
        {"name": "encoder_topk_fused", "label": "bf16 k=64 prec=0 BLOCK_M=128", "arch": 90,
         "sass_instructions": fused_sass},
        {"name": "encoder_dense", "label": "bf16 relu -> bf16 prec=0", "arch": 90,
         "sass_instructions": dense_sass},
    ]  # fmt: skip
    path = tmp_path / "gpu-compile-test.json"
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_report_uses_the_compiled_epilogue_size(tmp_path):
    small = gpu_projection.main(["--compile", str(_compile_report(tmp_path, 2200)), "--out",
                                 str(tmp_path / "a")])  # fmt: skip
    big = gpu_projection.main(["--compile", str(_compile_report(tmp_path, 40000)), "--out",
                               str(tmp_path / "b")])  # fmt: skip
    ratio = {}
    for name, path in (("small", small), ("big", big)):
        text = path.read_text()
        assert "projected" in text and "Assumptions" in text
        line = next(ln for ln in text.splitlines() if ln.startswith("| encoder fused |"))
        ratio[name] = float(line.split("|")[2])
    assert 1.0 < ratio["small"] < ratio["big"], ratio  # a bigger epilogue projects slower


def test_model_ratios_are_ordered_sensibly():
    stats = gm.FusedKernelStats()
    r = gm.step_ratios(8192, 4096, 131072, 64, stats)
    assert r["encoder GEMM (cuBLAS)"] == 1.0
    assert r["encoder fused"] > 1.0 and r["encoder chunked"] > 1.0
    assert r["forward + backward"] > min(r["encoder fused"], r["encoder chunked"])
    faster_hbm = gm.step_ratios(8192, 4096, 131072, 64, stats, "H200")
    assert faster_hbm["encoder chunked"] < r["encoder chunked"]


def test_static_dispatch_is_the_model_choice():
    for shape in [(8192, 4096, 131072, 64), (4096, 768, 24576, 32), (1024, 512, 8192, 512)]:
        want = gm.choose_encoder(*shape, gm.FusedKernelStats())
        assert td.static_plan(*shape, dtype=None) == want
    assert gm.choose_encoder(1024, 512, 8192, 512, gm.FusedKernelStats()) == "chunked"  # k > 256

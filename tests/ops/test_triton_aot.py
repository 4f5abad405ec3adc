"""Ahead-of-time GPU compiles (`sae_fast.ops.triton_aot`, `benchmarks.gpu_compile`), no GPU.

Each rule is shown to fire on a scratch kernel built to break it and to stay quiet on the
same kernel fixed, so a rule that always or never fires fails here.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed")

from sae_fast.ops import triton_aot as ta  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _ptxas():
    """Skip (fail under CI=true) where the triton wheel has no NVIDIA backend or ptxas."""
    try:
        path = ta.ptxas_path(90)
    except Exception as e:  # no triton.backends.nvidia
        path, why = None, f"{type(e).__name__}: {e}"
    else:
        why = f"{path} not found"
    if path is None or not os.path.exists(path):
        if os.environ.get("CI") == "true":
            pytest.fail(f"ptxas is required under CI: {why}")
        pytest.skip(f"no ptxas for AOT compiles ({why})")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """A fresh triton cache: every compile runs ptxas (no cache hit hides a rule)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))


def _scratch(tmp_path: Path, name: str, body: str):
    path = tmp_path / f"{name}.py"
    path.write_text("import triton\nimport triton.language as tl\n\n" + textwrap.dedent(body))
    return ta.import_file(path, f"_aot_test_{name}")


def test_decoder_configs_compile_for_sm90a():
    mod = importlib.import_module("sae_fast.ops.triton_decoder")
    cfgs = mod.aot_configs()
    assert {(c.name, c.label.split()[0]) for c in cfgs} == {
        (n, dt)
        for n in ("decode_sparse", "grad_values", "feature_reduce")
        for dt in ("bf16", "fp16", "fp32")
    }
    cfg = next(c for c in cfgs if c.name == "grad_values" and c.label.startswith("fp32"))
    r = ta.compile_config(cfg, 90)
    assert r.ok, r.error
    assert r.violations == []
    assert r.target == "sm_90a" and ".target sm_90a" in r.asm["ptx"]
    assert r.registers > 0 and r.spill_store_bytes == 0
    assert r.sass_instructions and r.sass_instructions > 10
    assert "tt.addptr" in r.asm["ttir"] and r.asm["sass"]
    # A triton cache hit runs no ptxas (and triton < 3.4 has no log knob): compile_config
    # then reruns ptxas -v itself, and must read the same registers.
    again = ta.compile_config(cfg, 90)
    assert (again.registers, again.stack_bytes) == (r.registers, r.stack_bytes)


def test_expand_autotune(tmp_path):
    mod = _scratch(tmp_path, "tuned", """
    @triton.autotune(
        configs=[triton.Config({"BLOCK": 64}, num_warps=2, num_stages=2),
                 triton.Config({"BLOCK": 128}, num_warps=4, num_stages=3)],
        key=["N"],
    )
    @triton.jit
    def copy(x_ptr, y_ptr, N, BLOCK: tl.constexpr, ODD: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < N), mask=offs < N)
    """)  # fmt: skip
    base = ta.KernelConfig("copy", mod.copy, {"x_ptr": "*fp32", "y_ptr": "*fp32", "N": "i32"},
                           {"ODD": False}, label="fp32")  # fmt: skip
    cfgs = ta.expand_autotune(base)
    assert [(c.constexprs, c.num_warps, c.num_stages) for c in cfgs] == [
        ({"ODD": False, "BLOCK": 64}, 2, 2),
        ({"ODD": False, "BLOCK": 128}, 4, 3),
    ]
    assert cfgs[0].label == "fp32 BLOCK=64 w2 s2"
    assert ta.expand_autotune(replace(base, fn=ta.jit_function(mod.copy))) == [
        replace(base, fn=ta.jit_function(mod.copy))
    ]


def test_plain_global_is_a_compile_error(tmp_path):
    body = """
    MIN_KEY = {value}

    @triton.jit
    def keys(out_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.full([BLOCK], MIN_KEY, tl.int64))
    """
    bad = _scratch(tmp_path, "global_bad", body.format(value="-(2**63)"))
    good = _scratch(tmp_path, "global_good", body.format(value="tl.constexpr(-(2**63))"))
    cfg = ta.KernelConfig("keys", bad.keys, {"out_ptr": "*i64"}, {"BLOCK": 64})
    r = ta.compile_config(cfg, 90)
    assert not r.ok and "MIN_KEY" in r.error
    assert len(r.violations) == 1 and r.violations[0].startswith("compile error")
    fixed = ta.compile_config(replace(cfg, fn=good.keys), 90)
    assert fixed.ok and fixed.violations == [], fixed.error


def test_spills_fail_only_a_hot_kernel(tmp_path):
    mod = _scratch(tmp_path, "spill", """
    @triton.jit
    def normalise(x_ptr, y_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs)  # BLOCK / 32 values per thread, all live past the sums
        m = tl.sum(x, axis=0) / BLOCK
        tl.store(y_ptr + offs, (x - m) * tl.rsqrt(tl.sum((x - m) * (x - m), axis=0)))
    """)  # fmt: skip
    cfg = ta.KernelConfig("normalise", mod.normalise, {"x_ptr": "*fp32", "y_ptr": "*fp32"},
                          {"BLOCK": 4096}, num_warps=1)  # fmt: skip
    free = ta.compile_config(cfg, 90)
    assert free.ok and free.spill_store_bytes == 0 and free.violations == []
    capped = ta.compile_config(replace(cfg, maxnreg=32), 90)  # 128 live values, 32 registers
    assert capped.ok and capped.registers <= 32
    assert capped.spill_store_bytes > 0 and capped.spill_load_bytes > 0
    assert any("spill" in v for v in capped.violations)
    assert ta.find_violations(replace(cfg, maxnreg=32, hot=False), capped) == []


def test_shared_memory_over_the_arch_limit(tmp_path):
    mod = _scratch(tmp_path, "smem", """
    @triton.jit
    def mm(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, K, BK):
            a = tl.load(a_ptr + rm[:, None] * K + (k0 + rk)[None, :])  # [BM, BK]
            b = tl.load(b_ptr + (k0 + rk)[:, None] * BN + rn[None, :])  # [BK, BN]
            acc = tl.dot(a, b, acc)
        tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)
    """)  # fmt: skip
    # 6 pipelined buffers of (64x128 + 128x64) bf16 = 196608 B: over sm_80's 166912 B,
    # under sm_90's 232448 B.
    cfg = ta.KernelConfig(
        "mm", mod.mm, {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*fp32", "K": "i32"},
        {"BM": 64, "BN": 64, "BK": 128}, num_stages=7, divisible=("a_ptr", "b_ptr", "c_ptr", "K"),
    )  # fmt: skip
    sm80 = ta.compile_config(cfg, 80)
    assert sm80.ok, sm80.error
    assert sm80.shared_bytes > ta.SHARED_LIMIT[80] and sm80.mma > 0
    assert any("shared memory" in v for v in sm80.violations)
    sm90 = ta.compile_config(cfg, 90)
    assert sm90.ok and sm90.wgmma > 0
    assert ta.SHARED_LIMIT[80] < sm90.shared_bytes <= ta.SHARED_LIMIT[90]
    assert not any("shared memory" in v for v in sm90.violations)
    at_limit = replace(sm90, shared_bytes=ta.SHARED_LIMIT[90], violations=[])
    assert ta.find_violations(cfg, at_limit) == []
    over = replace(at_limit, shared_bytes=ta.SHARED_LIMIT[90] + 1)
    assert ta.find_violations(cfg, over)


def test_i32_pointer_offsets(tmp_path):
    body = """
    @triton.jit
    def scale(x_ptr, y_ptr, N, BLOCK: tl.constexpr):
        row = tl.program_id(0){cast}
        offs = row * N + tl.arange(0, BLOCK)  # [BLOCK]
        tl.store(y_ptr + offs, tl.load(x_ptr + offs) * 2)
    """
    bad = _scratch(tmp_path, "i32", body.format(cast=""))
    good = _scratch(tmp_path, "i64", body.format(cast=".to(tl.int64)"))
    sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "N": "i32"}
    cfg = ta.KernelConfig("scale", bad.scale, sig, {"BLOCK": 128}, int64_offsets=True)
    r = ta.compile_config(cfg, 90)
    assert r.ok, r.error
    assert len(r.i32_offset_products) == 2  # the load and the store
    src = (tmp_path / "i32.py").read_text().splitlines()
    store = next(n for n, line in enumerate(src, 1) if "tl.store" in line)
    assert all(f"i32.py:{store}:" in line for line in r.i32_offset_products)
    assert all("arith.muli %row, %N : i32" in line for line in r.i32_offset_products)
    assert any("multiplied in i32" in v for v in r.violations)
    assert ta.find_violations(replace(cfg, int64_offsets=False), r) == []
    fixed = ta.compile_config(replace(cfg, fn=good.scale), 90)
    assert fixed.ok and fixed.i32_offset_products == [] and fixed.violations == []


def test_i32_addptr_parser():
    ttir = textwrap.dedent("""\
    #loc3 = loc("/x/k.py":7:20)
    #loc9 = loc("offs"(#loc3))
      %n = arith.muli %a, %b : i32 loc(#loc3)
      %s = tt.splat %n : i32 -> tensor<4xi32> loc(#loc3)
      %r = tt.make_range {end = 4 : i32, start = 0 : i32} : tensor<4xi32> loc(#loc3)
      %o = arith.addi %s, %r : tensor<4xi32> loc(#loc9)
      %p = tt.addptr %q, %o : tensor<4x!tt.ptr<f32>>, tensor<4xi32> loc(#loc9)
      %p2 = tt.addptr %q, %r : tensor<4x!tt.ptr<f32>>, tensor<4xi32> loc(#loc9)
      %p3 = tt.addptr %q, %w : tensor<4x!tt.ptr<f32>>, tensor<4xi64> loc(#loc9)
      %p4 = tt.addptr %z, %c : !tt.ptr<i64>, i64 loc(#loc3)
    """)
    found = ta.find_i32_addptr(ttir)
    assert [(op.split(": ", 1)[0], bool(mul)) for op, mul in found] == [
        ("k.py:7", True),  # a product in i32
        ("k.py:7", False),  # a plain i32 range: not an overflow
    ]
    assert "arith.muli %a, %b" in found[0][1]


def _run_tool(args: list[str], extra_path: Path | None = None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (ROOT, extra_path) if p)
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_compile", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip


def test_gpu_compile_decoder_only(tmp_path):
    proc = _run_tool(["--only", "decode_sparse", "--out", str(tmp_path), "--jobs", "2"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "triton_backend: no aot_configs()" in proc.stdout  # a module without them is noted
    (md,) = tmp_path.glob("gpu-compile-*.md")
    (js,) = tmp_path.glob("gpu-compile-*.json")
    mod = importlib.import_module("sae_fast.ops.triton_decoder")
    labels = [c.label for c in mod.aot_configs() if c.name == "decode_sparse"]
    table = [line for line in md.read_text().splitlines() if line.startswith("| decode_sparse")]
    assert len(table) == 2 * len(labels)
    assert {(label, arch) for label in labels for arch in ("sm_90a", "sm_80")} == {
        tuple(c.strip() for c in line.split("|")[2:4]) for line in table
    }
    doc = json.loads(js.read_text())
    assert doc["triton"] == triton.__version__ and "--only decode_sparse" in doc["command"]
    assert len(doc["rows"]) == len(table) and doc["violations"] == []
    assert all(r["ok"] and r["registers"] > 0 and r["status"] == "ok" for r in doc["rows"])


def test_gpu_compile_fails_on_a_violation_and_shares_compiles(tmp_path):
    pkg = tmp_path / "scratchmods"
    pkg.mkdir()
    (pkg / "aot_scratch.py").write_text(
        textwrap.dedent("""\
        import triton
        import triton.language as tl
        from sae_fast.ops.triton_aot import KernelConfig

        MIN_KEY = -(2**63)


        @triton.jit
        def fill(out_ptr, BLOCK: tl.constexpr, BAD: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            if BAD:
                tl.store(out_ptr + offs, tl.full([BLOCK], MIN_KEY, tl.int64))
            else:
                tl.store(out_ptr + offs, tl.full([BLOCK], 7, tl.int64))


        def aot_configs():
            sig = {"out_ptr": "*i64"}
            return [
                KernelConfig("scratch_fill", fill, sig, {"BLOCK": 64, "BAD": True}, label="bad"),
                KernelConfig("scratch_fill", fill, sig, {"BLOCK": 64, "BAD": False}, label="a"),
                KernelConfig("scratch_fill", fill, sig, {"BLOCK": 64, "BAD": False}, label="b"),
            ]
    """)
    )
    args = ["--module", "aot_scratch", "--only", "scratch_fill", "--arch", "90"]
    proc = _run_tool([*args, "--out", str(tmp_path)], extra_path=pkg)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(next(tmp_path.glob("gpu-compile-*.json")).read_text())
    assert doc["compiles"] == 2 and [r["label"] for r in doc["rows"]] == ["bad", "a", "b"]
    assert [r["compile_shared"] for r in doc["rows"]] == [False, False, True]
    assert [r["status"] for r in doc["rows"]] == ["FAIL", "ok", "ok"]
    assert len(doc["violations"]) == 1 and "compile error" in doc["violations"][0]
    assert "1 violation(s)" in proc.stdout and "[bad]" in proc.stdout

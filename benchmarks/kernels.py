"""Kernel suite: each hot op of a TopK SAE in sae_fast's kernels (native C++ on the CPU,
Triton on CUDA), in the reference's sparse torch form, and in the dense form a dense
implementation pays for, at the preset's shape. Every case is checked against
`sae_fast.ops.reference` before it is timed. `benchmarks/test_bench_kernels.py` times the
same cases under pytest-benchmark."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sae_fast.ops import reference as ref
from sae_fast.ops.dispatch import get_backend

from .common import OnRow, Shape, interleaved_medians, machine, rel_err, sync
from .train import gemm_fn
from .workloads import dense_topk, initial_state, tolerance

# (op, impl) of every case `cases` returns, in order.
CASE_IDS = [("encoder GEMM", "torch.matmul")] + [
    (op, impl)
    for op in ("encode topk", "sparse decode", "backward")
    for impl in ("sae_fast", "reference", "dense")
]


@dataclass
class Case:
    """One timed call: `op` done by `impl`."""

    op: str
    impl: str
    fn: Callable[[], object]


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"kernel check failed: {what}")


def cases(shape: Shape, device: str, x: Tensor | None = None, backend: str = "auto") -> list[Case]:
    """The cases at `shape`, each checked against the reference first."""
    dt = shape.torch_dtype
    st = initial_state(shape, device)
    if x is None:
        x = torch.randn(shape.B, shape.d_in, generator=torch.Generator().manual_seed(1))
    x = x[: shape.B].to(device=device, dtype=dt)
    W_enc, b_enc, W_dec, b_dec = (st[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    be = get_backend(backend, device, dt)
    tol = tolerance(shape.dtype)
    k = shape.k

    # encode
    with torch.no_grad():
        v, i = be.encode_topk(x, W_enc, b_enc, b_dec, k)
    want = ref.encode_topk(x, W_enc, b_enc, b_dec, k)
    agree = float((i == want.indices).all(-1).float().mean())
    _require(agree >= (1.0 if shape.dtype == "float32" else 0.9), f"encode indices {agree:.1%}")
    _require(rel_err(v, want.values) <= tol, f"encode values rel err {rel_err(v, want.values):.1e}")
    # The dense form has no tie rule: in fp32 (ties rare) its codes must be the reference's;
    # in bf16/fp16 most rows tie at the k-th value, so only the kept values must agree.
    with torch.no_grad():
        acts_dense = dense_topk(x, W_enc, b_enc, b_dec, k)  # [B, d_sae]
    if shape.dtype == "float32":
        err = rel_err(acts_dense, ref.densify(want.values, want.indices, shape.d_sae))
    else:
        kept = acts_dense.topk(k, dim=-1).values.sort(-1).values  # [B, k]
        err = rel_err(kept, want.values.sort(-1).values)
    _require(err <= tol, f"dense encode rel err {err:.1e}")

    # decode
    with torch.no_grad():
        got = be.decode_sparse(v, i, W_dec, b_dec)
    want_r = ref.decode_sparse(v, i, W_dec, b_dec)
    _require(rel_err(got, want_r) <= tol, f"decode rel err {rel_err(got, want_r):.1e}")

    # backward: sae_fast's autograd graph vs the explicit sparse and dense backward
    params = [t.clone().requires_grad_() for t in (W_enc, b_enc, W_dec, b_dec)]
    vv, ii = be.encode_topk(x, params[0], params[1], params[3], k)
    recon = be.decode_sparse(vv, ii, params[2], params[3])
    g = torch.randn_like(recon)
    grads = torch.autograd.grad(recon, params, g, retain_graph=True)
    want_g = ref.topk_backward(g, x, v, i, W_enc, W_dec, b_dec)
    for name, got_g, exp in zip(
        ("W_enc", "b_enc", "W_dec", "b_dec"),
        grads,
        (want_g.W_enc, want_g.b_enc, want_g.W_dec, want_g.b_dec),
        strict=True,
    ):
        _require(rel_err(got_g, exp) <= tol, f"backward d{name} rel err {rel_err(got_g, exp):.1e}")
    acts = ref.densify(v, i, shape.d_sae)  # [B, d_sae]
    mask = (acts > 0).to(dt)
    # the dense decode and backward, held to the same reference
    err = rel_err(ref.decode_dense(acts, W_dec, b_dec), want_r)
    _require(err <= tol, f"dense decode rel err {err:.1e}")
    dense_g = ref.dense_backward(g, x, acts, mask, W_enc, W_dec, b_dec)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        err = rel_err(getattr(dense_g, name), getattr(want_g, name))
        _require(err <= tol, f"dense backward d{name} rel err {err:.1e}")

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return fn()

        return run

    out = [
        Case("encoder GEMM", "torch.matmul", gemm_fn(x, st)),
        Case("encode topk", "sae_fast", no_grad(lambda: be.encode_topk(x, W_enc, b_enc, b_dec, k))),
        Case("encode topk", "reference", lambda: ref.encode_topk(x, W_enc, b_enc, b_dec, k)),
        Case("encode topk", "dense", lambda: dense_topk(x, W_enc, b_enc, b_dec, k)),
        Case("sparse decode", "sae_fast", no_grad(lambda: be.decode_sparse(v, i, W_dec, b_dec))),
        Case("sparse decode", "reference", lambda: ref.decode_sparse(v, i, W_dec, b_dec)),
        Case(
            "sparse decode",
            "dense",
            lambda: ref.decode_dense(ref.densify(v, i, shape.d_sae), W_dec, b_dec),
        ),
        Case(
            "backward",
            "sae_fast",
            lambda: torch.autograd.grad(recon, params, g, retain_graph=True),
        ),
        Case("backward", "reference", lambda: ref.topk_backward(g, x, v, i, W_enc, W_dec, b_dec)),
        Case(
            "backward",
            "dense",
            lambda: ref.dense_backward(g, x, acts, mask, W_enc, W_dec, b_dec),
        ),
    ]
    assert [(c.op, c.impl) for c in out] == CASE_IDS
    return out


def _peak_mb(fn: Callable[[], object], device: str) -> float | str:
    """Peak memory above the allocation before `fn()` (CUDA; blank on the CPU, where the
    memory suite measures fresh processes instead)."""
    if not device.startswith("cuda"):
        return ""
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync(device)
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)


def run(
    shape: Shape,
    device: str,
    repeats: int,
    x: Tensor | None = None,
    backend: str = "auto",
    on_row: OnRow | None = None,
) -> list[dict]:
    """Check and time every case; one row each, also handed to `on_row` as it is made."""
    all_cases = cases(shape, device, x, backend)
    times = interleaved_medians(
        {(c.op, c.impl): c.fn for c in all_cases}, repeats, warmup=1, device=device
    )
    gemm = times[("encoder GEMM", "torch.matmul")]
    rows = []
    print(f"kernel suite, {shape.label()} on {machine(device)}")
    for c in all_cases:
        ms = times[(c.op, c.impl)]
        dense = times.get((c.op, "dense"))
        rows.append(
            {
                "suite": "kernels",
                "op": c.op,
                "impl": c.impl,
                **shape.as_dict(),
                "ms": round(ms, 3),
                "x_gemm": round(ms / gemm, 3),
                "speedup_vs_dense": round(dense / ms, 3) if dense else "",
                "peak_mb": _peak_mb(c.fn, device),
                "check_err": "",
                "machine": machine(device),
            }
        )
        r = rows[-1]
        if on_row:
            on_row(r)
        vs = f"{r['speedup_vs_dense']:6.2f}x faster than dense" if dense else ""
        print(f"    {c.op:14s} {c.impl:13s} {ms:10.2f} ms {r['x_gemm']:6.2f}x GEMM  {vs}")
    return rows

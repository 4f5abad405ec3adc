"""GPU benchmark of the Triton path: encoder, decoder and the full TopK train step against
the cuBLAS encoder GEMM, the dense reference and torch.compile of the dense reference.

    python -m benchmarks.triton_step                      # d_in=4096 d_sae=131072 B=8192 k=64 bf16
    TRITON_INTERPRET=1 python -m benchmarks.triton_step --tiny --device cpu   # smoke run

Every timed op is first checked against `sae_fast.ops.reference`. Prints ms, TFLOP/s (of the
encoder GEMM's 2*B*d_in*d_sae flops), the ratio to that GEMM and peak extra memory, and
writes `benchmarks/results/<device>-<date>-triton_step.csv`. Target (DESIGN.md section 6):
step <= 1.25x the GEMM and no B x d_sae buffer; the optimizer step is reported apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import torch

from sae_fast import SparseAutoencoder

from .common import machine, median_ms, write_csv

RESULTS = Path(__file__).resolve().parent / "results"


def _peak_extra_mb(fn: Callable[[], object], device: str) -> float | None:
    """Peak memory above what was allocated before `fn()` (CUDA only)."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _check(sae_t: SparseAutoencoder, sae_r: SparseAutoencoder, x: torch.Tensor) -> None:
    """Triton vs reference on up to 256 rows, before anything is timed."""
    rows = x[:256]
    out_t, out_r = sae_t(rows), sae_r(rows)
    agree = (out_t.indices == out_r.indices).all(-1).float().mean().item()
    scale = out_r.reconstruction.float().norm()
    err = ((out_t.reconstruction.float() - out_r.reconstruction.float()).norm() / scale).item()
    if agree < 0.95 or err > 0.05:
        raise SystemExit(
            f"correctness check failed: rows with equal indices {agree:.1%}, "
            f"relative recon error {err:.2e}"
        )
    print(f"check vs reference: {agree:.1%} rows with identical indices, recon rel err {err:.1e}")


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; returns the result rows (also printed and written as CSV)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--d-in", type=int, default=4096)
    p.add_argument("--d-sae", type=int, default=131072)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tiny", action="store_true", help="tiny shapes in fp32 (smoke test)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.tiny:
        a.d_in, a.d_sae, a.batch, a.k, a.dtype, a.repeats = 32, 256, 64, 8, "float32", 1
    dtype = getattr(torch, a.dtype)
    dev = a.device

    torch.manual_seed(0)
    sae_t = SparseAutoencoder(a.d_in, a.d_sae, k=a.k, backend="triton", dtype=dtype, device=dev)
    sae_r = SparseAutoencoder(a.d_in, a.d_sae, k=a.k, backend="torch", dtype=dtype, device=dev)
    sae_r.load_state_dict(sae_t.state_dict())
    x = torch.randn(a.batch, a.d_in, device=dev, dtype=dtype)
    _check(sae_t, sae_r, x)
    xc = x - sae_t.b_dec.detach()

    def gemm():
        return xc @ sae_t.W_enc.detach()

    def step(sae):
        def run():
            sae.zero_grad(set_to_none=True)
            out = sae(x)
            (out.reconstruction - x).float().pow(2).sum().backward()

        return run

    opt = torch.optim.Adam(sae_t.parameters(), lr=1e-4, fused=dev.startswith("cuda"))
    step(sae_t)()  # grads exist for the optimizer row
    with torch.no_grad():
        v, i = sae_t.encode_sparse(x)
    rows: list[tuple[str, Callable[[], object]]] = [
        ("encoder GEMM (cuBLAS/torch)", gemm),
        ("triton encode topk", lambda: sae_t.encode_sparse(x)),
        ("triton sparse decode", lambda: sae_t.decode_sparse(v, i)),
        ("triton train step fwd+bwd", step(sae_t)),
        ("dense reference step fwd+bwd", step(sae_r)),
        ("optimizer step (Adam)", opt.step),
    ]
    if not a.no_compile and not a.tiny:
        compiled = torch.compile(sae_r)
        rows.append(("torch.compile dense step", step(compiled)))

    flops = 2 * a.batch * a.d_in * a.d_sae
    dense_buffer_mb = a.batch * a.d_sae * dtype.itemsize / 2**20
    print(f"B={a.batch} d_in={a.d_in} d_sae={a.d_sae} k={a.k} {a.dtype} on {machine(dev)}")
    print(f"{'op':32s} {'ms':>9s} {'TFLOP/s':>8s} {'x GEMM':>7s} {'peak MB':>9s}")
    results: list[dict] = []
    gemm_ms = None
    for name, fn in rows:
        ms = median_ms(fn, a.repeats, warmup=1, device=dev)
        gemm_ms = gemm_ms or ms
        peak = _peak_extra_mb(fn, dev)
        row = {
            "op": name,
            "ms": round(ms, 3),
            "tflops": round(flops / ms / 1e9, 2),
            "ratio_to_gemm": round(ms / gemm_ms, 3),
            "peak_extra_mb": None if peak is None else round(peak, 1),
            "B": a.batch,
            "d_in": a.d_in,
            "d_sae": a.d_sae,
            "k": a.k,
            "dtype": a.dtype,
            "device": machine(dev),
        }
        results.append(row)
        peak_s = "-" if peak is None else f"{peak:9.0f}"
        print(f"{name:32s} {ms:9.2f} {row['tflops']:8.1f} {row['ratio_to_gemm']:7.2f} {peak_s:>9s}")
    print(f"(a B x d_sae buffer in {a.dtype} is {dense_buffer_mb:.0f} MB)")

    tag = "cuda" if dev.startswith("cuda") else "cpu-interpreter"
    write_csv(results, a.out / f"{tag}-{dt.date.today().isoformat()}-triton_step.csv")
    return results


if __name__ == "__main__":
    main()

"""Sparse decode: native C++ kernel vs the reference (embedding_bag) vs a dense decode.

    python -m benchmarks.sparse_decode [--B 4096] [--d-in 384] [--d-sae 12288] [--k 32]

Checks the kernel against the reference first, then prints medians and ratios. The dense
decode (`densify` + matmul) is what a dense implementation pays for the same result.
"""

from __future__ import annotations

import argparse

import torch

from sae_fast.ops import native
from sae_fast.ops import reference as ref

from .common import machine, median_ms


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a small table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=4096)
    p.add_argument("--d-in", type=int, default=384)
    p.add_argument("--d-sae", type=int, default=12288)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    W = torch.randn(a.d_sae, a.d_in, generator=g)
    b = torch.randn(a.d_in, generator=g)
    v = torch.rand(a.B, a.k, generator=g)
    i = torch.randint(0, a.d_sae, (a.B, a.k), generator=g)
    want = ref.decode_sparse(v, i, W, b)
    dense = ref.densify(v, i, a.d_sae)
    torch.testing.assert_close(ref.decode_dense(dense, W, b), want, rtol=1e-4, atol=1e-4)

    rows = {
        "reference (embedding_bag)": lambda: ref.decode_sparse(v, i, W, b),
        "dense (densify + matmul)": lambda: ref.decode_dense(ref.densify(v, i, a.d_sae), W, b),
    }
    if native.NATIVE_AVAILABLE:
        torch.testing.assert_close(native.sparse_decode(v, i, W, b), want, rtol=1e-4, atol=1e-4)
        rows["native C++"] = lambda: native.sparse_decode(v, i, W, b)
    print(f"sparse decode B={a.B} d_in={a.d_in} d_sae={a.d_sae} k={a.k} fp32 on {machine()}")
    times = {name: median_ms(fn, a.repeats) for name, fn in rows.items()}
    base = times["dense (densify + matmul)"]
    for name, ms in times.items():
        print(f"  {name:28s} {ms:9.2f} ms   {base / ms:6.1f}x vs dense")


if __name__ == "__main__":
    main()

"""CPU benchmark of the native backend (DESIGN.md section 6, CPU rows).

    python -m benchmarks.cpu_step            # full sizes, about two minutes on 2 cores
    python -m benchmarks.cpu_step --small    # smoke run

1. TopK train step (forward + backward + Adam) at d_in=384, d_sae=12288, B=4096, k=32, fp32,
   against the encoder GEMM alone and the dense reference step (DESIGN.md section 3: dense
   [B, d_sae] codes, dense decode and dense backward GEMMs, `ref.encode_dense` +
   `ref.decode_dense`), measured side by side in one process; the `torch` backend (reference
   TopK + embedding_bag sparse decode) is shown too. Targets: <= 1.3x GEMM, >= 4x faster
   than the dense reference.
2. Encode at d_in=384, d_sae=65536, B=8192: peak resident memory of a fresh subprocess that
   does only the encode, minus its baseline (Linux: VmHWM after resetting it via
   /proc/self/clear_refs). Target: < 0.2x one B x d_sae fp32 buffer.

Results are printed and written to `benchmarks/results/cpu-<date>-cpu_step.csv`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import torch

from sae_fast import SparseAutoencoder
from sae_fast.ops import reference as ref

from .common import machine, median_ms, write_csv

RESULTS = Path(__file__).resolve().parent / "results"

# The peak (VmHWM) is reset to the current RSS just before the encode (Linux clear_refs),
# so the SAE's own initialisation peak cannot hide the encode's.
_ENCODE_CHILD = """
import json, sys, torch
import sae_fast

def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

d_in, d_sae, B, k, backend = json.loads(sys.argv[1])
torch.manual_seed(0)
sae = sae_fast.SparseAutoencoder(d_in, d_sae, k=k, backend=backend).requires_grad_(False)
x = torch.randn(B, d_in)
sae.encode_sparse(x[:8])  # load kernels
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS to the current RSS
base = status_kb("VmRSS")
with torch.no_grad():
    v, i = sae.encode_sparse(x)
peak = status_kb("VmHWM")
print(json.dumps({"peak_extra_mb": (peak - base) / 1024}))
"""


def encode_peak_extra_mb(d_in: int, d_sae: int, B: int, k: int, backend: str) -> float:
    """Peak RSS growth (MiB) of a fresh process during one `encode_sparse` call."""
    out = subprocess.run(
        [sys.executable, "-c", _ENCODE_CHILD, json.dumps([d_in, d_sae, B, k, backend])],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mb"])


def _step_fn(sae: SparseAutoencoder, x: torch.Tensor, dense: bool = False):
    """One Adam step on the MSE; `dense` uses the dense formulation of the reference
    (dense [B, d_sae] codes, acts @ W_dec, dense backward GEMMs) instead of sae(x)."""
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)  # same for every row

    def reconstruct() -> torch.Tensor:
        if not dense:
            return sae(x).reconstruction
        acts = ref.encode_dense(x, sae.W_enc, sae.b_enc, sae.b_dec, "topk", sae.k)
        return ref.decode_dense(acts, sae.W_dec, sae.b_dec)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (reconstruct() - x).pow(2).sum(-1).mean().backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> list[dict]:
    """Run both benchmarks; returns the result rows."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="small shapes (smoke run)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    d_in, d_sae, B, k = (32, 512, 256, 8) if a.small else (384, 12288, 4096, 32)
    enc = (32, 2048, 512, 8) if a.small else (384, 65536, 8192, 32)
    repeats = 1 if a.small else a.repeats

    torch.manual_seed(0)
    nat = SparseAutoencoder(d_in, d_sae, k=k, backend="native")
    dense = SparseAutoencoder(d_in, d_sae, k=k, backend="torch")
    dense.load_state_dict(nat.state_dict())
    x = torch.randn(B, d_in)
    # Correctness before timing: same code, same reconstruction.
    with torch.no_grad():
        on, od = nat(x[:512]), dense(x[:512])
    same = (on.indices == od.indices).all(-1).float().mean().item()
    err = float((on.reconstruction - od.reconstruction).abs().max())
    if same < 0.99 or err > 1e-3:
        raise SystemExit(f"native disagrees with the reference: {same:.1%} rows, err {err:.2e}")
    xc = x - nat.b_dec.detach()
    W = nat.W_enc.detach()

    pre = torch.empty(B, d_sae)  # preallocated: time the GEMM, not page faults on its output
    rows = [
        ("encoder GEMM alone", lambda: torch.matmul(xc, W, out=pre)),
        ("native TopK step (fwd+bwd+Adam)", _step_fn(nat, x)),
        ("torch backend step (fwd+bwd+Adam)", _step_fn(dense, x)),
        ("dense reference step (fwd+bwd+Adam)", _step_fn(dense, x, dense=True)),
    ]
    print(f"TopK train step d_in={d_in} d_sae={d_sae} B={B} k={k} fp32 on {machine()}")
    print(f"check: {same:.1%} rows with identical indices, max recon diff {err:.1e}")
    results: list[dict] = []
    times = {name: median_ms(fn, repeats, warmup=1) for name, fn in rows}
    gemm = times["encoder GEMM alone"]
    ref_ms = times["dense reference step (fwd+bwd+Adam)"]
    for name, ms in times.items():
        print(
            f"  {name:38s} {ms:9.1f} ms  {ms / gemm:5.2f}x GEMM  {ref_ms / ms:5.2f}x faster "
            "than dense"
        )
        results.append(
            {
                "benchmark": "train_step",
                "op": name,
                "ms": round(ms, 2),
                "ratio_to_gemm": round(ms / gemm, 3),
                "speedup_vs_dense": round(ref_ms / ms, 3),
                "value": "",
                "shape": f"d_in={d_in} d_sae={d_sae} B={B} k={k} fp32",
            }
        )

    buffer_mb = enc[2] * enc[1] * 4 / 2**20
    for backend in ("native", "torch"):
        mb = encode_peak_extra_mb(*enc, backend)
        print(
            f"  encode peak extra memory ({backend:6s}) {mb:9.1f} MiB = {mb / buffer_mb:.3f}x "
            f"of a B x d_sae fp32 buffer ({buffer_mb:.0f} MiB)"
        )
        results.append(
            {
                "benchmark": "encode_memory",
                "op": f"encode ({backend})",
                "ms": "",
                "ratio_to_gemm": "",
                "speedup_vs_dense": "",
                "value": round(mb / buffer_mb, 4),
                "shape": f"d_in={enc[0]} d_sae={enc[1]} B={enc[2]} k={enc[3]} fp32",
            }
        )

    for r in results:
        r["machine"] = machine()
    write_csv(results, a.out / f"cpu-{dt.date.today().isoformat()}-cpu_step.csv")
    return results


if __name__ == "__main__":
    main()

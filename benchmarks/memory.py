"""Memory suite: peak memory of one encode and of one training step, each in a fresh
process (the peer environment's interpreter for sparsify and SAELens).

CPU: peak resident memory (VmHWM, reset to the current RSS through /proc/self/clear_refs
just before the measured call) minus the RSS before it. CUDA: torch's peak allocation
minus the allocation before it. Both are reported in MiB and as a multiple of one
`[B, d_sae]` buffer, which is what a dense implementation allocates at least once.

    python -m benchmarks.memory '{"impl": "sae_fast", "op": "encode", "shape": {...}}'  (child)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from .common import OnRow, Shape, machine

ROOT = Path(__file__).resolve().parents[1]


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _measure(fn, device: str) -> float:
    """Peak MiB above the baseline during `fn()`."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    base = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - base) / 1024


def child(spec: dict) -> float:
    """Build the implementation, warm it up, and measure one call (runs in the child)."""
    from .workloads import initial_state, make_impl, make_step

    shape, device = Shape(**spec["shape"]), spec["device"]
    impl = make_impl(spec["impl"], shape, initial_state(shape, device), spec["backend"])
    x = torch.randn(shape.B, shape.d_in, generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=shape.torch_dtype)
    if spec["op"] == "encode":
        with torch.no_grad():
            impl.encode(x[:8])  # load the kernels

            def fn():
                return impl.encode(x)

            return _measure(fn, device)
    step = make_step(impl, x)
    step()  # Adam's state and the gradients exist from here on
    return _measure(step, device)


def peak_mb(
    impl: str, op: str, shape: Shape, device: str, python: str | None = None, backend: str = "auto"
) -> float:
    """Run `child` in a fresh process of `python` (default: this interpreter)."""
    spec = {"impl": impl, "op": op, "shape": shape.as_dict(), "device": device, "backend": backend}
    out = subprocess.run(
        [python or sys.executable, "-m", "benchmarks.memory", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise SystemExit(f"memory child for {impl} {op} failed:\n{out.stderr[-3000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def run(
    encode_shape: Shape,
    step_shape: Shape,
    impls: list[str],
    device: str,
    peer_python: str | None = None,
    backend: str = "auto",
    on_row: OnRow | None = None,
) -> list[dict]:
    """One row per (op, implementation), each handed to `on_row` as soon as it is measured."""
    from .workloads import PEERS

    rows = []
    print(f"memory suite on {machine(device)} (fresh process per row)")
    for op, shape in (("encode", encode_shape), ("train step", step_shape)):
        buffer_mb = shape.B * shape.d_sae * 4 / 2**20
        for impl in impls:
            if impl == "compile" or (op == "encode" and impl == "sae_fast[torch]"):
                continue  # compile: same buffers as dense; torch backend encode = reference
            py = peer_python if impl in PEERS else None
            mb = peak_mb(impl, "step" if op == "train step" else op, shape, device, py, backend)
            rows.append(
                {
                    "suite": "memory",
                    "op": op,
                    "impl": impl,
                    **shape.as_dict(),
                    "peak_mb": round(mb, 1),
                    "x_buffer": round(mb / buffer_mb, 4),
                    "machine": machine(device),
                }
            )
            if on_row:
                on_row(rows[-1])
            print(
                f"    {op:10s} {impl:16s} {mb:9.1f} MiB = {mb / buffer_mb:6.3f}x one "
                f"[B, d_sae] fp32 buffer ({buffer_mb:.0f} MiB) at {shape.label()}"
            )
    return rows


if __name__ == "__main__":
    print(json.dumps({"peak_mb": child(json.loads(sys.argv[1]))}))

"""The native CPU training step at awkward shapes (issue 16, point 8): one TopK step of
`SparseAutoencoder(backend="native")` (zero_grad, forward, loss, backward, fused Adam)
against the encoder GEMM alone, at a small dictionary, a wide one with a large k, and
docs/design.md's CPU shape.

    python -m benchmarks.cpu_step                 # all three, writes results/cpu-step-<date>.md
    python -m benchmarks.cpu_step --shapes 4x --repeats 9 --out /tmp/b

Each shape is checked against the dense reference first, then timed with the GEMM in
interleaved rounds (`benchmarks.train.time_shape`), so load on a shared machine touches
both alike. Targets: <= 1.5x GEMM at the two awkward shapes, <= 1.3x at DESIGN's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from . import data
from .common import RESULTS, Shape, machine
from .train import time_shape

# name -> (shape, target ratio to the encoder GEMM)
SHAPES: dict[str, tuple[Shape, float]] = {
    "4x": (Shape(384, 1536, 4096, 32), 1.5),  # 4x dictionary: the GEMM is small
    "wide-k64": (Shape(768, 24576, 2048, 64), 1.5),
    "design": (Shape(384, 12288, 4096, 32), 1.3),  # docs/design.md section 6, the CPU row
}


def run(names: list[str], repeats: int, source: str) -> list[dict]:
    """Time the step at the named shapes; one row per shape with both timings."""
    rows = []
    for name in names:
        shape, target = SHAPES[name]
        x, where = data.activations(shape.B, shape.d_in, source)
        timed = {r["impl"]: r for r in time_shape(shape, x, ["sae_fast"], repeats, "cpu")}
        step, gemm = timed["sae_fast"], timed["torch.matmul"]
        row = {
            "name": name,
            "shape": shape.label(),
            "gemm_ms": gemm["ms"],
            "step_ms": step["ms"],
            "x_gemm": step["x_gemm"],
            "target": target,
            "met": step["x_gemm"] <= target,
            "data": where,
        }
        verdict = "met" if row["met"] else "MISSED"
        print(
            f"{name:9s} {shape.label():40s} GEMM {gemm['ms']:8.1f} ms  step {step['ms']:8.1f} ms"
            f"  {step['x_gemm']:5.2f}x GEMM (target <= {target}x: {verdict})"
        )
        rows.append(row)
    return rows


def markdown(rows: list[dict], command: str, repeats: int) -> str:
    """The results as a small markdown report."""
    lines = [
        f"# Native CPU train step vs the encoder GEMM, {dt.date.today().isoformat()}",
        "",
        f"- machine: {machine('cpu')}",
        f"- command: `{command}`",
        f"- timing: median of {repeats} rounds, step and GEMM interleaved within a round",
        "- step: zero_grad, TopK encode, sparse decode, loss (squared error summed over d_in,"
        " mean over rows), backward, `torch.optim.Adam(fused=True)`; fp32",
        "",
        "| shape | data | GEMM ms | step ms | x GEMM | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        met = "met" if r["met"] else "MISSED"
        lines.append(
            f"| {r['shape']} | {r['data']} | {r['gemm_ms']:.1f} | {r['step_ms']:.1f} "
            f"| {r['x_gemm']:.2f} | <= {r['target']} ({met}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    """Entry point of `python -m benchmarks.cpu_step`."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_step", description=__doc__)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {list(SHAPES)}")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per shape")
    p.add_argument("--data", choices=["auto", "minilm", "random"], default="auto")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    names = [n.strip() for n in a.shapes.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown or not names:
        raise SystemExit(f"unknown shape(s) {unknown or a.shapes!r}; known: {', '.join(SHAPES)}")
    rows = run(names, a.repeats, a.data)
    command = "python -m benchmarks.cpu_step " + " ".join(sys.argv[1:] if argv is None else argv)
    path = a.out / f"cpu-step-{dt.date.today().isoformat()}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(rows, command.strip(), a.repeats))
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()

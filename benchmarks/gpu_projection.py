"""Projected GPU times of the TopK step as ratios to the cuBLAS encoder GEMM (issue 16, 5).

    python -m benchmarks.gpu_projection [--compile benchmarks/results/gpu-compile-<date>.json]

Reads the compiled kernels' figures from the newest `gpu-compile-*.json` (`make gpu-compile`):
the fused TopK kernel's SASS beyond the plain dense encoder's (same GEMM main loop, so the
difference is the filter epilogue), its registers and warps; feeds them to
`sae_fast.ops.gpu_model`, and writes `benchmarks/results/gpu-projection-<date>.md`.
Projected, not measured: the assumptions are the model's constants, printed in the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

from sae_fast.formats import atomic_file
from sae_fast.ops import gpu_model as gm

from .common import PRESETS, RESULTS


def _row(rows: list[dict], name: str, label_part: str, arch: int = 90) -> dict:
    for r in rows:
        if r["name"] == name and label_part in r["label"] and r["arch"] == arch:
            return r
    raise SystemExit(f"no {name} row with {label_part!r} for sm_{arch} in the compile report")


def stats_from_compile(rows: list[dict]) -> gm.FusedKernelStats:
    """The fused kernel's epilogue size: its SASS count minus the dense encoder's."""
    fused = _row(rows, "encoder_topk_fused", "bf16 k=64 prec=0")
    dense = _row(rows, "encoder_dense", "bf16 relu")
    epi = max(0, int(fused["sass_instructions"]) - int(dense["sass_instructions"]))
    return replace(gm.FusedKernelStats(), epilogue_instructions=epi)


def main(argv: list[str] | None = None) -> Path:
    """Write the projection report; returns its path."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_projection")
    p.add_argument("--compile", type=Path, default=None, help="a gpu-compile JSON")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    src = a.compile or max(RESULTS.glob("gpu-compile-*.json"))
    rows = json.loads(src.read_text())["rows"]
    stats = stats_from_compile(rows)
    s = PRESETS["cuda"]
    date = dt.date.today().isoformat()
    lines = [
        f"# GPU projection, {date} (projected from compiled kernels, not measured)",
        "",
        f"Shape: d_in={s.d_in}, d_sae={s.d_sae}, B={s.B}, k={s.k}, {s.dtype}. "
        f"Compile figures from `{src.name}`: fused TopK kernel (bf16, k=64, sm_90a) "
        f"{stats.epilogue_instructions} SASS instructions beyond the dense encoder's, "
        f"{stats.block_m}x{stats.block_n} tiles, {stats.num_warps} warps.",
        "",
        "| kernel | H100 x GEMM | H200 x GEMM |",
        "|---|---:|---:|",
    ]
    h100 = gm.step_ratios(s.B, s.d_in, s.d_sae, s.k, stats, "H100")
    h200 = gm.step_ratios(s.B, s.d_in, s.d_sae, s.k, stats, "H200")
    for name in h100:
        lines.append(f"| {name} | {h100[name]:.3f} | {h200[name]:.3f} |")
    choice = gm.choose_encoder(s.B, s.d_in, s.d_sae, s.k, stats)
    gemm_ms = gm.gemm_seconds(s.B, s.d_in, s.d_sae) * 1e3
    lines += [
        "",
        f"Encoder GEMM projected at {gemm_ms:.1f} ms. Dispatch (static model): **{choice}**.",
        "",
        "## Assumptions (sae_fast/ops/gpu_model.py)",
        "",
        f"- {gm.SMS} SMs at {gm.CLOCK_HZ / 1e9:.3f} GHz, {gm.SCHEDULERS} warp schedulers per SM;",
        f"- dense bf16 tensor peak {gm.DENSE_BF16_FLOPS / 1e12:.0f} TFLOP/s, GEMMs (cuBLAS and "
        f"the fused main loop) at {gm.GEMM_EFFICIENCY:.0%} of it;",
        f"- HBM {gm.HBM_BYTES_PER_S['H100'] / 1e12:.2f} TB/s (H100), "
        f"{gm.HBM_BYTES_PER_S['H200'] / 1e12:.1f} TB/s (H200), streams and row gathers at "
        f"{gm.BANDWIDTH_EFFICIENCY:.0%}; L2 {gm.L2_BYTES_PER_S / 1e12:.0f} TB/s;",
        "- the fused epilogue does not overlap its own main loop (one CTA per SM), costs its "
        f"static SASS per tile x warps / schedulers, with {stats.emit_fraction:.0%} of the "
        "emission branches taken, plus the L2 round trip of the fp32 tile;",
        f"- torch.topk: {gm.TOPK_PASSES} radix passes over the data;",
        "- sparsify's line is modelled from the structure of its code, not measured.",
    ]
    out = a.out / f"gpu-projection-{date}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()

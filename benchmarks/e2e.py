"""End-to-end throughput of `sae-fast train` on the embedded default (MiniLM, layer 3
residual, the standard-library corpus): tokens per second of activation collection (model
forward passes) and of SAE optimisation steps, read from the run's `timings.json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import OnRow, machine

# (max_tokens collected, steps, batch size, expansion, k) per preset
SIZES = {"cpu": (65536, 60, 4096, 32, 32), "cuda": (65536, 200, 4096, 32, 32)}
SMALL = (1024, 4, 256, 4, 8)


def run(preset: str, device: str, on_row: OnRow | None = None) -> list[dict]:
    """Run `sae-fast train` in a subprocess and report its timings (one row per phase, each
    also handed to `on_row`)."""
    max_tokens, steps, batch, expansion, k = SIZES.get(preset, SMALL)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "sae_fast.cli", "train",
            "--max-tokens", str(max_tokens), "--steps", str(steps),
            "--batch-size", str(batch), "--expansion", str(expansion), "--k", str(k),
            "--checkpoint-every", "0", "--no-progress", "--out", tmp,
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if device.startswith("cuda"):
            env.setdefault("CUDA_VISIBLE_DEVICES", "0")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if out.returncode != 0:
            raise SystemExit(f"sae-fast train failed:\n{out.stderr[-3000:]}")
        t = json.loads((Path(tmp) / "timings.json").read_text())
    total = t["collect_seconds"] + t["train_seconds"]
    what = f"embedded default, {max_tokens} tokens, {steps} steps x {batch}, {expansion}x, k={k}"
    print(f"end to end: `sae-fast train`, {what}, on {machine(device)}")
    rows = []
    for phase, key in (("activation collection", "collect"), ("SAE steps", "train")):
        sec, tok_s = t[f"{key}_seconds"], t[f"{key}_tokens_per_s"]
        print(f"    {phase:22s} {sec:7.1f} s {tok_s:12,.0f} tok/s  {sec / total:5.1%} of the time")
        rows.append(
            {
                "suite": "e2e",
                "op": phase,
                "impl": "sae-fast train",
                "d_in": 384,
                "d_sae": 384 * expansion,
                "B": batch,
                "k": k,
                "dtype": "float32",
                "seconds": round(sec, 2),
                "tokens_per_s": round(tok_s, 1),
                "share": round(sec / total, 3),
                "machine": machine(device),
            }
        )
        if on_row:
            on_row(rows[-1])
    return rows

"""The benchmark runner.

    python -m benchmarks run --device cpu --suite all
    python -m benchmarks run --device cuda --suite kernels,train,peers
    python -m benchmarks run --preset small --suite kernels,train,memory --out /tmp/b  # smoke
    python -m benchmarks recipe --tokens 204800 --batches 1024,4096 --expansions 8  # recipes

Suites: kernels (each op vs the reference and the dense form), train (the training step
against the encoder GEMM, the dense reference and torch.compile of it, at the preset's
shape and across dictionary and batch sizes), memory (peak memory, fresh processes),
peers (adds sparsify and SAELens to train and memory; needs `benchmarks/peers/setup.sh`),
e2e (`sae-fast train` throughput on the embedded default); all = every one (peers when
its environment exists). Every result is checked against the reference before it is
timed. Writes `<out>/<device>-<date>.csv` row by row as the suites go (a failure keeps the
rows before it), then `.md` and `.png` at the end.

`recipe` (benchmarks/recipe.py, its own flags: `python -m benchmarks recipe --help`) compares
the training recipes of sae_fast, sparsify and SAELens at equal tokens: held-out FVU, L0 and
dead latents of TopK SAEs each library trains with its own trainer and defaults.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from . import data, report
from .common import ENCODE_MEMORY, PRESETS, RESULTS, OnRow, RowWriter, Shape, machine, write_csv
from .train import sweep_shapes

SUITES = ("kernels", "train", "memory", "peers", "e2e")
ROOT = Path(__file__).resolve().parents[1]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run suites, print tables, write CSV, markdown and PNG")
    r.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if any")
    r.add_argument("--suite", default="all", help=f"comma list of {', '.join(SUITES)}, or all")
    r.add_argument("--preset", choices=list(PRESETS), default=None, help="default: the device's")
    r.add_argument("--backend", default="auto", help="sae_fast backend (auto: native/triton)")
    r.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5, CUDA 10)")
    r.add_argument("--data", choices=["auto", "minilm", "random"], default="auto")
    r.add_argument("--no-compile", action="store_true", help="leave out torch.compile(dense)")
    r.add_argument("--no-sweep", action="store_true", help="only the preset's shape")
    r.add_argument("--out", type=Path, default=RESULTS)
    # `recipe` is parsed by benchmarks/recipe.py (main() hands it over before this parser)
    sub.add_parser("recipe", help="training recipes at equal tokens (own flags: recipe --help)")
    c = sub.add_parser("train-child", help=argparse.SUPPRESS)  # the peer environment's side
    c.add_argument("spec")
    return p.parse_args(argv)


def _suites(text: str, peers_ready: bool) -> list[str]:
    asked = [s.strip() for s in text.split(",") if s.strip()]
    if asked == ["all"]:
        chosen = [s for s in SUITES if s != "peers" or peers_ready]
        if not peers_ready:
            print("note: peers left out: no peer environment (bash benchmarks/peers/setup.sh)")
        return chosen
    bad = [s for s in asked if s not in SUITES]
    if bad or not asked:
        raise SystemExit(f"unknown suite(s) {bad or text!r}: choose from {', '.join(SUITES)}, all")
    if "peers" in asked and "train" not in asked:
        asked.append("train")  # peers are timed inside the train suite
    return asked


def _train_in_peer_env(spec: dict, x: torch.Tensor, on_row: OnRow) -> None:
    """Run the train suite inside the peer environment (one process for every library).
    The child appends each row to a JSON-lines file; the rows it got to reach `on_row`
    also when it fails."""
    from . import peers

    with tempfile.TemporaryDirectory() as tmp:
        data.save(x, Path(tmp) / "x.safetensors")
        out = Path(tmp) / "rows.jsonl"
        spec = {**spec, "data": str(Path(tmp) / "x.safetensors"), "out": str(out)}
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        cmd = [str(peers.python()), "-m", "benchmarks", "train-child", json.dumps(spec)]
        done = subprocess.run(cmd, cwd=ROOT, env=env, timeout=7200)
        lines = out.read_text().splitlines() if out.exists() else []
        for line in lines:
            on_row(json.loads(line))
        if done.returncode != 0:
            raise SystemExit(f"the train suite in the peer environment failed ({done.returncode})")


def _train_child(spec_text: str) -> None:
    from . import train

    spec = json.loads(spec_text)

    def append(row: dict) -> None:
        with open(spec["out"], "a") as f:
            f.write(json.dumps(row) + "\n")

    train.run(
        Shape(**spec["shape"]),
        data.load(Path(spec["data"])),
        spec["impls"],
        spec["repeats"],
        spec["device"],
        sweep=spec["sweep"],
        backend=spec["backend"],
        on_row=append,
    )


def _stem(device: str, preset: str) -> str:
    date = dt.date.today().isoformat()
    return f"{device}-{date}" if preset == device else f"{device}-{preset}-{date}"


def run(a: argparse.Namespace) -> list[dict]:
    """Run the chosen suites; returns every row (each written to disk as it is made)."""
    from . import peers

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    preset = a.preset or device
    main, enc = PRESETS[preset], ENCODE_MEMORY[preset]
    repeats = a.repeats or (1 if preset == "small" else 10 if device == "cuda" else 5)
    a.repeats_used = repeats
    suites = _suites(a.suite, peers.ready())
    impls = ["sae_fast", "sae_fast[torch]", "dense"] + ([] if a.no_compile else ["compile"])
    if "peers" in suites:
        impls += ["sparsify", "saelens"]
    stem = _stem(device, preset)
    writer = RowWriter(a.out / f"{stem}.csv")  # nothing is written before the first row
    x, source = None, ""
    if {"kernels", "train"} & set(suites):
        n = max(s.B for s in ([main] if a.no_sweep else sweep_shapes(main)))
        x, source = data.activations(n, main.d_in, a.data)
    if "kernels" in suites:
        from . import kernels

        kernels.run(main, device, repeats, x, a.backend, on_row=writer)
    if "train" in suites:
        spec = {
            "shape": main.as_dict(),
            "impls": impls,
            "repeats": repeats,
            "device": device,
            "sweep": not a.no_sweep,
            "backend": a.backend,
        }
        if "peers" in suites:
            _train_in_peer_env(spec, x, writer)
        else:
            from . import train

            train.run(main, x, impls, repeats, device, not a.no_sweep, a.backend, on_row=writer)
    if "memory" in suites:
        from . import memory

        peer_py = str(peers.python()) if "peers" in suites else None
        memory.run(enc, main, impls, device, peer_py, a.backend, on_row=writer)
    if "e2e" in suites:
        from . import e2e

        e2e.run(preset, device, on_row=writer)
    _write(writer.rows, a, device, stem, main, source)
    return writer.rows


def _write(
    rows: list[dict], a: argparse.Namespace, device: str, stem: str, main: Shape, source: str
) -> None:
    """The whole run's CSV (already on disk row by row; written once more so it is
    announced), markdown report and plot."""
    date = dt.date.today().isoformat()
    meta = {
        "date": date,
        "machine": machine(device),
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if a.argv is None else a.argv),
        "data": source or "-",
        "timing": f"median of {a.repeats_used} rounds, implementations interleaved within a round",
    }
    write_csv(rows, a.out / f"{stem}.csv")
    report.write_markdown(report.markdown(rows, device, main, meta), a.out / f"{stem}.md")
    report.plot(rows, main, f"TopK train step, {meta['machine']}, {date}", a.out / f"{stem}.png")
    checks = report.targets(rows, device, main)
    for text, ok in checks:
        print(f"{'met' if ok else 'MISSED'}: {text}")


def main(argv: list[str] | None = None) -> list[dict] | None:
    """Entry point of `python -m benchmarks`."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "recipe":
        from . import recipe

        return recipe.main(args[1:])
    a = _parse(argv)
    if a.command == "train-child":
        _train_child(a.spec)
        return None
    a.argv = argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run(a)


if __name__ == "__main__":
    main()

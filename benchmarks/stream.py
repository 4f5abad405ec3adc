"""The data engine, measured (issue 18): streaming against collect-then-train, the overlap
of producer and consumer, peak RSS as --max-tokens grows with the buffer fixed, and 4 SAEs
from one forward pass against 4 separate runs. Every case runs in its own process (peak
RSS is per process); ratios come from one run of this script.

    python -m benchmarks.stream [--device cuda] [--tokens N] [--out DIR]

Writes `benchmarks/results/stream-<device>-<date>.md` and `.json`. `--device cuda` is the
GPU variant for the one-call GPU check (model forwards and SAE steps on the GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WIDTHS = (2, 4, 8, 16)
# per model: the four hooks of the 4-SAE cases, and the hook of every other case
MODELS = {
    "embedded": ("layers.1.residual,layers.2.residual,layers.3.residual,layers.4.residual",
                 "layers.3.residual"),
    "smollm2": ("layers.3.residual,layers.5.residual,layers.7.residual,layers.9.residual",
                "layers.9.residual"),
}  # fmt: skip
MODEL = os.environ.get("SAE_FAST_BENCH_MODEL", "embedded")
HOOKS4, HOOK = MODELS[MODEL]


def _config(tokens: int, device: str, out: str, **kw):
    from sae_fast import TrainConfig

    batch = 512
    base = dict(model=MODEL, hook=HOOK,
        max_tokens=tokens, steps=max(1, tokens // batch), batch_size=batch, expansion=8,
        k=32, buffer_tokens=16384, checkpoint_every=0, progress=False, device=device,
        out=out, log_every=10**9,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def case(name: str, tokens: int, device: str) -> dict:
    """One measurement, in this process: tokens/s and peak RSS."""
    import torch

    from sae_fast.data import feeds
    from sae_fast.training import multi
    from sae_fast.training.trainer import Trainer, collect

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(tokens, device, tmp)
        t0 = time.perf_counter()
        if name == "stream":  # the default: model -> mixing buffer -> SAE, overlapped
            Trainer(cfg).run()
        elif name == "collect_then_train":  # every activation in memory first
            data = collect(cfg)
            Trainer(cfg, data).run()
        elif name == "producer":  # the stream's batches alone, no SAE (model load included,
            # as in every end-to-end case)
            source = feeds.open_source(cfg, device=torch.device(device))
            for step in range(cfg.steps):
                source.feed.batch(step)
            source.feed.close()
        elif name == "consumer":  # SAE steps alone, from activations already in memory
            data = collect(cfg)
            trainer = Trainer(cfg, data)
            t0 = time.perf_counter()
            trainer.run()
        elif name == "four_from_one_pass":
            multi.train_many(multi.plan(cfg, multi.parse_hooks(HOOKS4)))
        elif name == "four_separate":
            for hook in HOOKS4.split(","):
                Trainer(_config(tokens, device, f"{tmp}/{hook}", hook=hook)).run()
        elif name == "four_widths_one_pass":  # the sweep's case: 4 widths on one hook
            multi.train_many(multi.plan(cfg, None, list(WIDTHS)))
        elif name == "four_widths_separate":
            for e in WIDTHS:
                Trainer(_config(tokens, device, f"{tmp}/x{e}", expansion=e)).run()
        else:
            raise SystemExit(f"unknown case {name}")
        seconds = time.perf_counter() - t0
    trained = cfg.steps * cfg.batch_size * (4 if name.startswith("four") else 1)
    return {
        "case": name,
        "max_tokens": tokens,
        "steps": cfg.steps,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(cfg.steps * cfg.batch_size / seconds, 1),
        "sae_tokens_per_s": round(trained / seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _child(name: str, tokens: int, device: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SAE_FAST_BENCH_MODEL": MODEL}
    cmd = [sys.executable, "-m", "benchmarks.stream", "--case", name, "--tokens", str(tokens)]
    out = subprocess.run([*cmd, "--device", device], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"case {name} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=16384, help="base --max-tokens")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--model", choices=sorted(MODELS), default="embedded")
    p.add_argument("--four-only", action="store_true", help="only the 4-SAE cases")
    a = p.parse_args(argv)
    global MODEL, HOOKS4, HOOK
    MODEL = a.model
    HOOKS4, HOOK = MODELS[MODEL]
    if a.case:
        print(json.dumps(case(a.case, a.tokens, a.device)))
        return 0
    n = a.tokens
    four = [_child(c, n, a.device) for c in ("four_from_one_pass", "four_separate")]
    four += [_child(c, n, a.device) for c in ("four_widths_one_pass", "four_widths_separate")]
    if a.four_only:
        return _write_four(a, four)
    first = ("producer", "consumer", "stream", "collect_then_train")
    rows = [_child(c, n, a.device) for c in first]
    rss = [_child("stream", m * n, a.device) for m in (4, 16)]
    by = {r["case"]: r for r in rows}
    slower = min(by["producer"]["tokens_per_s"], by["consumer"]["tokens_per_s"])
    ratios = {
        "stream_vs_collect_then_train": by["stream"]["tokens_per_s"]
        / by["collect_then_train"]["tokens_per_s"],
        "stream_vs_slower_of_producer_consumer": by["stream"]["tokens_per_s"] / slower,
        "peak_rss_4x_tokens": rss[0]["peak_rss_mib"] / by["stream"]["peak_rss_mib"],
        "peak_rss_16x_tokens": rss[1]["peak_rss_mib"] / by["stream"]["peak_rss_mib"],
        "four_hooks_one_pass_vs_separate": four[0]["sae_tokens_per_s"]
        / four[1]["sae_tokens_per_s"],
        "four_widths_one_pass_vs_separate": four[2]["sae_tokens_per_s"]
        / four[3]["sae_tokens_per_s"],
    }
    day = datetime.date.today().isoformat()
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"stream-{a.device.split(':')[0]}-{day}"
    data = {"device": a.device, "date": day, "rows": [*rows, *rss, *four], "ratios": ratios}
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        f"# Data engine, {a.device}, {day}",
        "",
        f"{MODEL} {HOOK}, batch 512, 8x, k=32, buffer 16,384; "
        "steps = max_tokens / 512 (each token once). One process per row; one run.",
        "",
        "| case | max_tokens | s | tokens/s | SAE-tokens/s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['case']} | {r['max_tokens']:,} | {r['seconds']} | {r['tokens_per_s']:,.0f} "
            f"| {r['sae_tokens_per_s']:,.0f} | {r['peak_rss_mib']:,.0f} |"
        )
    lines += ["", *(f"- {k}: {v:.3f}" for k, v in ratios.items()), ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _write_four(a: argparse.Namespace, four: list[dict]) -> int:
    """The 4-SAE cases alone: stream-four-<model>-<device>-<date>.md and .json."""
    ratios = {
        "four_hooks_one_pass_vs_separate": four[0]["sae_tokens_per_s"]
        / four[1]["sae_tokens_per_s"],
        "four_widths_one_pass_vs_separate": four[2]["sae_tokens_per_s"]
        / four[3]["sae_tokens_per_s"],
    }
    day = datetime.date.today().isoformat()
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"stream-four-{MODEL}-{a.device.split(':')[0]}-{day}"
    data = {"model": MODEL, "device": a.device, "date": day, "rows": four, "ratios": ratios}
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        f"# Four SAEs from one pass, {MODEL}, {a.device}, {day}",
        "",
        f"Hooks {HOOKS4} (4 hooks) and widths {WIDTHS} at {HOOK}; batch 512, k=32, buffer "
        "16,384; each case in its own process, model load included; one run.",
        "",
        "| case | max_tokens | s | SAE-tokens/s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r['case']} | {r['max_tokens']:,} | {r['seconds']} | "
            f"{r['sae_tokens_per_s']:,.0f} | {r['peak_rss_mib']:,.0f} |"
            for r in four
        ),
        "",
        *(f"- {k}: {v:.3f}" for k, v in ratios.items()),
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

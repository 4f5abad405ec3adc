"""Soak run: many training steps at a small size, memory sampled as it goes.

    python -m benchmarks.soak                      # 20,000 steps, a sample every 1,000
    python -m benchmarks.soak --steps 2000 --every 200 --out /tmp/soak   # smoke

The whole trainer runs (`Trainer.run`: metrics, dead-latent counters, AuxK, checkpoints
every `--checkpoint-every` steps), on random activations with MiniLM's width. The resident
set size (VmRSS) is read after every `--every` steps; the report gives the growth from the
first sample (after warm-up) to the last, and the least-squares slope per 1,000 steps.
Target: no growth beyond noise. Writes `<out>/soak-cpu-<date>.csv` and `.md`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import torch

from sae_fast import TrainConfig
from sae_fast.data.activations import ActivationBatch
from sae_fast.formats import atomic_file
from sae_fast.training.trainer import Trainer

from .common import RESULTS, machine, write_csv


def rss_mib() -> float:
    """This process's resident set size now, MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


class SampledTrainer(Trainer):
    """The trainer, reading the RSS after every `every` steps."""

    def __init__(self, cfg: TrainConfig, data, every: int) -> None:
        super().__init__(cfg, data)
        self.every = every
        self.samples: list[dict] = []
        self.t0 = time.perf_counter()

    def train_step(self) -> dict[str, float]:
        logs = super().train_step()
        if self.step % self.every == 0:
            row = {
                "step": self.step,
                "rss_mib": round(rss_mib(), 2),
                "seconds": round(time.perf_counter() - self.t0, 2),
                "fvu": round(logs["fvu"], 4),
                "dead_pct": round(logs["dead_pct"], 2),
            }
            self.samples.append(row)
            print(row, flush=True)
        return logs


def slope_per_1000(rows: list[dict]) -> float:
    """Least-squares slope of RSS against step, MiB per 1,000 steps."""
    x = torch.tensor([r["step"] for r in rows], dtype=torch.float64)
    y = torch.tensor([r["rss_mib"] for r in rows], dtype=torch.float64)
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum().clamp_min(1e-12)) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--every", type=int, default=1_000)
    p.add_argument("--checkpoint-every", type=int, default=5_000)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.steps < 2 * args.every or args.every < 1:
        p.error("need --every >= 1 and at least two samples (--steps >= 2 * --every)")
    torch.manual_seed(0)
    acts = torch.randn(65_536, 384) * torch.linspace(0.2, 2.0, 384)
    n = acts.shape[0]
    zeros = torch.zeros(n, dtype=torch.int64)
    data = ActivationBatch(acts, tokens=zeros, window=zeros, position=torch.arange(n))
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(
            d_sae=1536, k=16, batch_size=512, steps=args.steps, warmup_steps=100,
            dead_after_tokens=50_000, checkpoint_every=args.checkpoint_every, log_every=100,
            progress=False, out=run_dir, device="cpu",
        )  # fmt: skip
        trainer = SampledTrainer(cfg, (data, [], None), args.every)
        trainer.run()
    rows = trainer.samples
    first, last = rows[0]["rss_mib"], rows[-1]["rss_mib"]
    spread = max(r["rss_mib"] for r in rows) - min(r["rss_mib"] for r in rows)
    slope = slope_per_1000(rows)
    date = dt.date.today().isoformat()
    write_csv(rows, args.out / f"soak-cpu-{date}.csv")
    lines = [
        f"# Soak: {args.steps:,} training steps on CPU ({date})",
        "",
        f"Machine: {machine()}. Command: `python -m benchmarks.soak --steps {args.steps} "
        f"--every {args.every}`.",
        "",
        "Run: d_in=384, d_sae=1536, TopK k=16, batch 512, AuxK on, the full `Trainer.run` "
        f"loop (metrics every 100 steps, a checkpoint every {args.checkpoint_every:,}).",
        "",
        "| step | RSS (MiB) | seconds | FVU | dead % |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {r['step']:,} | {r['rss_mib']:.1f} | {r['seconds']:.1f} | {r['fvu']:.4f} | "
            f"{r['dead_pct']:.2f} |"
            for r in rows
        ),
        "",
        f"Growth from step {rows[0]['step']:,} to {rows[-1]['step']:,}: {last - first:+.2f} MiB "
        f"({100 * (last - first) / first:+.2f}%); max - min over all samples: {spread:.2f} MiB; "
        f"least-squares slope: {slope:+.3f} MiB per 1,000 steps.",
        "",
    ]
    md = args.out / f"soak-cpu-{date}.md"
    with atomic_file(md) as tmp:
        tmp.write_text("\n".join(lines))
    print("\n".join(lines[-2:]))
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

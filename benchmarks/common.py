"""Timing helpers shared by the benchmarks: median of repeated runs, machine description."""

from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sae_fast.formats import atomic_file


def median_ms(
    fn: Callable[[], object], repeats: int = 7, warmup: int = 2, device: str = "cpu"
) -> float:
    """Median wall time of `fn()` in milliseconds (CUDA work synchronised)."""

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def machine(device: str = "cpu") -> str:
    """One line naming the machine the figures came from."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def write_csv(rows: list[dict], path: Path) -> Path:
    """Write `rows` (dicts with the same keys) to `path` atomically: temp file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")
    return path

"""Shared by the benchmarks: shapes, timing (median of repeated runs), the machine's name,
atomic CSV output (`RowWriter` rewrites it after every row, so a late failure keeps the rows
before it). Kept free of sae_fast imports at module level, so that the peer environment
(`benchmarks/peers/`) can import it too."""

from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Shape:
    """One benchmark configuration: SAE size, batch and dtype."""

    d_in: int
    d_sae: int
    B: int
    k: int
    dtype: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def label(self) -> str:
        return f"d_in={self.d_in} d_sae={self.d_sae} B={self.B} k={self.k} {self.dtype}"

    def with_(self, **kw: int | str) -> Shape:
        return replace(self, **kw)

    def as_dict(self) -> dict:
        return asdict(self)


# docs/design.md section 6: the CPU and GPU training rows, the CPU encode-memory row, and a
# small preset for smoke runs (tests).
PRESETS = {
    "cpu": Shape(384, 12288, 4096, 32),
    "cuda": Shape(4096, 131072, 8192, 64, "bfloat16"),
    "small": Shape(32, 512, 256, 8),
}
ENCODE_MEMORY = {
    "cpu": Shape(384, 65536, 8192, 32),
    "cuda": Shape(4096, 131072, 8192, 64, "bfloat16"),
    "small": Shape(32, 2048, 512, 8),
}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in fp32 (the checks' measure of agreement)."""
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-12))


def sync(device: str) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(
    fn: Callable[[], object], repeats: int = 7, warmup: int = 2, device: str = "cpu"
) -> float:
    """Median wall time of `fn()` in milliseconds (CUDA work synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1, device: str = "cpu"
) -> dict[str, float]:
    """Median ms of each function, timed in rounds (one call of each per round), so a change
    in the machine's load touches every entry alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def machine(device: str = "cpu") -> str:
    """One line naming the machine the figures came from."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def write_csv(rows: list[dict], path: Path, quiet: bool = False) -> Path:
    """Write `rows` to `path` atomically (temp file, then rename); the columns are the union
    of the rows' keys in first-seen order."""
    from sae_fast.formats import atomic_file

    fields = list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    if not quiet:
        print(f"wrote {path}")
    return path


OnRow = Callable[[dict], None]  # what a suite calls with each row as soon as it has it


class RowWriter:
    """The rows of a run so far, kept on disk: each new row rewrites `path` (CSV, atomic,
    columns the union of the keys so far), so a failure late in a long run loses only the
    row in progress. Suites take it as their `on_row` callback. Rewriting the whole file
    costs O(rows) per row; a run has a few hundred rows at most."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        write_csv(self.rows, self.path, quiet=True)

    def extend(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self(row)

"""pytest-benchmark entries for the kernels: the kernel suite's cases (each checked against
`sae_fast.ops.reference` when built), one benchmark each.

    .venv/bin/python -m pytest benchmarks/test_bench_kernels.py    # the device's preset
    SAE_FAST_BENCH_PRESET=small .venv/bin/python -m pytest benchmarks/test_bench_kernels.py
    ... --benchmark-compare, --benchmark-histogram, --benchmark-json=out.json (pytest-benchmark)
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.common import PRESETS
from benchmarks.kernels import CASE_IDS, cases

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PRESET = os.environ.get("SAE_FAST_BENCH_PRESET", DEVICE)


@pytest.fixture(scope="module")
def built() -> dict:
    """Every case at the preset's shape, keyed by (op, impl); built (and checked) once."""
    if PRESET not in PRESETS:
        raise pytest.UsageError(f"SAE_FAST_BENCH_PRESET={PRESET!r}: one of {list(PRESETS)}")
    return {(c.op, c.impl): c.fn for c in cases(PRESETS[PRESET], DEVICE)}


@pytest.mark.parametrize(("op", "impl"), CASE_IDS, ids=[f"{o}[{i}]" for o, i in CASE_IDS])
def test_kernel(benchmark, built, op, impl):
    fn = built[(op, impl)]
    benchmark.group = f"{op} {PRESETS[PRESET].label()}"
    benchmark.extra_info["device"] = DEVICE
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def call():
        fn()
        sync()

    benchmark.pedantic(call, rounds=5, warmup_rounds=1)

"""The op table in `sae_fast/ops/__init__.py`: every module function, C++ op, test file and
benchmark it names exists, and every op of the C++ extension has a row."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import sae_fast.ops
from sae_fast.ops import native

ROOT = Path(__file__).resolve().parents[2]


def _rows() -> list[list[str]]:
    lines = [ln for ln in sae_fast.ops.__doc__.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]  # no header


def test_every_cell_resolves():
    rows = _rows()
    assert len(rows) >= 7
    for op, ref_fn, triton_fn, cpp, tests, bench in rows:
        for dotted in (ref_fn, triton_fn):
            module, name = dotted.rsplit(".", 1)
            if module.startswith("triton_"):
                pytest.importorskip("triton")
            assert hasattr(importlib.import_module(f"sae_fast.ops.{module}"), name), (op, dotted)
        if cpp != "-" and native.NATIVE_AVAILABLE:
            assert hasattr(torch.ops.sae_fast, cpp), (op, cpp)
        for path in [*tests.split(", "), bench]:
            assert (ROOT / path).is_file(), (op, path)


@pytest.mark.skipif(not native.NATIVE_AVAILABLE, reason="sae_fast._C not built")
def test_every_cpp_op_is_in_the_table_or_a_piece_of_one():
    named = {row[3] for row in _rows()}
    pieces = {"feature_segments", "feature_reduce_cols"}  # parts of the backward rows
    bound = set((ROOT / "csrc" / "bindings.cpp").read_text().split('m.impl("')[1:])
    ops = {chunk.split('"')[0] for chunk in bound}
    assert ops and ops <= named | pieces, sorted(ops - named - pieces)

"""Which TopK encoder path runs on the GPU for a shape: "fused" or "chunked".

The choice comes from a table measured on a GPU (`gpu_dispatch.json` beside this file,
written by `python -m benchmarks.gpu_check --write-dispatch`) when it has the shape's row,
else from the static performance model (`gpu_model.choose_encoder`; its projection is
written by `python -m benchmarks.gpu_projection` to `benchmarks/results/`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

TABLE = Path(__file__).with_name("gpu_dispatch.json")


@lru_cache(maxsize=1)
def measured_table() -> dict[str, str]:
    """`"B,d_in,d_sae,k,dtype" -> method` rows measured on a GPU ({} when none was)."""
    if not TABLE.exists():
        return {}
    return {str(key): str(v) for key, v in json.loads(TABLE.read_text())["plans"].items()}


def shape_key(B: int, d_in: int, d_sae: int, k: int, dtype: torch.dtype) -> str:
    """The table's key for a shape."""
    return f"{B},{d_in},{d_sae},{k},{str(dtype).removeprefix('torch.')}"


def static_plan(B: int, d_in: int, d_sae: int, k: int, dtype: torch.dtype) -> str:
    """The static model's choice (see the module docstring)."""
    from .gpu_model import FusedKernelStats, choose_encoder

    del dtype
    return choose_encoder(B, d_in, d_sae, k, FusedKernelStats())


def encoder_plan(B: int, d_in: int, d_sae: int, k: int, dtype: torch.dtype) -> str:
    """ "fused" or "chunked" for this shape: measured if a GPU table has it, else static."""
    measured = measured_table().get(shape_key(B, d_in, d_sae, k, dtype))
    return measured or static_plan(B, d_in, d_sae, k, dtype)

"""The benchmark's input rows: real activations of the embedded default model (MiniLM,
layer 3 residual, d_in = 384) when the shape's d_in matches, else seeded normal rows."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

MINILM_D_IN = 384


def activations(n: int, d_in: int, source: str = "auto") -> tuple[Tensor, str]:
    """(`[n, d_in]` float32 rows, a description of where they came from).

    `source`: "minilm" (must work), "random", or "auto" (MiniLM when d_in is 384)."""
    if source not in ("auto", "minilm", "random"):
        raise SystemExit(f"unknown data source {source!r}: auto, minilm or random")
    if source == "minilm" or (source == "auto" and d_in == MINILM_D_IN):
        if d_in != MINILM_D_IN:
            raise SystemExit(f"MiniLM activations have d_in={MINILM_D_IN}, the shape has {d_in}")
        from sae_fast.config import TrainConfig
        from sae_fast.training.trainer import collect

        data, _, _ = collect(TrainConfig(max_tokens=n, progress=False))
        if data.acts.shape[0] >= n:
            return data.acts[:n].contiguous(), f"all-MiniLM-L6-v2 layers.3.residual, {n} tokens"
        raise SystemExit(f"the embedded corpus gave {data.acts.shape[0]} tokens, need {n}")
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d_in, generator=g), f"seeded normal rows, {n} x {d_in}"


def save(x: Tensor, path: Path) -> None:
    """Write the rows for a child process."""
    from safetensors.torch import save_file

    save_file({"x": x.contiguous()}, str(path))


def load(path: Path) -> Tensor:
    """Read rows written by `save`."""
    from safetensors.torch import load_file

    return load_file(str(path))["x"]

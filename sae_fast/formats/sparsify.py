"""Import of EleutherAI sparsify checkpoints: `cfg.json` + `sae.safetensors`.

sparsify stores `encoder.weight [d_sae, d_in]`, `encoder.bias [d_sae]`, `W_dec [d_sae, d_in]`,
`b_dec [d_in]`, and encodes `topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias))`,
which is our topk code exactly. A transcoder (`transcode: true`) does not subtract b_dec
and may add `x @ W_skip.T` (`skip_connection`, `W_skip [d_in, d_in]`): ours with
`transcoder=True` (d_out = d_in, as sparsify's). A skip connection on an autoencoder, and
groupmax, are refused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import SAEConfig, dtype_name
from ..errors import ConfigError, FormatError
from ..files import read_json, read_safetensors, require_dir
from ..sae import SparseAutoencoder
from ._io import build_sae, cfg_get, check_tensors

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae.safetensors"


# sparsify's `activation` values -> sae_fast's architectures (groupmax has no counterpart)
FROM_SPARSIFY = {"topk": "topk"}


def holds(path: Path) -> bool:
    """Whether directory `path` has this format's weights file."""
    return (path / WEIGHTS_FILENAME).exists()


def load_sparsify(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    backend: str = "auto",
) -> SparseAutoencoder:
    """Load a sparsify SAE directory (one hookpoint)."""
    path = require_dir(path)
    where = str(path / CFG_FILENAME)
    raw = read_json(path / CFG_FILENAME)
    d_in = cfg_get(raw, "d_in", int, where)
    k = cfg_get(raw, "k", int, where)
    num_latents = cfg_get(raw, "num_latents", int, where, default=0)
    expansion = cfg_get(raw, "expansion_factor", int, where, default=32)
    transcode = cfg_get(raw, "transcode", bool, where, default=False)
    skip = cfg_get(raw, "skip_connection", bool, where, default=False)
    if skip and not transcode:
        raise FormatError(
            f"{where}: skip_connection=true without transcode=true (an autoencoder with a "
            "skip term) is not supported by sae_fast"
        )
    theirs = cfg_get(raw, "activation", str, where, default="topk")
    if theirs not in FROM_SPARSIFY:
        raise FormatError(
            f"{where}: activation {theirs!r} is not supported (only {sorted(FROM_SPARSIFY)})"
        )
    d_sae = num_latents or d_in * expansion

    wpath = path / WEIGHTS_FILENAME
    tensors = read_safetensors(wpath)
    shapes = {
        "encoder.weight": (d_sae, d_in),
        "encoder.bias": (d_sae,),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
    }
    if skip:
        shapes["W_skip"] = (d_in, d_in)
    check_tensors(tensors, shapes, str(wpath))
    src_dtype = dtype_name(tensors["encoder.weight"].dtype)
    try:
        cfg = SAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            activation=FROM_SPARSIFY[theirs],
            k=k,
            dtype=src_dtype,
            metadata={"imported_from": "sparsify"},
            transcoder=transcode,
            skip=skip,
        )
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    params = {
        "W_enc": tensors["encoder.weight"].t(),  # [d_in, d_sae]
        "b_enc": tensors["encoder.bias"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
    }
    if skip:
        params["W_skip"] = tensors["W_skip"]
    return build_sae(cfg, params, device=device, dtype=dtype, backend=backend, where=str(wpath))

"""Import of saprmarks/dictionary_learning checkpoints: `ae.pt` + `config.json`.

`ae.pt` is read with `torch.load(weights_only=True)`: plain tensors only, nothing unpickled
beyond them. Supported `dict_class` values and how they map onto our parameters:

- AutoEncoder:  relu((x - bias) @ enc.W.T + enc.b); decoder.weight [d_in, d_sae], b_dec=bias
- AutoEncoderNew: no input centring (folded into b_enc); b_dec = decoder.bias
- AutoEncoderTopK / BatchTopKSAE: as sparsify, decoder.weight [d_in, d_sae]; BatchTopKSAE's
  scalar inference threshold becomes `batchtopk_threshold`
- JumpReluAutoEncoder: W_enc/b_enc/W_dec/b_dec/threshold, no input centring (folded); its
  code is scaled by decoder row norms, so the norms are folded into the encoder side.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor

from .. import architectures
from ..config import SAEConfig, dtype_name
from ..errors import ConfigError, FormatError
from ..files import read_json, require_dir
from ..ops.reference import fold_input_bias
from ..sae import SparseAutoencoder
from ._io import build_sae, cfg_get, check_tensors

CFG_FILENAME = "config.json"
WEIGHTS_FILENAME = "ae.pt"


def _read_pt(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing from {path.parent}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise FormatError(
            f"{path} is truncated, corrupt, or holds more than plain tensors: {err}"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise FormatError(f"{path} must hold a state dict of tensors")
    return state


def _params(cls: str, sd: dict[str, Tensor], d_in: int, d_sae: int, where: str):
    """(activation, params in our orientation, batchtopk threshold) for one dict_class."""
    if cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        shapes = {
            "encoder.weight": (d_sae, d_in),
            "encoder.bias": (d_sae,),
            "decoder.weight": (d_in, d_sae),
            "b_dec": (d_in,),
        }
        buffers = {
            k: sd.pop(k) for k in ("k", "threshold", "act_mean", "act_cov_inv_sqrt") if k in sd
        }
        check_tensors(sd, shapes, where)
        params = {
            "W_enc": sd["encoder.weight"].t(),
            "b_enc": sd["encoder.bias"],
            "W_dec": sd["decoder.weight"].t(),
            "b_dec": sd["b_dec"],
        }
        thr = None
        if cls == "BatchTopKSAE" and "threshold" in buffers:
            value = float(buffers["threshold"].reshape(-1)[0])
            thr = value if value >= 0 else None  # -1 means "never estimated"
        return ("topk" if cls == "AutoEncoderTopK" else "batchtopk"), params, thr
    if cls in ("AutoEncoder", "AutoEncoderNew"):
        bias_key = "bias" if cls == "AutoEncoder" else "decoder.bias"
        shapes = {
            "encoder.weight": (d_sae, d_in),
            "encoder.bias": (d_sae,),
            "decoder.weight": (d_in, d_sae),
            bias_key: (d_in,),
        }
        check_tensors(sd, shapes, where)
        W_enc, b_dec = sd["encoder.weight"].t(), sd[bias_key]
        b_enc = sd["encoder.bias"]
        if cls == "AutoEncoderNew":  # encoder sees x, not x - b_dec
            b_enc = fold_input_bias(W_enc, b_enc, b_dec)
        return (
            "relu",
            {"W_enc": W_enc, "b_enc": b_enc, "W_dec": sd["decoder.weight"].t(), "b_dec": b_dec},
            None,
        )
    if cls == "JumpReluAutoEncoder":
        shapes = {
            "W_enc": (d_in, d_sae),
            "b_enc": (d_sae,),
            "W_dec": (d_sae, d_in),
            "b_dec": (d_in,),
            "threshold": (d_sae,),
        }
        check_tensors(sd, shapes, where)
        b_enc = fold_input_bias(sd["W_enc"], sd["b_enc"], sd["b_dec"])
        # f = jump(pre) * |W_dec[f]|, decode f / |W_dec[f]| @ W_dec: scale the encoder side.
        # Kept in float64: build_sae rounds once, to the requested dtype.
        norms = sd["W_dec"].double().norm(dim=1)  # [d_sae]
        return (
            "jumprelu",
            {
                "W_enc": sd["W_enc"].double() * norms,
                "b_enc": b_enc * norms,
                "W_dec": sd["W_dec"].double() / norms[:, None],
                "b_dec": sd["b_dec"],
                "threshold": sd["threshold"].double() * norms,
            },
            None,
        )
    raise FormatError(
        f"dict_class {cls!r} is not supported; sae_fast imports AutoEncoder, "
        "AutoEncoderNew, AutoEncoderTopK, BatchTopKSAE, JumpReluAutoEncoder"
    )


def holds(path: Path) -> bool:
    """Whether directory `path` has this format's files."""
    return (path / "ae.pt").exists() or (path / "config.json").exists()


def load_dictionary_learning(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    backend: str = "auto",
) -> SparseAutoencoder:
    """Load a dictionary_learning trainer directory (`ae.pt` + `config.json`)."""
    path = require_dir(path)
    where = str(path / CFG_FILENAME)
    raw = read_json(path / CFG_FILENAME)
    trainer = cfg_get(raw, "trainer", dict, where)
    where_t = f"{where} [trainer]"
    cls = cfg_get(trainer, "dict_class", str, where_t)
    d_in = cfg_get(trainer, "activation_dim", int, where_t)
    d_sae = cfg_get(trainer, "dict_size", int, where_t)
    wpath = path / WEIGHTS_FILENAME
    sd = _read_pt(wpath)
    source_dtype = next((v.dtype for v in sd.values() if v.is_floating_point()), torch.float32)
    activation, params, thr = _params(cls, dict(sd), d_in, d_sae, str(wpath))
    k = cfg_get(trainer, "k", int, where_t) if architectures.get(activation).uses_k else None
    buffer_cfg = raw.get("buffer")
    model_name = buffer_cfg.get("model_name") if isinstance(buffer_cfg, dict) else None
    try:
        cfg = SAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            activation=activation,
            k=k,
            dtype=dtype_name(source_dtype),
            model_name=model_name if isinstance(model_name, str) else None,
            metadata={"imported_from": f"dictionary_learning:{cls}"},
        )
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    return build_sae(
        cfg,
        params,
        device=device,
        dtype=dtype,
        backend=backend,
        batchtopk_threshold=thr,
        where=str(wpath),
    )

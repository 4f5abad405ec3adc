"""Gemma Scope (Google DeepMind's JumpReLU SAEs on Gemma 2 and Gemma 3), as SAELens's
`gemma_2` and `gemma_3` registry conversions read them.

    gemma_2  `{folder}/params.npz`: W_enc, W_dec, b_enc, b_dec, threshold. The folder names
             the layer (`layer_12`) and width (`width_16k`); the repo, the model and hook
             (`gemma-scope-2b-pt-res` -> google/gemma-2-2b, blocks.12.hook_resid_post).
    gemma_3  `{folder}/params.safetensors` (w_enc, w_dec, b_enc, b_dec, threshold) and an
             optional `{folder}/config.json` with the model's name.

Both are JumpReLU SAEs that do not centre their input (apply_b_dec_to_input false, folded
exactly on load). Residual-stream SAEs load. Refused, with the reason: attention SAEs (per
head hook_z), the embedding SAEs (trained on the embedding before Gemma's sqrt(d) scale),
and MLP-output SAEs and transcoders (Gemma normalises the MLP's output before the residual
add and these read after that norm, where sae_fast has no hook).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import FormatError
from ..files import read_safetensors

GEMMA_2_FILES = ("params.npz",)
GEMMA_3_FILES = ("params.safetensors",)
_WIDTHS = {"4k": 4096, "16k": 16384, "32k": 32768, "65k": 65536, "131k": 131072,
           "262k": 262144, "524k": 524288, "1m": 1048576}  # fmt: skip
_GEMMA_2 = {"2b": 2304, "9b": 3584, "27b": 4608}  # model size -> d_model


def _layer(folder: str, where: str) -> int:
    m = re.search(r"layer_(\d+)", folder)
    if m is None:
        raise FormatError(f"{where}: the folder names no layer (layer_<n>)")
    return int(m.group(1))


def _refuse_hooks(repo_id: str, folder: str, where: str) -> None:
    """FormatError for the Gemma Scope SAEs sae_fast cannot read at their activations."""
    name = f"{repo_id}/{folder}"
    why = None
    if "att" in repo_id.split("/")[-1] or "attn" in folder:
        why = "an attention SAE reads per-head hook_z, which sae_fast does not hook"
    elif "embedding" in folder:
        why = "the embedding SAEs were trained on the embedding before Gemma's sqrt(d) scale"
    elif "mlp" in repo_id.split("/")[-1] or "mlp" in folder or "transcoder" in folder:
        why = (
            "Gemma normalises its MLP's output before the residual add and this SAE reads it "
            "after that norm (TransformerLens's hook_mlp_out); sae_fast's mlp_out is before it"
        )
    elif "clt" in folder:
        why = "a cross-layer transcoder writes to every later layer"
    if why:
        raise FormatError(f"{where}: {name}: {why}")


def gemma_2_cfg(repo_id: str, folder: str) -> dict[str, Any]:
    """The SAELens cfg of a Gemma Scope (Gemma 2) SAE, from its repo and folder names."""
    where = "Gemma Scope"
    _refuse_hooks(repo_id, folder, where)
    m = re.search(r"gemma-scope-(\d+b)-(pt|it)", repo_id)
    if m is None or m.group(1) not in _GEMMA_2:
        raise FormatError(f"{where}: cannot tell the Gemma 2 model of repo {repo_id!r}")
    size, kind = m.groups()
    width = re.search(r"width_(\d+[km])", folder)
    if width is None or width.group(1) not in _WIDTHS:
        raise FormatError(f"{where}: folder {folder!r} names no known width (width_16k, ...)")
    model = f"google/gemma-2-{size}" + ("-it" if kind == "it" else "")
    return _cfg(_GEMMA_2[size], _WIDTHS[width.group(1)], model, _layer(folder, where))


def _cfg(d_in: int, d_sae: int, model: str, layer: int) -> dict[str, Any]:
    return {
        "architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
        "apply_b_dec_to_input": False, "normalize_activations": "none",
        "metadata": {"model_name": model, "hook_name": f"blocks.{layer}.hook_resid_post",
                     "prepend_bos": True, "context_size": 1024,
                     "dataset_path": "monology/pile-uncopyrighted",
                     "model_from_pretrained_kwargs": {}},
    }  # fmt: skip


def read_gemma_2(folder: Path) -> dict[str, Tensor]:
    """SAELens-named float32 tensors of `folder/params.npz` (read without pickle)."""
    file = folder / GEMMA_2_FILES[0]
    try:
        with np.load(file, allow_pickle=False) as data:
            tensors = {k: torch.from_numpy(np.asarray(data[k], dtype=np.float32)) for k in data}
    except (OSError, ValueError) as err:
        raise FormatError(f"{file}: not a readable npz file ({err})") from None
    return {("W_" + k[2:] if k.startswith("w_") else k): t for k, t in tensors.items()}


def check_gemma_3(repo_id: str, name: str, where: str = "Gemma Scope 2") -> None:
    """FormatError, before any download, for a Gemma Scope 2 SAE sae_fast cannot read."""
    _refuse_hooks(repo_id, name, where)
    if "resid_post" not in name:
        raise FormatError(f"{where}: {repo_id}/{name}: not a residual-stream SAE (resid_post)")


def gemma_3_cfg(
    repo_id: str, folder: Path, name: str, tensors: dict[str, Tensor]
) -> dict[str, Any]:
    """The SAELens cfg of a Gemma Scope 2 (Gemma 3) SAE in `folder` (`name`: its repo
    folder), its widths those of its `tensors` (read_gemma_3)."""
    where = str(folder)
    check_gemma_3(repo_id, name, where)
    model = repo_id.replace("gemma-scope-2", "gemma-3")
    config = folder / "config.json"
    if config.exists():
        raw = json.loads(config.read_text())
        arch = raw.get("architecture", "jump_relu")
        if arch != "jump_relu":
            raise FormatError(f"{config}: architecture {arch!r} is not jump_relu")
        model = str(raw.get("model_name", model))
        model = (model if "google" in model else "google/" + model).replace("-v3", "-3")
    if "W_enc" not in tensors:
        raise FormatError(f"{folder / GEMMA_3_FILES[0]} has no w_enc (has {sorted(tensors)})")
    w_enc = tensors["W_enc"]
    return _cfg(int(w_enc.shape[0]), int(w_enc.shape[1]), model, _layer(name, where))


def read_gemma_3(folder: Path) -> dict[str, Tensor]:
    """SAELens-named tensors of `folder/params.safetensors`."""
    tensors = read_safetensors(folder / GEMMA_3_FILES[0])
    return {("W_" + k[2:] if k.startswith("w_") else k): t for k, t in tensors.items()}


def check(layout: str, repo_id: str, name: str) -> None:
    """FormatError, before any download, for a Gemma Scope SAE sae_fast cannot read
    (`layout`: the registry's conversion, gemma_2 or gemma_3)."""
    if layout == "gemma_2":
        gemma_2_cfg(repo_id, name)
    else:
        check_gemma_3(repo_id, name)


def read(layout: str, repo_id: str, name: str, folder: Path) -> tuple[dict[str, Any], dict]:
    """(SAELens cfg, SAELens-named tensors) of the downloaded Gemma Scope SAE in `folder`."""
    if layout == "gemma_2":
        return gemma_2_cfg(repo_id, name), read_gemma_2(folder)
    tensors = read_gemma_3(folder)
    return gemma_3_cfg(repo_id, folder, name, tensors), tensors

"""Helpers the format readers share: typed cfg fields, tensor checks, and building the SAE
from its config and tensors. The file layer itself is `sae_fast.files`."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from ..config import SAEConfig, dtype_from_name, dtype_name
from ..errors import ConfigError, FormatError
from ..sae import SparseAutoencoder


def cfg_get(
    cfg: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...
) -> Any:
    """`cfg[key]` checked against `kind`; ConfigError naming the file and key otherwise."""
    if key not in cfg:
        if default is ...:
            raise ConfigError(f"{where} is missing the key {key!r}")
        return default
    value = cfg[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    bad_bool = isinstance(value, bool) and bool not in kinds
    if bad_bool or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ConfigError(f"{where}: {key!r} must be {names}, got {type(value).__name__} {value!r}")
    return value


def check_tensors(
    tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]], where: str
) -> None:
    """Exactly the keys of `shapes`, each with that shape, all floating."""
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes))
    if missing:
        raise FormatError(f"{where} is missing tensors {missing} (has {sorted(tensors)})")
    if extra:
        raise FormatError(f"{where} has unexpected tensors {extra}; expected {sorted(shapes)}")
    for name, shape in shapes.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise FormatError(
                f"{where}: {name} has shape {tuple(t.shape)}, expected {shape} from the config"
            )
        if not t.is_floating_point():
            raise FormatError(f"{where}: {name} must be floating point, got {t.dtype}")


def build_sae(
    cfg: SAEConfig,
    params: dict[str, Tensor],
    *,
    device: torch.device | str,
    dtype: torch.dtype | str | None,
    backend: str,
    batchtopk_threshold: float | None = None,
    where: str = "weights",
):
    """A `SparseAutoencoder` from a config and its tensors in sae_fast orientation."""
    torch_dtype = dtype_from_name(dtype if dtype is not None else cfg.dtype)
    cfg = dataclasses.replace(cfg, dtype=dtype_name(torch_dtype))
    sae = SparseAutoencoder.from_config(cfg, backend=backend, device=device)
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    check_tensors(params, expected, where)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(params[name].to(device=p.device, dtype=p.dtype))
    sae.batchtopk_threshold = batchtopk_threshold
    return sae

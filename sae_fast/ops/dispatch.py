"""Backend choice: which implementation of the SAE ops runs for a given tensor.

`"auto"` picks triton for CUDA tensors and native for CPU tensors when those are built,
else torch; the environment variable `SAE_FAST_BACKEND` overrides `"auto"`. Asking for a
backend that is not available raises BackendUnavailableError naming what is missing.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
from torch import Tensor

from ..config import BACKENDS
from ..errors import BackendUnavailableError, ConfigError
from . import reference as ref
from .reference import SparseCode


class Backend(Protocol):
    """What every backend provides; all ops take 2-D activations and are differentiable."""

    name: str

    def encode_topk(
        self, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int
    ) -> SparseCode: ...

    def encode_dense(
        self,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        b_dec: Tensor,
        activation: str,
        k: int | None,
        threshold: Tensor | None,
    ) -> Tensor: ...

    def decode_sparse(
        self, values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor
    ) -> Tensor: ...

    def decode_dense(self, acts: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor: ...


class TorchBackend:
    """The reference ops under torch.autograd: always available, any device and dtype."""

    name = "torch"
    encode_topk = staticmethod(ref.encode_topk)
    encode_dense = staticmethod(ref.encode_dense)
    decode_sparse = staticmethod(ref.decode_sparse)
    decode_dense = staticmethod(ref.decode_dense)


_UNAVAILABLE = {
    "triton": "the fused Triton kernels are not part of this build yet (planned)",
    "native": "the native training kernels of sae_fast._C are not part of this build yet (planned)",
}


def check_backend_name(name: str) -> str:
    """Validate a backend name (not its availability)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    return name


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on `device` in this installation."""
    del device  # every device runs the torch backend; kernels add themselves here
    return ["torch"]


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Concrete backend for `name` on `device`; raises if it cannot run there."""
    check_backend_name(name)
    if name == "auto":
        override = os.environ.get("SAE_FAST_BACKEND")
        if override:
            if override == "auto" or override not in BACKENDS:
                raise ConfigError(
                    f"SAE_FAST_BACKEND={override!r} is not a backend; "
                    f"expected one of {BACKENDS[1:]}"
                )
            return resolve_backend(override, device)
        return available_backends(device)[0]
    if name not in available_backends(device):
        raise BackendUnavailableError(
            f"backend {name!r} is not available on {torch.device(device)}: {_UNAVAILABLE[name]}; "
            f"available: {available_backends(device)}"
        )
    return name


_BACKENDS: dict[str, Backend] = {"torch": TorchBackend()}


def get_backend(name: str, device: torch.device | str) -> Backend:
    """The backend object for `name` (resolving `"auto"`) on `device`."""
    return _BACKENDS[resolve_backend(name, device)]

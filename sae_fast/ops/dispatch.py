"""Backend choice: which implementation of the SAE ops runs for a given tensor.

`"auto"` picks triton for CUDA tensors and native for CPU tensors when those are built,
else torch; the environment variable `SAE_FAST_BACKEND` overrides `"auto"`. Asking for a
backend that is not available raises BackendUnavailableError naming what is missing.
"""

from __future__ import annotations

import importlib.util
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
        self, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, threshold: Tensor | None
    ) -> Tensor:
        """relu(pre), or jumprelu(pre, threshold) with a threshold `[d_sae]`."""
        ...

    def pre_activations(self, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
        """`(x - b_dec) @ W_enc + b_enc` `[B, d_sae]`, fp32 for bf16/fp16 parameters: what a
        straight-through estimator reads (JumpReLU's training)."""
        ...

    def decode_sparse(
        self, values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor
    ) -> Tensor: ...

    def decode_dense(self, acts: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor: ...

    def topk_sae(
        self, x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int
    ) -> tuple[Tensor, SparseCode]:
        """TopK encode + sparse decode as one op: (recon, code); one sort in backward."""
        ...


def _torch_topk_sae(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int
) -> tuple[Tensor, SparseCode]:
    code = ref.encode_topk(x, W_enc, b_enc, b_dec, k)
    return ref.decode_sparse(code.values, code.indices, W_dec, b_dec), code


class TorchBackend:
    """The reference ops under torch.autograd: always available, any device and dtype."""

    name = "torch"
    encode_topk = staticmethod(ref.encode_topk)
    encode_dense = staticmethod(ref.encode_dense)
    pre_activations = staticmethod(ref.pre_activations)
    decode_sparse = staticmethod(ref.decode_sparse)
    decode_dense = staticmethod(ref.decode_dense)
    topk_sae = staticmethod(_torch_topk_sae)


_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _triton_missing(device: torch.device, dtype: torch.dtype | None) -> str | None:
    """Why the triton backend cannot run here, or None if it can."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed"
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not (device.type == "cpu" and interpret):
        return f"it needs a CUDA device (or TRITON_INTERPRET=1 for CPU tensors), got {device}"
    if dtype is not None and dtype not in _TRITON_DTYPES:
        return f"its kernels support float32/bfloat16/float16, not {dtype}"
    return None


def _native_missing(device: torch.device, dtype: torch.dtype | None) -> str | None:
    """Why the native backend cannot run here, or None if it can."""
    from .native import NATIVE_AVAILABLE, NATIVE_IMPORT_ERROR

    if not NATIVE_AVAILABLE:
        return f"the extension sae_fast._C is not built ({NATIVE_IMPORT_ERROR})"
    if device.type != "cpu":
        return f"its TopK encoder runs on CPU tensors only, got {device}"
    del dtype  # fp32, fp64, bf16 and fp16 are all supported
    return None


_MISSING = {"triton": _triton_missing, "native": _native_missing}


def check_backend_name(name: str) -> str:
    """Validate a backend name (not its availability)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    return name


def available_backends(
    device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> list[str]:
    """Backends that can run on `device` (and `dtype`, if given), in `"auto"`'s order."""
    device = torch.device(device)
    # On CPU the Triton interpreter is for tests, never "auto"'s pick, so it comes last.
    order = (
        ("triton", "native", "torch") if device.type == "cuda" else ("native", "torch", "triton")
    )
    return [n for n in order if n == "torch" or _MISSING[n](device, dtype) is None]


def resolve_backend(name: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """Concrete backend for `name` on `device` and `dtype`; raises if it cannot run there."""
    check_backend_name(name)
    device = torch.device(device)
    if name == "auto":
        override = os.environ.get("SAE_FAST_BACKEND")
        if override:
            if override == "auto" or override not in BACKENDS:
                raise ConfigError(
                    f"SAE_FAST_BACKEND={override!r} is not a backend; "
                    f"expected one of {BACKENDS[1:]}"
                )
            return resolve_backend(override, device, dtype)
        return available_backends(device, dtype)[0]
    if name != "torch":
        why = _MISSING[name](device, dtype)
        if why is not None:
            raise BackendUnavailableError(
                f"backend {name!r} is not available on {device}: {why}; "
                f"available: {available_backends(device, dtype)}"
            )
    return name


def get_backend(
    name: str, device: torch.device | str, dtype: torch.dtype | None = None
) -> type[Backend]:
    """The backend (a stateless class of static ops) for `name` on `device` and `dtype`."""
    resolved = resolve_backend(name, device, dtype)
    if resolved == "triton":
        from .triton_backend import TritonBackend  # lazy: Triton's import is not free

        return TritonBackend
    if resolved == "native":
        from .native_backend import NativeBackend

        return NativeBackend
    return TorchBackend

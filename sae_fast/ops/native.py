"""Loads the compiled extension `sae_fast._C` (C++/OpenMP, optionally CUDA) if it was built.

The package imports without it; `sae_fast/__init__.py` warns once which backend it fell
back to. Ops are registered by the extension under `torch.ops.sae_fast`.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    from sae_fast import _C  # noqa: F401  (registers torch.ops.sae_fast.*)

    NATIVE_AVAILABLE = True
    NATIVE_IMPORT_ERROR: str | None = None
except ImportError as err:  # extension not built, or built against another torch
    NATIVE_AVAILABLE = False
    NATIVE_IMPORT_ERROR = str(err)


def _require() -> None:
    if not NATIVE_AVAILABLE:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"sae_fast._C is not built ({NATIVE_IMPORT_ERROR}); reinstall with "
            "`pip install --no-build-isolation -e .` and a C++ compiler"
        )


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """C++ sparse decode `sum_j v[b, j] * W_dec[i[b, j]] + b_dec` (no autograd)."""
    _require()
    return torch.ops.sae_fast.sparse_decode(values, indices, W_dec, b_dec)


if NATIVE_AVAILABLE:

    @torch.library.register_fake("sae_fast::sparse_decode")
    def _sparse_decode_fake(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor):
        return values.new_empty(values.shape[0], W_dec.shape[1])

"""Loads the compiled extension `sae_fast._C` (C++/OpenMP, CPU tensors) if it was built.

The package imports without it; `sae_fast/__init__.py` warns once which backend it fell
back to. The extension registers its ops under `torch.ops.sae_fast`; this module gives them
fake implementations (for torch.compile) and thin typed wrappers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference as ref

try:
    from sae_fast import _C  # registers torch.ops.sae_fast.*

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


def release_pooled_blocks() -> int:
    """Free the memory the native backward keeps to reuse for later gradients (blocks of
    gradients already freed); returns the bytes freed, 0 without the extension."""
    return int(_C.release_pooled_blocks()) if NATIVE_AVAILABLE else 0


def encode_block(batch: int) -> int:
    """Features per BLAS call in the native TopK encoder. A dictionary no wider than this is
    encoded by whole rows (one multi-threaded GEMM per fifth of the batch, then a parallel
    select); a wider one by row tiles (at least 512 rows when the batch has them) and blocks
    of this many features, each selected from while in cache. On the 2-core Xeon (AVX-512,
    interleaved medians, 2026-12-06), x the bare GEMM for blocks 1024 / 2048 / 4096: d_sae=1536
    1.45 / 1.31 / 1.24 (the last two by whole rows), d_sae=12288 1.19 / 1.17 / 1.16, and the
    wide-k64 shape 1.13 / 1.12 / 1.09; whole rows at d_sae=12288 gave 1.35.
    `batch` is kept for callers; the block does not depend on it."""
    del batch
    return 4096


def decode_sparse(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """C++ sparse decode `sum_j v[b, j] * W_dec[i[b, j]] + b_dec` (no autograd)."""
    _require()
    return torch.ops.sae_fast.decode_sparse(values, indices, W_dec.contiguous(), b_dec)


def encode_topk(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, block: int | None = None
) -> tuple[Tensor, Tensor]:
    """C++ blocked TopK encoder: (values [B, k] ReLU'd, indices [B, k] int64), no autograd."""
    _require()
    block = encode_block(x.shape[0]) if block is None else block
    if W_enc.dim() == 2 and W_enc.stride(1) != 1:  # e.g. tied weights, W_enc = W_dec.T
        W_enc = W_enc.contiguous()
    return torch.ops.sae_fast.encode_topk(x, W_enc, b_enc, b_dec, k, block)


def grad_values(grad: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """dL/dv `[B, k]` = g[b] . W_dec[i[b, j]], in fp32 (fp64 for fp64 inputs)."""
    _require()
    return torch.ops.sae_fast.grad_values(grad, indices, W_dec)


def feature_segments(indices: Tensor, d_sae: int) -> tuple[Tensor, Tensor]:
    """Stable counting sort of the flat indices by feature: (perm, offsets [d_sae + 1])."""
    _require()
    return torch.ops.sae_fast.feature_segments(indices, d_sae)


def feature_reduce(
    perm: Tensor, offsets: Tensor, coef: Tensor, src: Tensor, with_sum: bool
) -> tuple[Tensor, Tensor]:
    """Per-feature `sum coef[b, j] * src[b]` (and sum of coef), deterministic, no atomics."""
    _require()
    return torch.ops.sae_fast.feature_reduce(perm, offsets, coef, src, with_sum)


def feature_reduce_cols(
    perm: Tensor, offsets: Tensor, coef: Tensor, src: Tensor, with_sum: bool
) -> tuple[Tensor, Tensor]:
    """`feature_reduce` written as columns, `[D, d_sae]` (W_enc's layout). The CPU kernel
    writes them directly (no transpose, no `[d_sae, D]` buffer)."""
    _require()
    return torch.ops.sae_fast.feature_reduce_cols(perm, offsets, coef, src, with_sum)


def sparse_backward(
    grad: Tensor,
    grad_values: Tensor | None,
    x: Tensor,
    W_enc: Tensor,
    b_dec: Tensor,
    W_dec: Tensor,
    values: Tensor,
    indices: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(d_pre [B, k] fp32, dW_enc, db_enc, dW_dec, db_dec) of a TopK SAE: one counting sort
    and one C++ walk over the features for every gradient (`grad = dL/drecon`)."""
    _require()
    W_enc = W_enc.contiguous()  # a no-op unless it is a view (tied weights)
    d_pre, dW_enc, db_enc, dW_dec = torch.ops.sae_fast.sparse_backward(
        grad, grad_values, x, W_enc, b_dec, W_dec, values, indices
    )
    db_enc, db_dec = ref.bias_grads(grad, W_enc, db_enc, b_dec)
    return d_pre, dW_enc, db_enc, dW_dec, db_dec


if NATIVE_AVAILABLE:

    def _acc(t: Tensor) -> torch.dtype:
        return torch.float64 if t.dtype == torch.float64 else torch.float32

    @torch.library.register_fake("sae_fast::decode_sparse")
    def _(values, indices, W_dec, b_dec):
        return values.new_empty(values.shape[0], W_dec.shape[1])

    @torch.library.register_fake("sae_fast::encode_topk")
    def _(x, W_enc, b_enc, b_dec, k, block):
        return x.new_empty(x.shape[0], k), x.new_empty(x.shape[0], k, dtype=torch.int64)

    @torch.library.register_fake("sae_fast::grad_values")
    def _(grad, indices, W_dec):
        return grad.new_empty(indices.shape, dtype=_acc(W_dec))

    @torch.library.register_fake("sae_fast::feature_segments")
    def _(indices, d_sae):
        return indices.new_empty(indices.numel()), indices.new_empty(d_sae + 1)

    @torch.library.register_fake("sae_fast::feature_reduce")
    def _(perm, offsets, coef, src, with_sum):
        d_sae = offsets.shape[0] - 1
        acc = _acc(src)
        return src.new_empty(d_sae, src.shape[1], dtype=acc), src.new_empty(
            d_sae if with_sum else 0, dtype=acc
        )

    @torch.library.register_fake("sae_fast::sparse_backward")
    def _(grad, grad_values, x, W_enc, b_dec, W_dec, values, indices):
        acc = _acc(W_dec)
        return (
            values.new_empty(values.shape, dtype=acc),
            torch.empty_like(W_enc),
            W_dec.new_empty(W_dec.shape[0], dtype=acc),
            torch.empty_like(W_dec),
        )

    @torch.library.register_fake("sae_fast::feature_reduce_cols")
    def _(perm, offsets, coef, src, with_sum):
        d_sae = offsets.shape[0] - 1
        acc = _acc(src)
        return src.new_empty(src.shape[1], d_sae, dtype=acc), src.new_empty(
            d_sae if with_sum else 0, dtype=acc
        )

"""The autograd layer joining a TopK encoder, a sparse decoder and the sparse backward.

One implementation of the math for every kernel set (Triton, native C++): a backend
hands `register_sparse_ops` an object with five kernels, and gets back three differentiable
`torch.library` custom ops (with fake implementations, so `torch.compile(fullgraph=True)`
sees through them):

    encode_topk(x, W_enc, b_enc, b_dec, k) -> (values [B, k], indices [B, k] int64)
    decode_sparse(values, indices, W [n, D] (may be a strided view), b [D]) -> [B, D]
    grad_values(g [B, D], indices, W_dec) -> dL/dv [B, k] (fp32 or fp64)
    segments(indices, d_sae) -> (perm [B*k], offsets [d_sae + 1]), positions sorted by feature
    feature_reduce(perm, offsets, coef [B, k], src [B, D], with_sum) -> (out [d_sae, D], sums)
    (optional) feature_reduce_cols(...) -> (out [D, d_sae], sums): the same, as columns
    (optional) sparse_backward(g, g_values, x, W_enc, b_dec, W_dec, v, i)
               -> (d_pre, dW_enc, db_enc, dW_dec, db_dec): the whole TopK SAE backward

and a third op for the whole TopK SAE, whose backward sorts the indices once for every
gradient (the encoder and decoder ops above each sort on their own when used apart):

    topk_sae(x, W_enc, b_enc, W_dec, b_dec, k) -> (recon [B, D], values [B, k], indices)

Backward (docs/design.md section 3):
    decoder: dL/dv = g . W_dec[i];   dL/dW_dec[f] = sum_{i[b,j]=f} v[b,j] g[b]
             dL/db_dec += sum_b g[b]
    encoder: dL/dpre = dL/dv * (v > 0)
             dL/dW_enc[:, f] = sum_{i[b,j]=f} dL/dpre[b,j] (x[b] - b_dec)
             dL/db_enc[f] = sum_{i[b,j]=f} dL/dpre[b,j];  dL/db_dec += -W_enc @ dL/db_enc
             dL/dx[b] = sum_j dL/dpre[b,j] W_enc[:, i[b,j]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from . import reference as ref


class SparseKernels(Protocol):
    """The five kernels a backend provides (see the module docstring)."""

    encode_topk: Callable[..., tuple[Tensor, Tensor]]
    decode_sparse: Callable[..., Tensor]
    grad_values: Callable[..., Tensor]
    segments: Callable[..., tuple[Tensor, Tensor]]
    feature_reduce: Callable[..., tuple[Tensor, Tensor]]
    # Optional: feature_reduce_cols(...) -> (out [D, d_sae], sums), the CPU kernels have it.


def feature_segments(indices: Tensor, d_sae: int) -> tuple[Tensor, Tensor]:
    """(perm, offsets): flat positions sorted by feature (stable) and CSR offsets `[d_sae+1]`.

    Plain torch (any device); the native CPU kernels have a counting sort of their own.
    """
    flat = indices.reshape(-1)
    _, perm = torch.sort(flat, stable=True)
    counts = torch.bincount(flat, minlength=d_sae)
    offsets = torch.zeros(d_sae + 1, dtype=torch.int64, device=indices.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return perm, offsets


def topk_encoder_backward(
    kern: SparseKernels,
    grad_values: Tensor,
    x: Tensor,
    W_enc: Tensor,
    b_dec: Tensor,
    values: Tensor,
    indices: Tensor,
    need_x_grad: bool,
    segments: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx or an empty tensor, dW_enc, db_enc, db_dec through the encoder); `segments` is
    `kern.segments(indices, d_sae)` when the caller has sorted already."""
    d_pre = grad_values * (values > 0).to(grad_values.dtype)  # [B, k] ReLU mask
    perm, offsets = segments or kern.segments(indices, W_enc.shape[1])
    reduce_cols = getattr(kern, "feature_reduce_cols", None)
    if reduce_cols is not None:  # written in W_enc's layout, no transpose
        dW_enc, db_enc = reduce_cols(perm, offsets, d_pre, x - b_dec, True)
        dW_enc = dW_enc.to(W_enc.dtype)  # [d_in, d_sae]
    else:
        dW_enc_t, db_enc = kern.feature_reduce(perm, offsets, d_pre, x - b_dec, True)
        dW_enc = dW_enc_t.t().to(W_enc.dtype).contiguous()  # [d_in, d_sae]
    db_enc = db_enc.to(W_enc.dtype)  # a matvec in W_enc's dtype, never a copy of W_enc
    db_dec = ref.b_dec_grad_through_encoder(W_enc, db_enc).to(b_dec.dtype)
    if need_x_grad:  # a sparse decode with W_enc^T as the dictionary
        dx = kern.decode_sparse(d_pre.to(x.dtype), indices, W_enc.t(), torch.zeros_like(b_dec))
    else:
        dx = x.new_empty(0)
    return dx, dW_enc, db_enc, db_dec


def sparse_decoder_backward(
    kern: SparseKernels,
    grad: Tensor,
    values: Tensor,
    indices: Tensor,
    W_dec: Tensor,
    segments: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dv, dL/dW_dec, dL/db_dec from the decoder) in the parameters' dtypes."""
    dv = kern.grad_values(grad, indices, W_dec).to(values.dtype)
    perm, offsets = segments or kern.segments(indices, W_dec.shape[0])
    dW_dec, _ = kern.feature_reduce(perm, offsets, values, grad, False)
    db_dec = grad.sum(0, dtype=torch.promote_types(grad.dtype, torch.float32))
    return dv, dW_dec.to(W_dec.dtype), db_dec.to(W_dec.dtype)


def sparse_backward(
    kern: SparseKernels,
    grad: Tensor,
    grad_values: Tensor | None,
    x: Tensor,
    W_enc: Tensor,
    b_dec: Tensor,
    W_dec: Tensor,
    values: Tensor,
    indices: Tensor,
    need_x_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx or empty, dW_enc, db_enc, dW_dec, db_dec) of the whole TopK SAE, one sort."""
    whole = getattr(kern, "sparse_backward", None)
    if whole is not None:
        d_pre, dW_enc, db_enc, dW_dec, db_dec = whole(
            grad, grad_values, x, W_enc, b_dec, W_dec, values, indices
        )
        if need_x_grad:
            dx = kern.decode_sparse(d_pre.to(x.dtype), indices, W_enc.t(), torch.zeros_like(b_dec))
        else:
            dx = x.new_empty(0)
        return dx, dW_enc, db_enc, dW_dec, db_dec
    segments = kern.segments(indices, W_dec.shape[0])  # the one sort
    dv, dW_dec, db_dec_dec = sparse_decoder_backward(kern, grad, values, indices, W_dec, segments)
    if grad_values is not None:
        dv = dv + grad_values.to(dv.dtype)
    dx, dW_enc, db_enc, db_dec_enc = topk_encoder_backward(
        kern, dv, x, W_enc, b_dec, values, indices, need_x_grad, segments
    )
    return dx, dW_enc, db_enc, dW_dec, db_dec_dec + db_dec_enc


def register_sparse_ops(prefix: str, kern: SparseKernels) -> tuple[Callable, Callable, Callable]:
    """Register `sae_fast::{prefix}_encode_topk`, `..._decode_sparse` and `..._topk_sae`
    (and their backward ops) with autograd; returns the three forward ops."""
    lib = f"sae_fast::{prefix}"

    @torch.library.custom_op(f"{lib}_encode_topk", mutates_args=())
    def encode_topk(
        x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int
    ) -> tuple[Tensor, Tensor]:
        return kern.encode_topk(x, W_enc, b_enc, b_dec, k)

    @encode_topk.register_fake
    def _(x, W_enc, b_enc, b_dec, k):
        return x.new_empty(x.shape[0], k), x.new_empty(x.shape[0], k, dtype=torch.int64)

    @torch.library.custom_op(f"{lib}_encode_topk_bwd", mutates_args=())
    def encode_topk_bwd(
        grad_values: Tensor,
        x: Tensor,
        W_enc: Tensor,
        b_dec: Tensor,
        values: Tensor,
        indices: Tensor,
        need_x_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return topk_encoder_backward(
            kern, grad_values, x, W_enc, b_dec, values, indices, need_x_grad
        )

    @encode_topk_bwd.register_fake
    def _(grad_values, x, W_enc, b_dec, values, indices, need_x_grad):
        dx = torch.empty_like(x) if need_x_grad else x.new_empty(0)
        return (
            dx,
            torch.empty_like(W_enc),
            W_enc.new_empty(W_enc.shape[1]),
            torch.empty_like(b_dec),
        )

    def encode_setup(ctx, inputs, output):
        x, W_enc, _b_enc, b_dec, _k = inputs
        values, indices = output
        ctx.save_for_backward(x, W_enc, b_dec, values, indices)
        ctx.mark_non_differentiable(indices)

    def encode_backward(ctx, grad_values, _grad_indices):
        x, W_enc, b_dec, values, indices = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        dx, dW_enc, db_enc, db_dec = encode_topk_bwd(
            grad_values, x, W_enc, b_dec, values, indices, need_x
        )
        return (dx if need_x else None), dW_enc, db_enc, db_dec, None

    encode_topk.register_autograd(encode_backward, setup_context=encode_setup)

    @torch.library.custom_op(f"{lib}_decode_sparse", mutates_args=())
    def decode_sparse(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
        return kern.decode_sparse(values, indices, W_dec, b_dec)

    @decode_sparse.register_fake
    def _(values, indices, W_dec, b_dec):
        return values.new_empty(values.shape[0], W_dec.shape[1])

    @torch.library.custom_op(f"{lib}_decode_sparse_bwd", mutates_args=())
    def decode_sparse_bwd(
        grad: Tensor, values: Tensor, indices: Tensor, W_dec: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        return sparse_decoder_backward(kern, grad, values, indices, W_dec)

    @decode_sparse_bwd.register_fake
    def _(grad, values, indices, W_dec):
        return torch.empty_like(values), torch.empty_like(W_dec), W_dec.new_empty(W_dec.shape[1])

    def decode_setup(ctx, inputs, output):
        values, indices, W_dec, _b_dec = inputs
        ctx.save_for_backward(values, indices, W_dec)

    def decode_backward(ctx, grad):
        values, indices, W_dec = ctx.saved_tensors
        dv, dW_dec, db_dec = decode_sparse_bwd(grad, values, indices, W_dec)
        return dv, None, dW_dec, db_dec

    decode_sparse.register_autograd(decode_backward, setup_context=decode_setup)

    @torch.library.custom_op(f"{lib}_topk_sae", mutates_args=())
    def topk_sae(
        x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        values, indices = kern.encode_topk(x, W_enc, b_enc, b_dec, k)
        return kern.decode_sparse(values, indices, W_dec, b_dec), values, indices

    @topk_sae.register_fake
    def _(x, W_enc, b_enc, W_dec, b_dec, k):
        B = x.shape[0]
        return (
            x.new_empty(B, W_dec.shape[1]),
            x.new_empty(B, k),
            x.new_empty(B, k, dtype=torch.int64),
        )

    @torch.library.custom_op(f"{lib}_topk_sae_bwd", mutates_args=())
    def topk_sae_bwd(
        grad: Tensor,
        grad_values: Tensor | None,
        x: Tensor,
        W_enc: Tensor,
        b_dec: Tensor,
        W_dec: Tensor,
        values: Tensor,
        indices: Tensor,
        need_x_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return sparse_backward(
            kern, grad, grad_values, x, W_enc, b_dec, W_dec, values, indices, need_x_grad
        )

    @topk_sae_bwd.register_fake
    def _(grad, grad_values, x, W_enc, b_dec, W_dec, values, indices, need_x_grad):
        dx = torch.empty_like(x) if need_x_grad else x.new_empty(0)
        return (
            dx,
            torch.empty_like(W_enc),
            W_enc.new_empty(W_enc.shape[1]),
            torch.empty_like(W_dec),
            torch.empty_like(b_dec),
        )

    def sae_setup(ctx, inputs, output):
        x, W_enc, _b_enc, W_dec, b_dec, _k = inputs
        _recon, values, indices = output
        ctx.save_for_backward(x, W_enc, W_dec, b_dec, values, indices)
        ctx.mark_non_differentiable(indices)

    def sae_backward(ctx, grad, grad_values, _grad_indices):
        x, W_enc, W_dec, b_dec, values, indices = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        if grad is None:
            grad = torch.zeros(x.shape[0], W_dec.shape[1], dtype=x.dtype, device=x.device)
        dx, dW_enc, db_enc, dW_dec, db_dec = topk_sae_bwd(
            grad.contiguous(), grad_values, x, W_enc, b_dec, W_dec, values, indices, need_x
        )
        return (dx if need_x else None), dW_enc, db_enc, dW_dec, db_dec, None

    topk_sae.register_autograd(sae_backward, setup_context=sae_setup)
    return encode_topk, decode_sparse, topk_sae

"""The `native` backend: C++ (OpenMP) TopK encoder, sparse decoder and sparse backward on
CPU tensors behind the Backend protocol; dense codes use the reference (BLAS) ops."""

from __future__ import annotations

from torch import Tensor

from . import native
from . import reference as ref
from .autograd import register_sparse_ops
from .reference import SparseCode


class NativeKernels:
    """The kernel set `ops/autograd.py` wires into differentiable ops."""

    encode_topk = staticmethod(native.encode_topk)
    decode_sparse = staticmethod(native.decode_sparse)
    grad_values = staticmethod(native.grad_values)
    segments = staticmethod(native.feature_segments)
    feature_reduce = staticmethod(native.feature_reduce)
    feature_reduce_cols = staticmethod(native.feature_reduce_cols)
    sparse_backward = staticmethod(native.sparse_backward)


native_encode_topk, native_decode_sparse, native_topk_sae = register_sparse_ops(
    "native", NativeKernels
)


class NativeBackend:
    """Sparse TopK path in C++; ReLU/JumpReLU/BatchTopK codes are dense, so the reference's
    BLAS-backed ops already are the right tool for them."""

    name = "native"

    @staticmethod
    def encode_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int) -> SparseCode:
        return SparseCode(*native_encode_topk(x, W_enc, b_enc, b_dec, k))

    @staticmethod
    def topk_sae(
        x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int
    ) -> tuple[Tensor, SparseCode]:
        recon, values, indices = native_topk_sae(x, W_enc, b_enc, W_dec, b_dec, k)
        return recon, SparseCode(values, indices)

    encode_dense = staticmethod(ref.encode_dense)
    pre_activations = staticmethod(ref.pre_activations)

    @staticmethod
    def decode_sparse(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
        return native_decode_sparse(values, indices, W_dec, b_dec)

    decode_dense = staticmethod(ref.decode_dense)

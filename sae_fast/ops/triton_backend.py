"""The `triton` backend: fused Triton encoder and sparse decoder behind the Backend protocol.

Imported lazily by `dispatch.py`, so `import sae_fast` never pays for Triton's import and
`TRITON_INTERPRET=1` (CPU testing) can be set any time before the first use.
"""

from __future__ import annotations

from torch import Tensor

from . import reference as ref
from . import triton_backward as tb
from . import triton_decoder as td
from . import triton_encoder as te
from .autograd import feature_segments, register_sparse_ops
from .reference import SparseCode
from .triton_encoder import triton_encode_dense, triton_pre_activations


class TritonKernels:
    """The kernel set `ops/autograd.py` wires into differentiable ops."""

    encode_topk = staticmethod(te.encode_topk)
    decode_sparse = staticmethod(td.decode_sparse)
    grad_values = staticmethod(td.grad_values)
    segments = staticmethod(feature_segments)
    feature_reduce = staticmethod(td.feature_reduce)
    sparse_backward = staticmethod(tb.sparse_backward)


triton_encode_topk, triton_decode_sparse, triton_topk_sae = register_sparse_ops(
    "triton", TritonKernels
)

DTYPES = ("float32", "bfloat16", "float16")


class TritonBackend:
    """Fused encoder (TopK / ReLU / JumpReLU epilogues) and sparse decoder in Triton; the
    dense decode and BatchTopK's batch-wide selection use torch (cuBLAS, torch.topk)."""

    name = "triton"

    @staticmethod
    def encode_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int) -> SparseCode:
        return SparseCode(*triton_encode_topk(x, W_enc, b_enc, b_dec, k))

    @staticmethod
    def topk_sae(
        x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int
    ) -> tuple[Tensor, SparseCode]:
        recon, values, indices = triton_topk_sae(x, W_enc, b_enc, W_dec, b_dec, k)
        return recon, SparseCode(values, indices)

    @staticmethod
    def encode_dense(
        x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, threshold: Tensor | None
    ) -> Tensor:
        return triton_encode_dense(x, W_enc, b_enc, b_dec, threshold)

    @staticmethod
    def pre_activations(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
        return triton_pre_activations(x, W_enc, b_enc, b_dec)

    @staticmethod
    def decode_sparse(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
        return triton_decode_sparse(values, indices, W_dec, b_dec)

    decode_dense = staticmethod(ref.decode_dense)

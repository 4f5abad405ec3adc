"""The C++ CPU kernels of sae_fast._C against the reference."""

from __future__ import annotations

import pytest
import torch

from sae_fast.ops import native
from sae_fast.ops import reference as ref
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(
    not native.NATIVE_AVAILABLE, reason=f"sae_fast._C not built: {native.NATIVE_IMPORT_ERROR}"
)

TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-12)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "B,d_in,d_sae,k", [(1, 97, 1031, 1), (33, 97, 1031, 7), (5, 7, 13, 13), (2, 1, 3, 2)]
)
def test_sparse_decode_matches_reference(dtype, B, d_in, d_sae, k):
    g = torch.Generator().manual_seed(B * k)
    W = torch.randn(d_sae, d_in, generator=g, dtype=dtype)
    b = torch.randn(d_in, generator=g, dtype=dtype)
    v = torch.rand(B, k, generator=g, dtype=dtype)
    v[:, 0] = 0  # zero values are skipped by the kernel and must not change the result
    i = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(B)])
    rtol, atol = TOL[dtype]
    assert_close(
        native.sparse_decode(v, i, W, b),
        ref.decode_sparse(v, i, W, b),
        f"sparse_decode {dtype}",
        rtol=rtol,
        atol=atol,
    )


def test_sparse_decode_repeated_indices_and_noncontiguous():
    W = torch.randn(13, 6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    v = torch.rand(4, 6, dtype=torch.float64)[:, ::2]  # non-contiguous [4, 3]
    i = torch.tensor([[1, 1, 1], [0, 12, 0], [5, 5, 6], [2, 3, 4]])
    assert_close(
        native.sparse_decode(v, i, W, b),
        ref.decode_sparse(v, i, W, b),
        "sparse_decode",
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    "change,match",
    [
        ({"i": torch.tensor([[0, 13]])}, r"indices must be in \[0, 13\), got range \[0, 13\]"),
        ({"i": torch.tensor([[-1, 2]])}, r"got range \[-1, 2\]"),
        ({"i": torch.tensor([[0, 1]], dtype=torch.int32)}, "indices must have dtype Long"),
        ({"v": torch.rand(1, 2, dtype=torch.float64)}, "values and W_dec must have the same dtype"),
        ({"v": torch.rand(1, 3)}, "same shape"),
        ({"b": torch.randn(5)}, r"b_dec must have shape \[6\]"),
        ({"W": torch.randn(13, 6, 1)}, "W_dec must have 2 dims"),
    ],
)
def test_sparse_decode_bad_input_is_a_clear_error(change, match):
    args = {
        "v": torch.rand(1, 2),
        "i": torch.tensor([[0, 1]]),
        "W": torch.randn(13, 6),
        "b": torch.randn(6),
    }
    args.update(change)
    with pytest.raises(RuntimeError, match=match):
        native.sparse_decode(args["v"], args["i"], args["W"], args["b"])


def test_sparse_decode_is_registered_for_torch_compile():
    fn = torch.compile(native.sparse_decode, fullgraph=True, backend="eager")
    v, i = torch.rand(3, 2), torch.tensor([[0, 1], [2, 3], [4, 0]])
    W, b = torch.randn(5, 4), torch.randn(4)
    assert_close(fn(v, i, W, b), ref.decode_sparse(v, i, W, b), "compiled", rtol=1e-5, atol=1e-6)

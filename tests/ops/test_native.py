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
    "B,d_in,d_sae,k",
    # d_in: whole 64-wide register tiles, a tile plus a tail, a tail alone
    [(1, 97, 1031, 1), (33, 97, 1031, 7), (9, 128, 300, 5), (5, 7, 13, 13), (2, 1, 3, 2)],
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
        native.decode_sparse(v, i, W, b),
        ref.decode_sparse(v, i, W, b),
        f"decode_sparse {dtype}",
        rtol=rtol,
        atol=atol,
    )


def test_sparse_decode_repeated_indices_and_noncontiguous():
    W = torch.randn(13, 6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    v = torch.rand(4, 6, dtype=torch.float64)[:, ::2]  # non-contiguous [4, 3]
    i = torch.tensor([[1, 1, 1], [0, 12, 0], [5, 5, 6], [2, 3, 4]])
    assert_close(
        native.decode_sparse(v, i, W, b),
        ref.decode_sparse(v, i, W, b),
        "decode_sparse",
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
        native.decode_sparse(args["v"], args["i"], args["W"], args["b"])


def test_sparse_decode_is_registered_for_torch_compile():
    fn = torch.compile(native.decode_sparse, fullgraph=True, backend="eager")
    v, i = torch.rand(3, 2), torch.tensor([[0, 1], [2, 3], [4, 0]])
    W, b = torch.randn(5, 4), torch.randn(4)
    assert_close(fn(v, i, W, b), ref.decode_sparse(v, i, W, b), "compiled", rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- TopK encoder and backward

ENC_SHAPES = [(1, 97, 1031, 1), (33, 97, 1031, 7), (33, 97, 1031, 64), (5, 7, 13, 13), (3, 1, 5, 2)]


def _enc_inputs(B, d_in, d_sae, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d_in, generator=g, dtype=torch.float64)
    W = torch.randn(d_in, d_sae, generator=g, dtype=torch.float64) / d_in**0.5
    be = torch.randn(d_sae, generator=g, dtype=torch.float64) * 0.1
    bd = torch.randn(d_in, generator=g, dtype=torch.float64) * 0.1
    return [t.to(dtype) for t in (x, W, be, bd)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,d_in,d_sae,k", ENC_SHAPES)
@pytest.mark.parametrize("block", [7, 256, 100000])
def test_topk_encode_matches_reference(dtype, B, d_in, d_sae, k, block):
    from tests.helpers import assert_topk_valid

    x, W, be, bd = _enc_inputs(B, d_in, d_sae, dtype)
    v, i = native.encode_topk(x, W, be, bd, k, block)
    assert v.dtype == dtype and i.dtype == torch.int64 and v.shape == (B, k)
    pre = ref.pre_activations(*(t.double() for t in (x, W, be, bd)))
    tol = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-12, 1e-12)}[dtype]
    assert_topk_valid(v, i, pre, k, f"native topk {dtype} block={block}", *tol)


def test_topk_encode_ties_go_to_the_lower_index_across_blocks():
    x = torch.randn(4, 6)
    W = torch.zeros(6, 40)
    be = torch.zeros(40)
    be[[3, 17, 33]] = 1.0  # three tied winners in three different blocks
    for block in (1, 8, 40):
        v, i = native.encode_topk(x, W, be, torch.zeros(6), 2, block)
        assert i.tolist() == [[3, 17]] * 4, block
        v, i = native.encode_topk(x, W, torch.zeros(40), torch.zeros(6), 3, block)
        assert i.tolist() == [[0, 1, 2]] * 4 and not v.any()


@pytest.mark.parametrize("k", [1, 8, 40])
def test_topk_encode_threshold_guess_never_changes_the_result(k):
    """Each row's selection starts from a threshold guessed from the row before it; rows
    whose scale jumps by 1e4 either way (the guess keeps fewer than k, or overflows its
    list), rows of ties, rows with NaN and rows of -inf must still give exactly the
    reference's top k, indices bitwise, in rank order, whatever the block."""
    g = torch.Generator().manual_seed(k)
    B, d_in, d_sae = 48, 16, 700
    x = torch.randn(B, d_in, generator=g)
    x[1::3] *= 1e4  # far above the previous row: the guess keeps every entry (overflow)
    x[2::3] *= 1e-4  # far below: the guess keeps fewer than k
    W = torch.randn(d_in, d_sae, generator=g) / 4
    be = torch.zeros(d_sae)
    x[10] = 0  # a row of ties (every pre-activation equals b_enc = 0)
    x[20, 0] = float("nan")  # NaN everywhere W[0] is non-zero
    bd = torch.zeros(d_in)
    want_v, want_i = ref.encode_topk(x, W, be, bd, k)
    for block in (64, 700, 100000):
        v, i = native.encode_topk(x, W, be, bd, k, block)
        assert torch.equal(i, want_i), block
        assert torch.equal(v.isnan(), want_v.isnan()), block
        assert_close(v.nan_to_num(), want_v.nan_to_num(), f"block {block}", rtol=1e-5, atol=1e-5)
    xi = torch.randn(B, d_in, generator=g)
    be_inf = torch.full((d_sae,), float("-inf"))
    be_inf[::7] = 0  # a hundred finite features, the rest -inf
    want = ref.encode_topk(xi, W, be_inf, bd, k)
    assert torch.equal(native.encode_topk(xi, W, be_inf, bd, k, 700)[1], want[1])


def test_topk_encode_strided_w_enc_view():
    x, W, be, bd = _enc_inputs(9, 11, 64)
    wide = torch.randn(11, 100)
    wide[:, :64] = W
    v, i = native.encode_topk(x, wide[:, :64], be, bd, 5, 16)  # row stride 100
    rv, ri = ref.encode_topk(x, W, be, bd, 5)
    assert torch.equal(i, ri)
    assert_close(v, rv, "strided", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("B,d_in,d_sae,k", ENC_SHAPES[:4])
def test_sparse_backward_ops_match_explicit_formulas(dtype, B, d_in, d_sae, k):
    g = torch.Generator().manual_seed(B + k)
    x = torch.randn(B, d_in, generator=g, dtype=torch.float64)
    W_enc = torch.randn(d_in, d_sae, generator=g, dtype=torch.float64)
    W_dec = torch.randn(d_sae, d_in, generator=g, dtype=torch.float64)
    b_dec = torch.randn(d_in, generator=g, dtype=torch.float64)
    v = torch.rand(B, k, generator=g, dtype=torch.float64)
    v[:, -1] = 0
    i = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(B)])
    grad = torch.randn(B, d_in, generator=g, dtype=torch.float64)
    x, W_enc, W_dec, b_dec, v, grad = (t.to(dtype) for t in (x, W_enc, W_dec, b_dec, v, grad))
    xc = x - b_dec  # the kernel's input, rounded to `dtype`: the reference gets it too
    want = ref.topk_backward(
        grad.double(),
        xc.double(),
        v.double(),
        i,
        W_enc.double(),
        W_dec.double(),
        torch.zeros_like(b_dec, dtype=torch.float64),
    )
    tol = {
        torch.float32: (1e-5, 1e-4),
        torch.float64: (1e-12, 1e-11),
        torch.bfloat16: (1e-2, 1e-2),
    }[dtype]
    dv = native.grad_values(grad, i, W_dec)
    assert dv.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(dv, torch.einsum("bd,bjd->bj", grad.double(), W_dec.double()[i]), "dL/dv", *tol)
    perm, offsets = native.feature_segments(i, d_sae)
    dW_dec, empty = native.feature_reduce(perm, offsets, v, grad, False)
    assert empty.numel() == 0
    assert_close(dW_dec, want.W_dec, "dL/dW_dec", *tol)
    d_pre = dv * (v > 0)
    dW_enc_t, db_enc = native.feature_reduce(perm, offsets, d_pre, xc, True)
    assert_close(dW_enc_t.t(), want.W_enc, "dL/dW_enc", *tol)
    assert_close(db_enc, want.b_enc, "dL/db_enc", *tol)
    cols, db_cols = native.feature_reduce_cols(perm, offsets, d_pre, xc, True)  # [d_in, d_sae]
    assert torch.equal(cols, dW_enc_t.t()) and torch.equal(db_cols, db_enc)


def test_topk_encode_by_whole_rows_matches_the_reference_at_any_thread_count():
    """A dictionary no wider than the block is encoded by whole rows, one GEMM per fifth of
    the batch (here 5 chunks of 260 rows), rows split between threads: the indices equal the
    reference's and the blocked path's, and the result is the same bits at 1-3 threads."""
    x, W, be, bd = _enc_inputs(1300, 24, 300, seed=9)
    want_v, want_i = ref.encode_topk(x, W, be, bd, 8)
    assert torch.equal(native.encode_topk(x, W, be, bd, 8, 64)[1], want_i)  # blocked
    before = torch.get_num_threads()
    got = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            got.append(native.encode_topk(x, W, be, bd, 8, 300))
    finally:
        torch.set_num_threads(before)
    for v, i in got:
        assert torch.equal(i, want_i) and torch.equal(v, got[0][0])
    assert_close(got[0][0], want_v, "whole rows", rtol=1e-5, atol=1e-6)


def test_feature_segments_is_a_stable_counting_sort():
    i = torch.tensor([[4, 1], [1, 0], [4, 4]])
    perm, offsets = native.feature_segments(i, 6)
    assert offsets.tolist() == [0, 1, 3, 3, 3, 6, 6]
    assert perm.tolist() == [3, 1, 2, 0, 4, 5]  # positions ascend within each feature


def test_results_do_not_depend_on_the_thread_count():
    x, W, be, bd = _enc_inputs(64, 33, 777, seed=4)
    i0 = torch.randint(0, 5, (64, 8))  # heavy collisions
    v0 = torch.rand(64, 8)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            perm, offsets = native.feature_segments(i0, 777)
            results.append(
                (
                    native.encode_topk(x, W, be, bd, 9, 100),
                    native.feature_reduce(perm, offsets, v0, x, True),
                    native.feature_reduce_cols(perm, offsets, v0, x, True),
                    native.grad_values(x, i0, W.t().contiguous()),
                )
            )
    finally:
        torch.set_num_threads(before)
    flat = [[t for group in r for t in group] if isinstance(r, tuple) else r for r in results]
    for other in flat[1:]:
        for a, b in zip(flat[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: native.encode_topk(
                torch.randn(2, 3), torch.randn(4, 5), torch.randn(5), torch.randn(3), 2
            ),
            r"W_enc must have shape \[3, d_sae\]",
        ),
        (
            lambda: native.encode_topk(
                torch.randn(2, 3), torch.randn(3, 5), torch.randn(5), torch.randn(3), 6
            ),
            r"k must be in \[1, 5\], got 6",
        ),
        (
            lambda: native.encode_topk(
                torch.randn(2, 3), torch.randn(3, 5), torch.randn(4), torch.randn(3), 2
            ),
            r"b_enc must have shape \[5\]",
        ),
        (
            lambda: native.encode_topk(
                torch.randn(2, 3).double(), torch.randn(3, 5), torch.randn(5), torch.randn(3), 2
            ),
            "same dtype",
        ),
        (
            lambda: native.encode_topk(
                torch.randn(2, 3), torch.randn(3, 5), torch.randn(5), torch.randn(3), 2, 0
            ),
            "block must be >= 1",
        ),
        (
            lambda: native.grad_values(
                torch.randn(2, 4), torch.tensor([[0, 9]] * 2), torch.randn(5, 4)
            ),
            r"got range \[0, 9\]",
        ),
        (
            lambda: native.grad_values(
                torch.randn(3, 4), torch.tensor([[0, 1]] * 2), torch.randn(5, 4)
            ),
            r"grad must have shape \[2, 4\]",
        ),
        (lambda: native.feature_segments(torch.tensor([[0, 7]]), 5), r"got range \[0, 7\]"),
        (
            lambda: native.feature_reduce(
                torch.tensor([0, 5]),
                torch.tensor([0, 2]),
                torch.rand(1, 2),
                torch.rand(1, 3),
                False,
            ),
            r"indices must be in \[0, 2\), got range \[0, 5\]",
        ),
        (
            lambda: native.feature_reduce(
                torch.tensor([0, 1]),
                torch.tensor([0, 1]),
                torch.rand(1, 2),
                torch.rand(1, 3),
                False,
            ),
            "offsets must start at 0 and end at B\\*k = 2",
        ),
        (
            lambda: native.feature_reduce(
                torch.tensor([0, 1]),
                torch.tensor([0, 2]),
                torch.rand(1, 2),
                torch.rand(2, 3),
                False,
            ),
            "src must have 1 rows",
        ),
    ],
)
def test_native_ops_bad_input_is_a_clear_error(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()

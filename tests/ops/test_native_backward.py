"""The native one-walk TopK SAE backward (`native.sparse_backward`, csrc/cpu/topk_backward.cpp)
against the reference's explicit backward: every gradient, awkward shapes (d_in with and
without whole AVX-512 blocks), each dtype, heavy feature collisions, bitwise determinism
across thread counts, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch

from sae_fast.ops import native
from sae_fast.ops import reference as ref
from tests.helpers import assert_close, backward_case

pytestmark = pytest.mark.skipif(
    not native.NATIVE_AVAILABLE, reason=f"sae_fast._C not built: {native.NATIVE_IMPORT_ERROR}"
)

NAMES = ("d_pre", "W_enc", "b_enc", "W_dec", "b_dec")
# d_in: 128-wide register blocks (384), a 16-wide tail after them (144), 16-wide only (48),
# whole 64-wide dots (64), no vector path at all (97, 7)
SHAPES = [(64, 384, 1536, 32), (9, 144, 77, 3), (50, 48, 200, 5), (37, 64, 300, 9),
          (33, 97, 1031, 7), (5, 7, 13, 13), (1, 97, 1031, 1)]  # fmt: skip


def _case(B, d_in, d_sae, k, dtype=torch.float32, seed=0, collide=False):
    p, x, v, i, grad, extra = backward_case(B, d_in, d_sae, k, dtype, seed, collide=collide)
    v[:, -1] = 0  # a ReLU'd value: its d_pre must be 0
    return p, x, v, i, grad, extra


def _run(p, x, v, i, grad, extra):
    return native.sparse_backward(grad, extra, x, p["W_enc"], p["b_dec"], p["W_dec"], v, i)


def _want(p, x, v, i, grad, extra, dtype=torch.float64):
    return ref.topk_backward(
        grad.to(dtype), x.to(dtype), v.to(dtype), i,
        *(p[n].to(dtype) for n in ("W_enc", "W_dec", "b_dec")),
        None if extra is None else extra.to(dtype),
    )  # fmt: skip


@pytest.mark.parametrize("B,d_in,d_sae,k", SHAPES)
@pytest.mark.parametrize("with_extra", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_gradient_matches_the_reference(B, d_in, d_sae, k, with_extra, dtype):
    p, x, v, i, grad, extra = _case(B, d_in, d_sae, k, dtype)
    extra = extra.to(dtype) if with_extra else None
    got = _run(p, x, v, i, grad, extra)
    want = _want(p, x, v, i, grad, extra)
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-12, 1e-12)
    for name, a, b in zip(NAMES, got, want, strict=True):
        assert_close(a, b, f"{name} {dtype}", rtol=rtol, atol=atol)
    assert got[0].dtype == dtype  # d_pre in the accumulation dtype
    for name, t in zip(NAMES[1:], got[1:], strict=True):
        assert t.dtype == dtype and t.shape == p[name].shape, name
    assert got[1].is_contiguous() and got[3].is_contiguous()
    assert torch.all(got[0][:, -1] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,d_in,d_sae,k", [SHAPES[0], SHAPES[1], SHAPES[4]])
def test_low_precision_error_is_within_twice_torchs_own(dtype, B, d_in, d_sae, k):
    """Against fp64 truth, the kernel errs at most 2x (plus a hair) what torch's own
    backward in `dtype` errs: the parameters' dtype on output, fp32 accumulation inside."""
    p, x, v, i, grad, _ = _case(B, d_in, d_sae, k, dtype, seed=3)
    got = _run(p, x, v, i, grad, None)
    truth = _want(p, x, v, i, grad, None)
    torch_own = _want(p, x, v, i, grad, None, dtype=dtype)
    for name, a, t, o in zip(NAMES[1:], got[1:], truth[1:], torch_own[1:], strict=True):
        assert a.dtype == dtype, name
        scale = t.abs().max().item() + 1e-12
        ours = (a.double() - t).abs().max().item() / scale
        theirs = (o.double() - t).abs().max().item() / scale
        assert ours <= 2 * theirs + 1e-3, f"{name} {dtype}: {ours:.2e} vs torch {theirs:.2e}"


def _same_bits_at_1_to_3_threads_and_the_reference(case) -> None:
    """The kernel on `case` at 1, 2 and 3 threads: the same bits, and the reference's values."""
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_run(*case))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for name, a, b in zip(NAMES, results[0], other, strict=True):
            assert torch.equal(a, b), name
    want = _want(*case)
    for name, a, b in zip(NAMES, results[0], want, strict=True):
        assert_close(a, b, name, rtol=1e-5, atol=1e-4)


def test_heavy_collisions_and_thread_counts_give_the_same_bits():
    _same_bits_at_1_to_3_threads_and_the_reference(_case(256, 144, 40, 8, seed=7, collide=True))


@pytest.mark.parametrize("B,d_in,d_sae,k", [(4100, 40, 300, 3), (9000, 40, 7, 2)])
def test_large_batches_walk_narrow_chunks_with_the_same_bits_at_any_thread_count(B, d_in, d_sae, k):
    """A [B, chunk] slab of g or x stays ~1 MiB: chunks of 32 (B=4100) and 16 (B=9000)
    columns, each followed by an 8-column tail; still the reference, bit for bit at 1-3 threads."""
    _same_bits_at_1_to_3_threads_and_the_reference(_case(B, d_in, d_sae, k, seed=11))


def test_gradients_in_reused_memory_are_whole_and_the_pool_can_be_emptied():
    """dW_enc and dW_dec of 1 MiB or more come from blocks kept after earlier gradients were
    freed; every element is rewritten (a block left full of NaN by hand gives no NaN), and
    `release_pooled_blocks` frees what the pool holds."""
    from sae_fast import _C

    p, x, v, i, grad, extra = _case(64, 64, 4200, 4, seed=5)  # [4200, 64] fp32: 1.03 MiB
    first = _run(p, x, v, i, grad, extra)
    first[1].fill_(float("nan"))
    first[3].fill_(float("nan"))
    ptrs = {first[1].data_ptr(), first[3].data_ptr()}
    del first  # both blocks go back to the pool
    p2, x2, v2, i2, grad2, extra2 = _case(64, 64, 4200, 4, seed=6)
    again = _run(p2, x2, v2, i2, grad2, extra2)
    assert {again[1].data_ptr(), again[3].data_ptr()} == ptrs  # the same memory, reused
    want = _want(p2, x2, v2, i2, grad2, extra2)
    for name, a, b in zip(NAMES, again, want, strict=True):
        assert_close(a, b, name, rtol=1e-5, atol=1e-5)
    del again
    assert _C.release_pooled_blocks() >= 2 * 4200 * 64 * 4
    assert _C.release_pooled_blocks() == 0


def test_the_native_sae_backward_walks_once(monkeypatch):
    """SparseAutoencoder on the native backend takes its whole backward from this kernel:
    one call, and no separate grad_values / feature_reduce passes."""
    from sae_fast import SparseAutoencoder

    calls = []
    for name in ("sparse_backward", "grad_values", "feature_reduce", "feature_reduce_cols"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    from sae_fast.ops import native_backend

    for name in ("sparse_backward", "grad_values", "feature_reduce", "feature_reduce_cols"):
        monkeypatch.setattr(native_backend.NativeKernels, name, staticmethod(getattr(native, name)))
    sae = SparseAutoencoder(48, 200, k=5, backend="native")
    x = torch.randn(17, 48)
    ((sae(x).reconstruction - x) ** 2).sum().backward()
    assert calls == ["sparse_backward"], calls
    assert all(t.grad is not None for t in sae.parameters())


@pytest.mark.parametrize(
    "change,match",
    [
        ("grad_rows", "grad must have shape"),
        ("x_cols", "x must have shape"),
        ("gv_shape", "grad_values must have the shape"),
        ("index", "indices must be in"),
        ("dtype", "must have the same dtype"),
        ("w_enc", "W_enc must have shape"),
    ],
)
def test_bad_input_is_a_clear_error(change, match):
    p, x, v, i, grad, extra = _case(8, 16, 40, 3)
    if change == "grad_rows":
        grad = grad[:5]
    elif change == "x_cols":
        x = x[:, :7]
    elif change == "gv_shape":
        extra = extra[:, :2]
    elif change == "index":
        i = i.clone()
        i[0, 0] = 40
    elif change == "dtype":
        grad = grad.double()
    elif change == "w_enc":
        p["W_enc"] = p["W_enc"][:, :30]
    with pytest.raises(RuntimeError, match=match):
        _run(p, x, v, i, grad, extra)

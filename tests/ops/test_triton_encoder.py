"""Fused Triton encoder against the reference (CPU interpreter here, real kernels on a GPU)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DEVICE, ON_GPU
from tests.helpers import assert_close, assert_topk_valid

triton = pytest.importorskip("triton", reason="triton is not installed")
te = pytest.importorskip("sae_fast.ops.triton_encoder")
from sae_fast.ops import reference as ref  # noqa: E402

SHAPES = [(1, 97, 1031), (33, 97, 1031), (5, 7, 13)]
if ON_GPU:
    SHAPES += [(4096, 768, 24576), (1000, 4096, 65536)]


def _inputs(B, d_in, d_sae, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d_in, generator=g)
    W = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    b_enc = torch.randn(d_sae, generator=g) * 0.1
    b_dec = torch.randn(d_in, generator=g) * 0.1
    return [t.to(device=DEVICE, dtype=dtype) for t in (x, W, b_enc, b_dec)]


@pytest.mark.parametrize("method", ["fused", "chunked"])
@pytest.mark.parametrize("B,d_in,d_sae", SHAPES)
@pytest.mark.parametrize("k", [1, 7, 64])
def test_topk_matches_reference(B, d_in, d_sae, k, method):
    k = min(k, d_sae)
    x, W, be, bd = _inputs(B, d_in, d_sae)
    v, i = te.encode_topk(x, W, be, bd, k, method=method)
    assert v.shape == (B, k) and i.dtype == torch.int64
    pre = ref.pre_activations(x.double(), W.double(), be.double(), bd.double())
    assert_topk_valid(v, i, pre, k, f"topk {method} B={B} k={k}")
    want = ref.encode_topk(x, W, be, bd, k)
    assert torch.equal(i, want.indices), "indices differ from the fp32 reference"


@pytest.mark.parametrize("method", ["fused", "chunked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_follows_the_fp32_rule(method, dtype):
    """bf16/fp16: ranked on fp32 pre-activations, exactly as the reference ranks them
    (ties at the k-th bf16 value are common; on fp32 values they are not)."""
    x, W, be, bd = _inputs(33, 97, 1031, dtype=dtype, seed=2)
    v, i = te.encode_topk(x, W, be, bd, 16, method=method)
    want = ref.encode_topk(x, W, be, bd, 16)
    assert v.dtype == dtype
    assert torch.equal(i, want.indices)
    assert_close(v, want.values, f"{dtype} values", rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("B,d_in,d_sae,k", [(33, 97, 1031, 7), (40, 32, 3000, 16), (5, 7, 13, 13)])
def test_fused_kernel_alone_is_exact(B, d_in, d_sae, k, monkeypatch):
    """The fused kernel itself, not its overflow fallback, gives the reference's code."""

    def no_fallback(*args):
        raise AssertionError("the fused path fell back to the chunked path")

    monkeypatch.setattr(te, "encode_topk_chunked", no_fallback)
    monkeypatch.setattr(te, "CAP_PER_K", 10**6)  # lists as long as the row: cannot overflow
    x, W, be, bd = _inputs(B, d_in, d_sae, seed=7)
    v, i = te.encode_topk(x, W, be, bd, k, method="fused")
    want = ref.encode_topk(x, W, be, bd, k)
    assert torch.equal(i, want.indices)
    assert_close(v, want.values, "fused values")


@pytest.mark.parametrize("method", ["fused", "chunked"])
def test_nan_rows_rank_as_the_reference_does(method):
    """A NaN input never yields out-of-range indices: NaN ranks first, as in torch.topk."""
    x, W, be, bd = _inputs(6, 16, 300, seed=8)
    x[2, 3] = float("nan")  # row 2: every pre-activation is NaN
    be[7] = float("nan")  # feature 7: NaN in every row
    v, i = te.encode_topk(x, W, be, bd, 5, method=method)
    want = ref.encode_topk(x, W, be, bd, 5)
    assert torch.equal(i, want.indices)
    assert torch.equal(v.isnan(), want.values.isnan())
    assert bool(((i >= 0) & (i < 300)).all())


def test_fused_overflow_rows_are_redone_exactly(monkeypatch):
    """Columns sorted by value make every tile beat the bound: the candidate lists fill up,
    and those rows must come out exact through the chunked path."""
    monkeypatch.setattr(te, "CAP_PER_K", 1)
    x, W, be, bd = _inputs(9, 16, 2000, seed=4)
    be = torch.linspace(-1, 3, 2000, device=DEVICE)  # later features rank higher
    v, i = te.encode_topk(x, W * 0.01, be, bd, 8, method="fused")
    want = ref.encode_topk(x, W * 0.01, be, bd, 8)
    assert torch.equal(i, want.indices)
    assert_close(v, want.values, "overflow values")


def test_fused_and_chunked_stay_within_the_memory_bound():
    """Extra memory of either path at the GPU benchmark shape is at most 0.2x of one
    [B, d_sae] fp32 buffer (candidate lists + scratch; the chunk buffer)."""
    B, d_sae, k_pad = 8192, 131072, 64
    cfg = te.filter_config(64, torch.bfloat16, arch=90, precision=0)
    n_split, _tiles = te.split_plan(B, d_sae, k_pad, cfg["BLOCK_M"], cfg["BLOCK_N"])
    cand = B * n_split * te.list_capacity(k_pad) * 8
    scratch = triton.cdiv(B, cfg["BLOCK_M"]) * n_split * cfg["BLOCK_M"] * (cfg["BLOCK_N"] + 64) * 4
    dense = B * d_sae * 4
    assert cand + scratch <= 0.2 * dense, (n_split, cand, scratch)
    assert n_split * triton.cdiv(B, cfg["BLOCK_M"]) >= 132, "too few programs for an H100"
    assert te.chunk_rows(B) * d_sae * 4 <= 0.2 * dense


@pytest.mark.parametrize("B,d_in,d_sae", SHAPES[:3])
@pytest.mark.parametrize("jump", [False, True])
def test_dense_epilogues_match_reference(B, d_in, d_sae, jump):
    x, W, be, bd = _inputs(B, d_in, d_sae)
    thr = torch.rand(d_sae, device=DEVICE) * 0.2 if jump else None
    got = te.encode_dense(x, W, be, bd, thr)
    want = ref.encode_dense(x, W, be, bd, thr)
    assert_close(got, want, f"{'jumprelu' if jump else 'relu'} acts", rtol=1e-4, atol=1e-5)


def test_bad_input_is_a_clear_error():
    x, W, be, bd = _inputs(4, 7, 13)
    with pytest.raises(ValueError, match="do not match"):
        te.encode_topk(x[:, :6], W, be, bd, 2)
    with pytest.raises(ValueError, match="k must be in"):
        te.encode_topk(x, W, be, bd, 14)
    with pytest.raises(TypeError, match="share one dtype"):
        te.encode_topk(x.double(), W, be, bd, 2)
    with pytest.raises(TypeError, match="float32/bfloat16/float16"):
        te.encode_topk(*(t.double() for t in (x, W, be, bd)), 2)
    with pytest.raises(ValueError, match="method must be"):
        te.encode_topk(x, W, be, bd, 2, method="dense")
    with pytest.raises(ValueError, match="b_enc must be"):
        te.encode_dense(x, W, be[:5], bd, None)

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


@pytest.mark.parametrize("B,d_in,d_sae", SHAPES)
@pytest.mark.parametrize("k", [1, 7, 64])
def test_topk_matches_reference(B, d_in, d_sae, k):
    k = min(k, d_sae)
    x, W, be, bd = _inputs(B, d_in, d_sae)
    v, i = te.encode_topk_fwd(x, W, be, bd, k)
    assert v.shape == (B, k) and i.dtype == torch.int64
    pre = ref.pre_activations(x.double(), W.double(), be.double(), bd.double())
    assert_topk_valid(v, i, pre, k, f"topk B={B} k={k}")


def test_topk_k_equals_d_sae_and_ties_go_to_lower_index():
    x, W, be, bd = _inputs(5, 7, 13)
    v, i = te.encode_topk_fwd(x, W, be, bd, 13)
    assert torch.equal(torch.sort(i, -1).values, torch.arange(13, device=DEVICE).expand(5, 13))
    # All-equal pre-activations (zero weights, zero bias): ties everywhere.
    W0 = torch.zeros_like(W)
    v, i = te.encode_topk_fwd(x, W0, torch.zeros_like(be), bd, 4)
    assert i.tolist() == [[0, 1, 2, 3]] * 5 and not v.any()
    # -0.0 and +0.0 tie as well (torch.topk treats them as equal).
    be2 = torch.zeros_like(be)
    be2[0] = -0.0
    v, i = te.encode_topk_fwd(x, W0, be2, bd, 1)
    assert i.flatten().tolist() == [0] * 5


def test_topk_is_bitwise_deterministic():
    x, W, be, bd = _inputs(33, 97, 1031, seed=3)
    a = te.encode_topk_fwd(x, W, be, bd, 7)
    b = te.encode_topk_fwd(x.clone(), W.clone(), be.clone(), bd.clone(), 7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_topk_never_allocates_a_dense_buffer():
    """Extra memory is the candidate buffer, far below B x d_sae for a large d_sae."""
    B, d_sae, k_pad = 4096, 131072, 64
    _bm, _bn, _tiles, n_progs = te._tiles(B, d_sae, k_pad)
    cand_bytes = B * n_progs * k_pad * 8
    assert cand_bytes <= 0.1 * B * d_sae * 4, (n_progs, cand_bytes)


@pytest.mark.parametrize("B,d_in,d_sae", SHAPES[:3])
@pytest.mark.parametrize("jump", [False, True])
def test_dense_epilogues_match_reference(B, d_in, d_sae, jump):
    x, W, be, bd = _inputs(B, d_in, d_sae)
    thr = torch.rand(d_sae, device=DEVICE) * 0.2 if jump else None
    got = te.encode_dense_fwd(x, W, be, bd, thr)
    want = ref.encode_dense(x, W, be, bd, "jumprelu" if jump else "relu", threshold=thr)
    assert_close(got, want, f"{'jumprelu' if jump else 'relu'} acts", rtol=1e-4, atol=1e-5)


def test_bad_input_is_a_clear_error():
    x, W, be, bd = _inputs(4, 7, 13)
    with pytest.raises(ValueError, match="do not match"):
        te.encode_topk_fwd(x[:, :6], W, be, bd, 2)
    with pytest.raises(ValueError, match="k must be in"):
        te.encode_topk_fwd(x, W, be, bd, 14)
    with pytest.raises(TypeError, match="share one dtype"):
        te.encode_topk_fwd(x.double(), W, be, bd, 2)
    with pytest.raises(TypeError, match="float32/bfloat16/float16"):
        te.encode_topk_fwd(*(t.double() for t in (x, W, be, bd)), 2)
    with pytest.raises(ValueError, match="b_enc must be"):
        te.encode_dense_fwd(x, W, be[:5], bd, None)

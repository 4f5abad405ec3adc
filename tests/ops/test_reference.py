"""The reference math against hand-computed examples and against torch.autograd."""

from __future__ import annotations

import pytest
import torch

from sae_fast.ops import reference as ref
from tests.helpers import assert_close, make_params, reference_code

# ----------------------------------------------------------------- hand-computed examples


def _tiny():
    # d_in = 2, d_sae = 3. With b_dec = [1, 0]: x - b_dec = [[1, 2], [-1, 1]].
    x = torch.tensor([[2.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    W_enc = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    b_enc = torch.tensor([0.0, -1.0, 0.5], dtype=torch.float64)
    b_dec = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # pre = [[1, 1, 1.5], [-1, 0, 2.5]]
    return x, W_enc, b_enc, b_dec


def test_pre_activations_by_hand():
    x, W_enc, b_enc, b_dec = _tiny()
    pre = ref.pre_activations(x, W_enc, b_enc, b_dec)
    assert pre.tolist() == [[1.0, 1.0, 1.5], [-1.0, 0.0, 2.5]]


def test_relu_and_jumprelu_by_hand():
    pre = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    assert ref.relu_act(pre).tolist() == [[1.0, 0.0, 0.5, 3.0]]
    thr = torch.tensor([0.5, -3.0, 0.5, 2.0])
    # pre > thr: [T, T, F (equal is not above), T]; jumprelu keeps pre itself, even negative.
    assert ref.jumprelu_act(pre, thr).tolist() == [[1.0, -2.0, 0.0, 3.0]]


def test_topk_by_hand_with_ties_and_relu():
    x, W_enc, b_enc, b_dec = _tiny()
    v, i = ref.encode_topk(x, W_enc, b_enc, b_dec, k=2)
    # row 0: pre [1, 1, 1.5] -> 1.5 @2, then tie 1 @0 vs 1 @1: lower index wins.
    assert i.tolist() == [[2, 0], [2, 1]]
    # row 1: pre [-1, 0, 2.5] -> values [2.5, 0]; negative values would be relu'd.
    assert v.tolist() == [[1.5, 1.0], [2.5, 0.0]]
    assert i.dtype == torch.int64
    v1, i1 = ref.encode_topk(x, W_enc, b_enc, b_dec, k=3)
    assert i1.tolist() == [[2, 0, 1], [2, 1, 0]]
    assert v1[1].tolist() == [2.5, 0.0, 0.0]  # the -1 became 0 through the ReLU


def test_topk_ties_at_boundary_lower_index_wins():
    scores = torch.tensor([[0.0, 5.0, 5.0, 5.0, 1.0, 5.0]])
    v, i = ref.topk_select(scores, 2)
    assert i.tolist() == [[1, 2]] and v.tolist() == [[5.0, 5.0]]
    scores = torch.zeros(3, 40)  # all tied
    assert ref.topk_select(scores, 4).indices.tolist() == [[0, 1, 2, 3]] * 3


def test_topk_is_bitwise_deterministic_and_canonical():
    g = torch.Generator().manual_seed(3)
    # Quantised scores produce many ties.
    scores = torch.randint(0, 5, (64, 257), generator=g).double()
    a = ref.topk_select(scores, 37)
    b = ref.topk_select(scores.clone(), 37)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    # Same answer as a stable full sort (the definition of "lower index wins").
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :37]
    assert torch.equal(a.indices, order)


def test_batchtopk_by_hand():
    pre = torch.tensor([[3.0, -1.0, 0.5], [2.0, 2.5, 0.1]])
    # B*k = 2*2 = 4 largest of relu(pre) = [3, 2.5, 2, 0.5]
    out = ref.batchtopk_act(pre, k=2)
    assert out.tolist() == [[3.0, 0.0, 0.5], [2.0, 2.5, 0.0]]
    # k = 1: [3, 2.5] kept -> row 0 keeps one, row 1 keeps one.
    assert ref.batchtopk_act(pre, k=1).tolist() == [[3.0, 0.0, 0.0], [0.0, 2.5, 0.0]]


def test_decode_sparse_by_hand():
    W_dec = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b_dec = torch.tensor([0.5, -0.5])
    v = torch.tensor([[2.0, 1.0]])
    i = torch.tensor([[2, 1]])
    # 2*[1,1] + 1*[0,2] + [0.5,-0.5] = [2.5, 3.5]
    assert ref.decode_sparse(v, i, W_dec, b_dec).tolist() == [[2.5, 3.5]]
    dense = ref.densify(v, i, 3)
    assert dense.tolist() == [[0.0, 1.0, 2.0]]
    assert ref.decode_dense(dense, W_dec, b_dec).tolist() == [[2.5, 3.5]]


def test_densify_adds_repeated_indices_like_decode_sparse():
    W_dec = torch.randn(5, 3, dtype=torch.float64)
    b_dec = torch.randn(3, dtype=torch.float64)
    v = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    i = torch.tensor([[4, 1, 4]])
    assert ref.densify(v, i, 5).tolist() == [[0.0, 2.0, 0.0, 0.0, 4.0]]
    assert_close(
        ref.decode_dense(ref.densify(v, i, 5), W_dec, b_dec),
        ref.decode_sparse(v, i, W_dec, b_dec),
        "decode",
        rtol=1e-12,
        atol=1e-12,
    )


def test_dense_to_sparse_pads_with_zeros():
    acts = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 3.0, 0.0]])
    v, i = ref.dense_to_sparse(acts)
    assert v.tolist() == [[2.0, 1.0], [3.0, 0.0]]
    assert torch.equal(ref.densify(v, i, 4), acts)


def test_encode_dense_is_relu_or_jumprelu():
    x, W_enc, b_enc, b_dec = _tiny()
    pre = ref.pre_activations(x, W_enc, b_enc, b_dec)
    assert torch.equal(ref.encode_dense(x, W_enc, b_enc, b_dec), torch.relu(pre))
    thr = torch.full((pre.shape[-1],), 0.1, dtype=pre.dtype)
    assert torch.equal(ref.encode_dense(x, W_enc, b_enc, b_dec, thr), pre * (pre > thr))


# ----------------------------------------------------------------- explicit backward

SHAPES = [  # (B, d_in, d_sae, k)
    (1, 7, 13, 1),
    (5, 7, 13, 1),
    (5, 7, 13, 13),  # k = d_sae
    (1, 7, 13, 13),
    (9, 11, 31, 4),
]


class ExplicitTopKSAE(torch.autograd.Function):
    """TopK SAE whose backward is `ref.topk_backward`, so gradcheck tests the formulas."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, k):
        v, i = ref.encode_topk(x, W_enc, b_enc, b_dec, k)
        recon = ref.decode_sparse(v, i, W_dec, b_dec)
        ctx.save_for_backward(x, W_enc, W_dec, b_dec, v, i)
        ctx.mark_non_differentiable(i)
        return recon, v, i

    @staticmethod
    def backward(ctx, g_recon, g_values, _g_idx):
        x, W_enc, W_dec, b_dec, v, i = ctx.saved_tensors
        g = ref.topk_backward(g_recon, x, v, i, W_enc, W_dec, b_dec, grad_values=g_values)
        return None, g.W_enc, g.b_enc, g.W_dec, g.b_dec, None


def _separated_inputs(B, d_in, d_sae, seed):
    """Parameters and inputs whose top-k gaps are far above gradcheck's perturbation."""
    p = make_params(d_in, d_sae, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(B, d_in, generator=g, dtype=torch.float64)
    return x, p


@pytest.mark.parametrize("B,d_in,d_sae,k", SHAPES)
def test_topk_backward_gradcheck(B, d_in, d_sae, k):
    x, p = _separated_inputs(B, d_in, d_sae, seed=B + k)
    params = [p[n].requires_grad_() for n in ("W_enc", "b_enc", "W_dec", "b_dec")]

    def f(W_enc, b_enc, W_dec, b_dec):
        recon, v, _ = ExplicitTopKSAE.apply(x, W_enc, b_enc, W_dec, b_dec, k)
        return recon, v

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("B,d_in,d_sae,k", SHAPES)
def test_topk_backward_matches_autograd(B, d_in, d_sae, k):
    x, p = _separated_inputs(B, d_in, d_sae, seed=7 * B + k)
    leaves = {n: t.clone().requires_grad_() for n, t in p.items()}
    v, i = ref.encode_topk(x, leaves["W_enc"], leaves["b_enc"], leaves["b_dec"], k)
    recon = ref.decode_sparse(v, i, leaves["W_dec"], leaves["b_dec"])
    g = torch.Generator().manual_seed(1)
    g_recon = torch.randn(recon.shape, generator=g, dtype=torch.float64)
    g_vals = torch.randn(v.shape, generator=g, dtype=torch.float64)
    ((recon * g_recon).sum() + (v * g_vals).sum()).backward()
    explicit = ref.topk_backward(
        g_recon, x, v.detach(), i, p["W_enc"], p["W_dec"], p["b_dec"], grad_values=g_vals
    )
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert_close(getattr(explicit, name), leaves[name].grad, name, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "batchtopk"])
@pytest.mark.parametrize("B,d_in,d_sae", [(1, 7, 13), (6, 7, 13), (4, 11, 31)])
def test_dense_backward_matches_autograd(activation, B, d_in, d_sae):
    x, p = _separated_inputs(B, d_in, d_sae, seed=B)
    thr = torch.full((d_sae,), 0.05, dtype=torch.float64)
    leaves = {n: t.clone().requires_grad_() for n, t in p.items()}
    acts = reference_code(
        activation, x, leaves["W_enc"], leaves["b_enc"], leaves["b_dec"], k=2, threshold=thr
    )
    recon = ref.decode_dense(acts, leaves["W_dec"], leaves["b_dec"])
    g_recon = torch.randn(
        recon.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    (recon * g_recon).sum().backward()
    with torch.no_grad():
        pre = ref.pre_activations(x, p["W_enc"], p["b_enc"], p["b_dec"])
        a = reference_code(activation, x, p["W_enc"], p["b_enc"], p["b_dec"], k=2, threshold=thr)
        mask = (pre > thr) if activation == "jumprelu" else (a > 0)
    explicit = ref.dense_backward(g_recon, x, a, mask.double(), p["W_enc"], p["W_dec"], p["b_dec"])
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert_close(
            getattr(explicit, name),
            leaves[name].grad,
            f"{activation}:{name}",
            rtol=1e-10,
            atol=1e-12,
        )


def test_topk_backward_catches_a_wrong_formula():
    """The comparison has teeth: dropping the b_dec-through-encoder term is detected."""
    x, p = _separated_inputs(4, 7, 13, seed=0)
    leaves = {n: t.clone().requires_grad_() for n, t in p.items()}
    v, i = ref.encode_topk(x, leaves["W_enc"], leaves["b_enc"], leaves["b_dec"], 3)
    recon = ref.decode_sparse(v, i, leaves["W_dec"], leaves["b_dec"])
    recon.sum().backward()
    explicit = ref.topk_backward(
        torch.ones_like(recon), x, v.detach(), i, p["W_enc"], p["W_dec"], p["b_dec"]
    )
    wrong = torch.ones_like(recon).sum(0)  # g summed, without "- W_enc @ db_enc"
    assert_close(explicit.b_dec, leaves["b_dec"].grad, "b_dec", rtol=1e-10, atol=1e-12)
    with pytest.raises(AssertionError, match=r"\[b_dec\]"):
        assert_close(wrong, leaves["b_dec"].grad, "b_dec", rtol=1e-10, atol=1e-12)


def test_decode_sparse_of_no_latent_is_the_bias_and_backpropagates():
    """A feature shard can hold none of a step's AuxK winners: a zero-width sparse code."""
    W = torch.randn(6, 4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    v = torch.zeros(3, 0, requires_grad=True)
    out = ref.decode_sparse(v, torch.zeros(3, 0, dtype=torch.int64), W, b)
    assert torch.equal(out, b.detach().expand(3, 4))
    out.sum().backward()
    assert torch.equal(b.grad, torch.full((4,), 3.0)) and W.grad is None

"""Pure-torch reference of every SAE op: the single source of truth (docs/design.md section 3).

Every kernel (Triton, C++) is tested against these functions, and the `torch`
backend of `SparseAutoencoder` is built from them. They favour clarity over speed, but
never silently differ from the contract:

    pre    = (x - b_dec) @ W_enc + b_enc                  # [B, d_sae]
    relu:      a = relu(pre)
    jumprelu:  a = pre * (pre > threshold)
    topk:      (v, i) = topk(pre, k) per row; v = relu(v)  # ties: lower index wins
    batchtopk: keep the B*k largest entries of relu(pre) over the whole batch
    recon  = a @ W_dec + b_dec = sum_j v[b, j] * W_dec[i[b, j]] + b_dec

Low precision (bf16/fp16): `x - b_dec` is taken in that dtype, then the product is
accumulated in fp32 and b_enc is added in fp32 (`pre_activations` returns fp32); codes are
ranked and gated on those fp32 values, ties to the lower index, and returned in the
parameters' dtype. Every backend follows this rule, so their TopK indices agree exactly.

All functions take 2-D activations `[B, d_in]`; the module flattens leading dims.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

LOW_PRECISION = (torch.bfloat16, torch.float16)


class SparseCode(NamedTuple):
    """Top-k code of each row: `values [B, k]` (>= 0) and `indices [B, k]` (int64)."""

    values: Tensor
    indices: Tensor


class TopKGrads(NamedTuple):
    """Gradients of a TopK SAE step, as in docs/design.md section 3 (`None` where not asked for)."""

    d_values: Tensor  # [B, k] dL/dpre at the selected entries (relu mask applied)
    W_enc: Tensor  # [d_in, d_sae]
    b_enc: Tensor  # [d_sae]
    W_dec: Tensor  # [d_sae, d_in]
    b_dec: Tensor  # [d_in]


# ----------------------------------------------------------------------------- encoder


def pre_activations(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    """Dense pre-activations `(x - b_dec) @ W_enc + b_enc`, shape `[B, d_sae]`; fp32 for
    bf16/fp16 parameters (the low-precision rule in the module docstring)."""
    xc = x - b_dec  # [B, d_in], in the parameters' dtype
    if W_enc.dtype in LOW_PRECISION:
        return xc.float() @ W_enc.float() + b_enc.float()  # fp32 accumulation and bias
    return xc @ W_enc + b_enc  # [B, d_sae]


def fold_input_bias(W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    """b_enc' such that `(x - b_dec) @ W_enc + b_enc' == x @ W_enc + b_enc` (for SAEs that do
    not centre their input), in float64 so that the one rounding happens at the final cast."""
    return b_enc.double() + b_dec.double() @ W_enc.double()


def relu_act(pre: Tensor) -> Tensor:
    """ReLU code `relu(pre)`."""
    return torch.relu(pre)


def jumprelu_act(pre: Tensor, threshold: Tensor) -> Tensor:
    """JumpReLU code `pre * (pre > threshold)` (threshold `[d_sae]`, broadcast over rows)."""
    return pre * (pre > threshold).to(pre.dtype)


def topk_select(scores: Tensor, k: int, ordered: bool = True) -> SparseCode:
    """Top-k of each row with a canonical order: value descending, then index ascending.

    Ties are broken by the lower index, also at the selection boundary, so the result is a
    pure function of `scores` (bitwise deterministic). Returns raw values (no ReLU).
    `ordered=False` keeps the same selection in torch.topk's order (for a caller that
    scatters it, where the order does not matter), saving two sorts.
    """
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    vals, idx = torch.topk(scores, k, dim=-1, sorted=True)  # [B, k]
    # Rows where the k-th value ties with an unselected entry: torch.topk may have picked
    # any of the tied entries; redo those rows with a stable sort (lower index first).
    kth = vals[..., -1:]  # [B, 1]
    n_ge = (scores >= kth).sum(-1)  # [B]
    nan_kth = kth.isnan().squeeze(-1)  # NaN ranks first (torch.topk): NaNs tie with each other
    if bool(nan_kth.any()):
        n_ge = torch.where(nan_kth, scores.isnan().sum(-1), n_ge)
    ambiguous = n_ge > k
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero(as_tuple=True)[0]
        _, order = torch.sort(scores[rows], dim=-1, descending=True, stable=True)
        idx = idx.clone()
        idx[rows] = order[:, :k]
        vals = torch.gather(scores, -1, idx)
    if not ordered:
        return SparseCode(vals, idx)
    # Canonical order within the selected set: sort by index, then stably by value.
    idx, perm = torch.sort(idx, dim=-1)
    vals = torch.gather(vals, -1, perm)
    vals, perm = torch.sort(vals, dim=-1, descending=True, stable=True)
    idx = torch.gather(idx, -1, perm)
    return SparseCode(vals, idx)


def topk_act(pre: Tensor, k: int) -> SparseCode:
    """TopK code: the k largest pre-activations of each row, then ReLU on the values."""
    vals, idx = topk_select(pre, k)
    return SparseCode(torch.relu(vals), idx)


def batchtopk_act(pre: Tensor, k: int) -> Tensor:
    """BatchTopK code: keep the `B*k` largest entries of `relu(pre)` over the whole batch.

    Dense `[B, d_sae]` result; ties broken by the lower flat index (row-major).
    """
    acts = torch.relu(pre)  # [B, d_sae]
    flat = acts.reshape(-1)
    keep = min(k * acts.shape[0], flat.numel())
    _, idx = topk_select(flat.unsqueeze(0), keep)  # [1, B*k]
    out = torch.zeros_like(flat)
    out[idx[0]] = flat[idx[0]]
    return out.view_as(acts)


def encode_dense(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, threshold: Tensor | None = None
) -> Tensor:
    """Dense code `[B, d_sae]`: `relu(pre)`, or `jumprelu(pre, threshold)` when a threshold
    `[d_sae]` is given; in the parameters' dtype. (TopK and BatchTopK select from these.)"""
    pre = pre_activations(x, W_enc, b_enc, b_dec)
    if threshold is None:
        return relu_act(pre).to(W_enc.dtype)
    return jumprelu_act(pre, threshold).to(W_enc.dtype)


def encode_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int) -> SparseCode:
    """TopK code of `x`: `values [B, k]` >= 0 (parameters' dtype) and `indices [B, k]`."""
    values, indices = topk_act(pre_activations(x, W_enc, b_enc, b_dec), k)
    return SparseCode(values.to(W_enc.dtype), indices)


def densify(values: Tensor, indices: Tensor, d_sae: int) -> Tensor:
    """Scatter a sparse code `[B, k]` into a dense `[B, d_sae]` matrix; repeated indices
    add up, so `decode_dense(densify(v, i)) == decode_sparse(v, i)` always."""
    out = values.new_zeros(*values.shape[:-1], d_sae)
    return out.scatter_add(-1, indices, values)


def dense_to_sparse(acts: Tensor) -> SparseCode:
    """Sparse view of a dense code: each row's non-zeros (largest first), zero-padded to
    the largest row L0 of the batch (at least 1)."""
    width = max(int((acts != 0).sum(-1).max()), 1) if acts.numel() else 1
    _, idx = topk_select(acts.abs(), min(width, acts.shape[-1]))  # [B, width]
    return SparseCode(torch.gather(acts, -1, idx), idx)


# ----------------------------------------------------------------------------- decoder


def decode_dense(acts: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """Dense decode `acts @ W_dec + b_dec`, shape `[B, d_in]`."""
    return acts @ W_dec + b_dec


def decode_sparse(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """Sparse decode `recon[b] = sum_j v[b, j] * W_dec[i[b, j]] + b_dec` (differentiable)."""
    if indices.shape[-1] == 0:  # no active latent (a feature shard without AuxK candidates)
        return values.new_zeros(indices.shape[0], W_dec.shape[1]) + b_dec
    # embedding_bag is the gather-and-sum written once by torch, with a sparse backward.
    out = torch.nn.functional.embedding_bag(
        indices, W_dec, per_sample_weights=values, mode="sum"
    )  # [B, d_in]
    return out + b_dec


# ----------------------------------------------------------------------------- backward


def b_dec_grad_through_encoder(W_enc: Tensor, db_enc: Tensor) -> Tensor:
    """The b_dec gradient that flows through `x - b_dec` in the encoder:
    `-(sum_b dL/dpre[b]) @ W_enc^T = -W_enc @ dL/db_enc` (the decoder adds `sum_b g[b]`)."""
    return -(W_enc @ db_enc)


def bias_grads(grad: Tensor, W_enc: Tensor, db_enc: Tensor, b_dec: Tensor) -> tuple[Tensor, Tensor]:
    """(dL/db_enc in W_enc's dtype, dL/db_dec in b_dec's) of a TopK SAE from the per-feature
    sums `db_enc` (any float dtype) and `grad = dL/drecon`: the decoder's `sum_b g[b]` plus
    the encoder's part. The kernels' backward ends here."""
    db_enc = db_enc.to(W_enc.dtype)  # a matvec in W_enc's dtype, never a copy of W_enc
    acc = torch.promote_types(grad.dtype, torch.float32)
    db_dec = grad.sum(0, dtype=acc) + b_dec_grad_through_encoder(W_enc, db_enc)
    return db_enc, db_dec.to(b_dec.dtype)


def encoder_backward_dense(
    d_pre: Tensor, x: Tensor, W_enc: Tensor, b_dec: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dW_enc, db_enc, db_dec through the encoder, dx) from a dense `dL/dpre [B, d_sae]`."""
    db_enc = d_pre.sum(0)
    return (
        (x - b_dec).t() @ d_pre,  # [d_in, d_sae]
        db_enc,
        b_dec_grad_through_encoder(W_enc, db_enc),
        d_pre @ W_enc.t(),  # [B, d_in]
    )


def topk_backward(
    grad_recon: Tensor,
    x: Tensor,
    values: Tensor,
    indices: Tensor,
    W_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    grad_values: Tensor | None = None,
) -> TopKGrads:
    """Explicit backward of a TopK SAE (docs/design.md section 3), written without autograd.

    `grad_recon = dL/drecon [B, d_in]`; `grad_values [B, k]` is an optional extra gradient
    reaching the code directly (for example from an L1 or AuxK term). `x` needs no gradient.
    """
    d_sae = W_dec.shape[0]
    flat_idx = indices.reshape(-1)  # [B*k]
    # dL/dv[b, j] = g[b] . W_dec[i[b, j]]  (+ direct gradient), masked by the ReLU on v.
    g_dot = torch.einsum("bd,bjd->bj", grad_recon, W_dec[indices])  # [B, k]
    if grad_values is not None:
        g_dot = g_dot + grad_values
    d_values = g_dot * (values > 0).to(g_dot.dtype)  # [B, k]

    # dL/dW_dec[f] = sum over (b, j) with i[b, j] = f of v[b, j] * g[b]
    contrib = values.unsqueeze(-1) * grad_recon.unsqueeze(1)  # [B, k, d_in]
    dW_dec = torch.zeros_like(W_dec).index_add_(0, flat_idx, contrib.reshape(-1, W_dec.shape[1]))

    # dL/dW_enc[:, f] = sum over (b, j) with i[b, j] = f of dL/dv[b, j] * (x[b] - b_dec)
    xc = x - b_dec  # [B, d_in]
    enc_contrib = d_values.unsqueeze(-1) * xc.unsqueeze(1)  # [B, k, d_in]
    dW_enc_t = torch.zeros(d_sae, W_enc.shape[0], dtype=W_enc.dtype, device=W_enc.device)
    dW_enc_t.index_add_(0, flat_idx, enc_contrib.reshape(-1, W_enc.shape[0]))

    # dL/db_enc[f] = sum over (b, j) with i[b, j] = f of dL/dv[b, j]
    db_enc = torch.zeros(d_sae, dtype=W_enc.dtype, device=W_enc.device)
    db_enc.index_add_(0, flat_idx, d_values.reshape(-1))

    # dL/db_dec = sum_b g[b] - (sum_b dL/dpre[b]) @ W_enc^T, and sum_b dL/dpre[b] = dL/db_enc
    db_dec = grad_recon.sum(0) + b_dec_grad_through_encoder(W_enc, db_enc)
    return TopKGrads(d_values, dW_enc_t.t(), db_enc, dW_dec, db_dec)


def dense_backward(
    grad_recon: Tensor,
    x: Tensor,
    acts: Tensor,
    pre_mask: Tensor,
    W_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
) -> TopKGrads:
    """Explicit backward of a dense code `a = pre * mask` (relu, jumprelu, batchtopk).

    `pre_mask [B, d_sae]` is d a / d pre (1 where the entry passed its gate, else 0), the
    straight-through treatment of the gate itself is the trainer's business.
    """
    d_acts = grad_recon @ W_dec.t()  # [B, d_sae]  dL/da = g . W_dec[f]
    d_pre = d_acts * pre_mask  # [B, d_sae]
    dW_enc, db_enc, db_dec_enc, _ = encoder_backward_dense(d_pre, x, W_enc, b_dec)
    return TopKGrads(
        d_values=d_pre,
        W_enc=dW_enc,
        b_enc=db_enc,
        W_dec=acts.t() @ grad_recon,  # [d_sae, d_in]
        b_dec=grad_recon.sum(0) + db_dec_enc,
    )


# ----------------------------------------------------------------------------- JumpReLU STE
# Straight-through estimators of JumpReLU's training (Rajamanoharan et al. 2024): exact
# gradients in pre where the gate passes, and a rectangle kernel of width `bandwidth` around
# the jump for the threshold. Elementwise torch on the backend's `pre_activations`.


def _rect(z: Tensor) -> Tensor:
    return ((z > -0.5) & (z < 0.5)).to(z.dtype)


class JumpReLUSTE(torch.autograd.Function):
    """a = pre * H(pre - t): exact gradient in pre (where it passes), STE gradient in t."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return jumprelu_act(pre, threshold)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, t = ctx.saved_tensors
        eps = ctx.bandwidth
        d_pre = grad * (pre > t).to(grad.dtype)
        # d a / d t = -(t / eps) * rect((pre - t) / eps)
        d_t = (grad * -(t / eps) * _rect((pre - t) / eps)).sum(0)
        return d_pre, d_t, None


class StepL0(torch.autograd.Function):
    """L0 = sum_f H(pre - t) per row (mean over rows), with d L0 / d t = -(1/eps) rect(..)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype).sum(-1).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, t = ctx.saved_tensors
        eps = ctx.bandwidth
        d_t = grad * (-(1.0 / eps) * _rect((pre - t) / eps)).sum(0) / pre.shape[0]
        return None, d_t, None


def jumprelu_ste(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """`pre * (pre > threshold)`, with the straight-through threshold gradient."""
    return JumpReLUSTE.apply(pre, threshold, bandwidth)


def step_l0(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Mean over rows of the L0 `sum_f (pre > threshold)`, with its threshold gradient."""
    return StepL0.apply(pre, threshold, bandwidth)

"""Triton sparse decoder and the sparse backward pieces (docs/design.md section 3).

- `decode_sparse`: recon[b] = sum_j v[b, j] * W[i[b, j]] + b_dec (any row/col strides of
  W, so `W_enc.T` serves as a dictionary for dL/dx).
- `grad_values`: dL/dv[b, j] = g[b] . W_dec[i[b, j]]  (B*k gathered dot products).
- `feature_reduce`: out[f] = sum over (b, j) with i[b, j] = f of coef[b, j] * src[b], over
  indices sorted by feature (stable sort + CSR offsets): one program per (feature, d-block),
  fp32 accumulation, no atomics, so the result is deterministic. It gives dL/dW_dec
  (coef = v, src = g) and dL/dW_enc^T, dL/db_enc (coef = dL/dpre, src = x - b_dec).

The autograd wiring of these kernels lives in `ops/autograd.py`, shared with the native ones.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _sparse_decode_kernel(
    v_ptr, i_ptr, w_ptr, b_ptr, out_ptr, K, D, stride_wf, stride_wd,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    d_ok = ds < D
    acc = tl.load(b_ptr + ds, mask=d_ok, other=0.0).to(tl.float32)  # [BD] starts at b_dec
    for j0 in range(0, K, BLOCK_K):
        js = j0 + tl.arange(0, BLOCK_K)  # [BK]
        j_ok = js < K
        idx = tl.load(i_ptr + b * K + js, mask=j_ok, other=0)  # [BK]
        v = tl.load(v_ptr + b * K + js, mask=j_ok, other=0.0).to(tl.float32)  # [BK]
        w = tl.load(
            w_ptr + idx[:, None] * stride_wf + ds[None, :] * stride_wd,
            mask=j_ok[:, None] & d_ok[None, :],
            other=0.0,
        ).to(tl.float32)  # [BK, BD]
        acc += tl.sum(v[:, None] * w, axis=0)
    tl.store(out_ptr + b * D + ds, acc.to(out_ptr.dtype.element_ty), mask=d_ok)


@triton.jit
def _grad_values_kernel(
    g_ptr, i_ptr, w_ptr, dv_ptr, K, D, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    js = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
    j_ok = js < K
    idx = tl.load(i_ptr + b * K + js, mask=j_ok, other=0)  # [BK]
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < D
        g = tl.load(g_ptr + b * D + ds, mask=d_ok, other=0.0).to(tl.float32)  # [BD]
        w = tl.load(
            w_ptr + idx[:, None] * D + ds[None, :], mask=j_ok[:, None] & d_ok[None, :], other=0.0
        ).to(tl.float32)  # [BK, BD]
        acc += tl.sum(w * g[None, :], axis=1)  # dL/dv = g . W_dec[i]
    tl.store(dv_ptr + b * K + js, acc, mask=j_ok)


@triton.jit
def _feature_reduce_kernel(
    perm_ptr, offsets_ptr, coef_ptr, src_ptr, out_ptr, sum_ptr, K, D,
    WITH_SUM: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    f = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    ds = pid_d.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    d_ok = ds < D
    start = tl.load(offsets_ptr + f)
    end = tl.load(offsets_ptr + f + 1)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    total = tl.zeros([BLOCK_P], dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)  # [BP] positions in the feature-sorted order
        p_ok = ps < end
        flat = tl.load(perm_ptr + ps, mask=p_ok, other=0)  # [BP] flat (b * K + j)
        c = tl.load(coef_ptr + flat, mask=p_ok, other=0.0).to(tl.float32)  # [BP]
        rows = flat // K
        s = tl.load(
            src_ptr + rows[:, None] * D + ds[None, :], mask=p_ok[:, None] & d_ok[None, :], other=0.0
        ).to(tl.float32)  # [BP, BD]
        acc += tl.sum(c[:, None] * s, axis=0)
        total += c
    tl.store(out_ptr + f * D + ds, acc, mask=d_ok)
    if WITH_SUM:
        if pid_d == 0:
            tl.store(sum_ptr + f, tl.sum(total, axis=0))


def decode_sparse(values: Tensor, indices: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """`[B, D]` = sum_j values[b, j] * W[indices[b, j]] + b (W may be a strided view)."""
    B, K = values.shape
    D = W.shape[1]
    values, indices, b = values.contiguous(), indices.contiguous(), b.contiguous()
    out = torch.empty(B, D, dtype=values.dtype, device=values.device)
    block_d = min(128, triton.next_power_of_2(D))
    _sparse_decode_kernel[(B, triton.cdiv(D, block_d))](
        values, indices, W, b, out, K, D, W.stride(0), W.stride(1), BLOCK_K=16, BLOCK_D=block_d,
    )  # fmt: skip
    return out


def grad_values(grad: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """dL/dv `[B, k]` (fp32) = gathered dot products of `grad [B, d_in]` with W_dec rows."""
    B, K = indices.shape
    D = W_dec.shape[1]
    grad, indices, W_dec = grad.contiguous(), indices.contiguous(), W_dec.contiguous()
    dv = torch.empty(B, K, dtype=torch.float32, device=grad.device)
    _grad_values_kernel[(B, triton.cdiv(K, 16))](
        grad, indices, W_dec, dv, K, D, BLOCK_K=16, BLOCK_D=min(128, triton.next_power_of_2(D)),
    )  # fmt: skip
    return dv


def feature_reduce(
    perm: Tensor, offsets: Tensor, coef: Tensor, src: Tensor, with_sum: bool
) -> tuple[Tensor, Tensor]:
    """out `[d_sae, D]` (fp32) = per-feature sum of coef[b, j] * src[b] over the segments of
    `feature_segments`; and the per-feature sum of coef (empty unless `with_sum`)."""
    K = coef.shape[1]
    D = src.shape[1]
    d_sae = offsets.numel() - 1
    coef, src = coef.contiguous(), src.contiguous()
    out = torch.empty(d_sae, D, dtype=torch.float32, device=src.device)
    sums = torch.empty(d_sae if with_sum else 0, dtype=torch.float32, device=src.device)
    block_d = min(128, triton.next_power_of_2(D))
    _feature_reduce_kernel[(d_sae, triton.cdiv(D, block_d))](
        perm, offsets, coef, src, out, sums if with_sum else out, K, D, WITH_SUM=with_sum,
        BLOCK_P=16, BLOCK_D=block_d,
    )  # fmt: skip
    return out, sums


# ----------------------------------------------------------------------------- AOT configs
# What the launchers above compile on a GPU, for `make gpu-compile` (ops/triton_aot.py).
# BLOCK_D = min(128, next_pow2(D)) is 128 for every D >= 128 (all real d_in); the smaller
# blocks of toy D < 128 are not listed. As triton specialises at launch: pointers from
# torch allocations and D (d_in) are multiples of 16, k is not assumed to be; a unit stride
# becomes the constant 1 (W_dec row-major has stride_wd = 1; W_enc.T, the dictionary of
# dL/dx, has stride_wf = 1).
_AOT_DTYPES = ("bf16", "fp16", "fp32")


def aot_configs() -> list:
    """The launch configurations of `decode_sparse`, `grad_values`, `feature_reduce`."""
    from .triton_aot import KernelConfig

    out = []
    for dt in _AOT_DTYPES:
        p = "*" + dt
        decode_sig = dict(v_ptr=p, i_ptr="*i64", w_ptr=p, b_ptr=p, out_ptr=p, K="i32", D="i32")
        ptrs = ("v_ptr", "i_ptr", "w_ptr", "b_ptr", "out_ptr", "D")
        for layout, stride, unit in (("W rows", "stride_wf", "stride_wd"),
                                     ("W=W_enc.T", "stride_wd", "stride_wf")):  # fmt: skip
            out.append(KernelConfig(
                name="decode_sparse", fn=_sparse_decode_kernel,
                signature={**decode_sig, stride: "i32"},
                constexprs={unit: 1, "BLOCK_K": 16, "BLOCK_D": 128},
                label=f"{dt} {layout} BLOCK_K=16 BLOCK_D=128",
                divisible=(*ptrs, stride), int64_offsets=True,
            ))  # fmt: skip
        out.append(KernelConfig(
            name="grad_values", fn=_grad_values_kernel,
            signature=dict(g_ptr=p, i_ptr="*i64", w_ptr=p, dv_ptr="*fp32", K="i32", D="i32"),
            constexprs=dict(BLOCK_K=16, BLOCK_D=128), label=f"{dt} BLOCK_K=16 BLOCK_D=128",
            divisible=("g_ptr", "i_ptr", "w_ptr", "dv_ptr", "D"), int64_offsets=True,
        ))  # fmt: skip
        for with_sum in (False, True):  # dL/dW_dec; dL/dW_enc^T with dL/db_enc
            out.append(KernelConfig(
                name="feature_reduce", fn=_feature_reduce_kernel,
                signature=dict(perm_ptr="*i64", offsets_ptr="*i64", coef_ptr=p, src_ptr=p,
                               out_ptr="*fp32", sum_ptr="*fp32", K="i32", D="i32"),
                constexprs=dict(WITH_SUM=with_sum, BLOCK_P=16, BLOCK_D=128),
                label=f"{dt} WITH_SUM={with_sum} BLOCK_P=16 BLOCK_D=128",
                divisible=("perm_ptr", "offsets_ptr", "coef_ptr", "src_ptr", "out_ptr",
                           "sum_ptr", "D"), int64_offsets=True,
            ))  # fmt: skip
    return out

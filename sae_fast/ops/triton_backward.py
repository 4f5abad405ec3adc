"""Triton backward of a TopK SAE in one pass over the features (docs/design.md section 3).

One stable sort of the flat indices by feature (`feature_segments`) serves every gradient.
Each program owns `BLOCK_F` consecutive features and `BLOCK_D` columns of d_in, walks the
positions of its features in sorted order, and accumulates with tensor-core products
against one-hot coefficient matrices `C [BLOCK_P, BLOCK_F]`:

    dL/dW_dec[f, :]  = sum_{i[b,j]=f} v[b,j] g[b]            = C_v^T @ g[rows]
    dL/dW_enc[:, f]  = sum_{i[b,j]=f} dpre[b,j] (x[b]-b_dec) = xc[rows]^T @ C_dpre
    dL/db_enc[f]     = sum_{i[b,j]=f} dpre[b,j]

Results are written once, in the parameters' dtype and layout (`W_dec [d_sae, d_in]`,
`W_enc [d_in, d_sae]`): no fp32 `[d_sae, d_in]` buffer, no transpose, no atomics, so the
result is bitwise deterministic. bf16/fp16 operands are exact in tf32, so the products
run as tf32 with fp32 accumulation (only dpre is rounded, to tf32's 10-bit mantissa).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import reference as ref
from . import triton_decoder as td
from .autograd import feature_segments

BLOCK_F, BLOCK_P, BLOCK_D, NUM_WARPS = 32, 32, 128, 4
# fp32 "ieee" products run on FMA units with operands in registers: half the columns.
IEEE_BLOCK_D, IEEE_NUM_WARPS = 32, 8


@triton.jit
def _onehot_dot(a, b, acc, PRECISION: tl.constexpr):
    """acc += a @ b for fp32 operands: 0 tf32 tensor cores, 1 fp32 "ieee"."""
    if PRECISION == 0:
        return tl.dot(a, b, acc, input_precision="tf32")
    else:
        return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _topk_backward_kernel(
    perm_ptr, offsets_ptr, idx_ptr, v_ptr, dpre_ptr, g_ptr, xc_ptr,
    dW_dec_ptr, dW_enc_ptr, db_enc_ptr, K, D, D_SAE,
    BLOCK_F: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    f0 = tl.program_id(0).to(tl.int64) * BLOCK_F
    pid_d = tl.program_id(1)
    fs = f0 + tl.arange(0, BLOCK_F)  # [BF] features of this program
    f_ok = fs < D_SAE
    ds = pid_d.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # [BD]
    d_ok = ds < D
    start = tl.load(offsets_ptr + f0)
    end = tl.load(offsets_ptr + tl.minimum(f0 + BLOCK_F, D_SAE))
    acc_dec = tl.zeros([BLOCK_F, BLOCK_D], dtype=tl.float32)  # dW_dec[fs, ds]
    acc_enc = tl.zeros([BLOCK_D, BLOCK_F], dtype=tl.float32)  # dW_enc[ds, fs]
    sums = tl.zeros([BLOCK_F], dtype=tl.float32)  # db_enc[fs]
    for p0 in range(start, end, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P).to(tl.int64)  # [BP] sorted positions
        p_ok = ps < end
        flat = tl.load(perm_ptr + ps, mask=p_ok, other=0)  # [BP] flat b * K + j (int64)
        feat = tl.load(idx_ptr + flat, mask=p_ok, other=-1)  # [BP] its feature
        hot = (feat[:, None] == fs[None, :].to(tl.int64)) & p_ok[:, None]  # [BP, BF]
        v = tl.load(v_ptr + flat, mask=p_ok, other=0.0).to(tl.float32)  # [BP]
        dp = tl.load(dpre_ptr + flat, mask=p_ok, other=0.0)  # [BP] fp32
        rows = flat // K  # [BP]
        m = p_ok[:, None] & d_ok[None, :]
        g = tl.load(g_ptr + rows[:, None] * D + ds[None, :], mask=m, other=0.0)  # [BP, BD]
        xc = tl.load(xc_ptr + rows[:, None] * D + ds[None, :], mask=m, other=0.0)  # [BP, BD]
        c_v = tl.where(hot, v[:, None], 0.0)  # [BP, BF]
        c_d = tl.where(hot, dp[:, None], 0.0)  # [BP, BF]
        acc_dec = _onehot_dot(tl.trans(c_v), g.to(tl.float32), acc_dec, PRECISION)  # v . g
        acc_enc = _onehot_dot(tl.trans(xc.to(tl.float32)), c_d, acc_enc, PRECISION)  # dpre . xc
        sums += tl.sum(c_d, axis=0)
    fs64 = fs.to(tl.int64)
    tl.store(
        dW_dec_ptr + fs64[:, None] * D + ds[None, :],
        acc_dec.to(dW_dec_ptr.dtype.element_ty),
        mask=f_ok[:, None] & d_ok[None, :],
    )
    tl.store(
        dW_enc_ptr + ds[:, None] * D_SAE + fs64[None, :],
        acc_enc.to(dW_enc_ptr.dtype.element_ty),
        mask=d_ok[:, None] & f_ok[None, :],
    )
    if pid_d == 0:
        tl.store(db_enc_ptr + fs64, sums.to(db_enc_ptr.dtype.element_ty), mask=f_ok)


def aot_configs() -> list:
    """The GPU launch configurations of `_topk_backward_kernel` (per dtype and precision)."""
    from .triton_aot import KernelConfig

    out = []
    for dt in ("bf16", "fp16", "fp32"):
        p = "*" + dt
        for prec in (0, 1) if dt == "fp32" else (0,):
            block_d, warps = (IEEE_BLOCK_D, IEEE_NUM_WARPS) if prec == 1 else (BLOCK_D, NUM_WARPS)
            out.append(KernelConfig(
                name="topk_backward", fn=_topk_backward_kernel,
                signature=dict(perm_ptr="*i64", offsets_ptr="*i64", idx_ptr="*i64", v_ptr=p,
                               dpre_ptr="*fp32", g_ptr=p, xc_ptr=p, dW_dec_ptr=p, dW_enc_ptr=p,
                               db_enc_ptr="*fp32", K="i32", D="i32", D_SAE="i32"),
                constexprs=dict(BLOCK_F=BLOCK_F, BLOCK_P=BLOCK_P, BLOCK_D=block_d, PRECISION=prec),
                num_warps=warps, num_stages=3,
                label=f"{dt} prec={prec} BLOCK_F={BLOCK_F} BLOCK_P={BLOCK_P} BLOCK_D={block_d}",
                divisible=("perm_ptr", "offsets_ptr", "idx_ptr", "v_ptr", "dpre_ptr", "g_ptr",
                           "xc_ptr", "dW_dec_ptr", "dW_enc_ptr", "db_enc_ptr", "D", "D_SAE"),
                int64_offsets=True,
            ))  # fmt: skip
    return out


def _precision(dtype: torch.dtype) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return 1  # the interpreter has no tf32: exact fp32
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return 1
    return 0


def sparse_backward(
    grad: Tensor,
    grad_values: Tensor | None,
    x: Tensor,
    W_enc: Tensor,
    b_dec: Tensor,
    W_dec: Tensor,
    values: Tensor,
    indices: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(d_pre [B, k] fp32, dW_enc, db_enc, dW_dec, db_dec) of a TopK SAE from one sort.

    `grad = dL/drecon [B, d_in]`; `grad_values` an optional direct gradient on the code."""
    _B, K = indices.shape
    d_sae, D = W_dec.shape
    dv = td.grad_values(grad, indices, W_dec)  # [B, k] fp32, dL/dv = g . W_dec[i]
    if grad_values is not None:
        dv = dv + grad_values
    d_pre = (dv * (values > 0)).contiguous()  # [B, k] ReLU mask
    perm, offsets = feature_segments(indices, d_sae)  # the one sort
    xc = (x - b_dec).contiguous()  # [B, d_in]
    g = grad.contiguous()
    dW_dec = torch.empty(d_sae, D, dtype=W_dec.dtype, device=W_dec.device)
    dW_enc = torch.empty(D, d_sae, dtype=W_enc.dtype, device=W_enc.device)
    db_enc = torch.empty(d_sae, dtype=torch.float32, device=W_enc.device)
    prec = _precision(W_enc.dtype)
    block_d, warps = (IEEE_BLOCK_D, IEEE_NUM_WARPS) if prec == 1 else (BLOCK_D, NUM_WARPS)
    grid = (triton.cdiv(d_sae, BLOCK_F), triton.cdiv(D, block_d))
    _topk_backward_kernel[grid](
        perm, offsets, indices.contiguous(), values.contiguous(), d_pre, g, xc,
        dW_dec, dW_enc, db_enc, K, D, d_sae,
        BLOCK_F=BLOCK_F, BLOCK_P=BLOCK_P, BLOCK_D=block_d, PRECISION=prec, num_warps=warps,
    )  # fmt: skip
    db_enc, db_dec = ref.bias_grads(grad, W_enc, db_enc, b_dec)
    return d_pre, dW_enc, db_enc, dW_dec, db_dec

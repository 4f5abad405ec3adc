"""Fused Triton encoder: `pre = (x - b_dec) @ W_enc + b_enc` tile by tile, with a ReLU,
JumpReLU or TopK epilogue. The TopK path never writes the `[B, d_sae]` pre-activations.

TopK selection works on packed int64 keys: the upper 32 bits are an order-preserving image
of the fp32 pre-activation, the lower 32 bits are `2**32 - 1 - feature`, so one integer
comparison orders by value and then by lower index (the tie rule of the reference). Each
program walks `TILES_PER_PROG` feature tiles for `BLOCK_M` rows, keeps a running top-`K_PAD`
per row, and writes those candidates; `_merge_topk_kernel` picks the final k per row.
Extra memory: `B * n_programs_n * K_PAD` int64 keys, not `B * d_sae`.

Selection is by repeated max-extraction (`_merge_top`), O(K_PAD * (BLOCK_N + K_PAD)) compares
per row and tile, skipped for tiles that cannot beat the running k-th key. It replaces
`tl.topk`, whose bitonic network the CPU interpreter runs element by element.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import reference as ref

ACT_RELU, ACT_JUMPRELU, ACT_TOPK = 0, 1, 2
MIN_KEY = -(2**63)
LOW_MASK = 0xFFFFFFFF


@triton.jit
def _pack_keys(pre, cols):
    """fp32 values [M, N] and feature ids [N] -> int64 keys ordered by (value, -feature)."""
    pre = tl.where(pre == 0.0, 0.0, pre)  # -0.0 and +0.0 tie, as in torch.topk
    bits = pre.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # order-preserving signed int32
    low = 4294967295 - cols.to(tl.int64)  # lower feature id -> larger key
    return (key.to(tl.int64) << 32) + low[None, :]


@triton.jit
def _unpack_keys(keys):
    """Inverse of `_pack_keys`: (fp32 values, int64 feature ids)."""
    key = (keys >> 32).to(tl.int32)
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    vals = bits.to(tl.float32, bitcast=True)
    idx = 4294967295 - (keys & 4294967295)
    return vals, idx


@triton.jit
def _merge_top(running, keys, K_PAD: tl.constexpr):
    """Top-K_PAD keys of `running [M, K_PAD]` united with `keys [M, N]`, sorted descending.

    Keys are unique (they embed the feature id), so each extraction removes exactly one.
    """
    slots = tl.arange(0, K_PAD)[None, :]
    out = tl.full([running.shape[0], K_PAD], MIN_KEY, tl.int64)
    for j in range(K_PAD):
        best = tl.maximum(tl.max(keys, axis=1), tl.max(running, axis=1))[:, None]  # [M, 1]
        out = tl.where(slots == j, best, out)
        keys = tl.where(keys == best, MIN_KEY, keys)
        running = tl.where(running == best, MIN_KEY, running)
    return out


@triton.jit
def _encoder_kernel(
    x_ptr, w_ptr, b_enc_ptr, b_dec_ptr, thr_ptr, out_ptr, cand_ptr,
    B, D_IN, D_SAE, N_PROGS_N,
    ACT: tl.constexpr, K_PAD: tl.constexpr, TILES_PER_PROG: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    row_ok = rows < B
    running = tl.full([BLOCK_M, K_PAD], MIN_KEY, tl.int64)  # [BM, K_PAD]
    for t in range(TILES_PER_PROG):
        cols = (pid_n * TILES_PER_PROG + t) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
        col_ok = cols < D_SAE
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, D_IN, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)  # [BK]
            k_ok = ks < D_IN
            xt = tl.load(
                x_ptr + rows[:, None] * D_IN + ks[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )  # [BM, BK]
            bd = tl.load(b_dec_ptr + ks, mask=k_ok, other=0.0)  # [BK]
            xf = xt.to(tl.float32) - bd.to(tl.float32)[None, :]  # x - b_dec, [BM, BK]
            wt = tl.load(
                w_ptr + ks[:, None] * D_SAE + cols[None, :],
                mask=k_ok[:, None] & col_ok[None, :],
                other=0.0,
            )  # [BK, BN]
            if UPCAST:
                # CPU interpreter only: it mishandles bf16 dot operands and bf16 rounding,
                # so stay in fp32 (exact products; x - b_dec is then not rounded to bf16).
                acc = tl.dot(xf, wt.to(tl.float32), acc, input_precision="ieee")
            elif IEEE:
                acc = tl.dot(xf.to(xt.dtype), wt, acc, input_precision="ieee")
            else:
                acc = tl.dot(xf.to(xt.dtype), wt, acc)
        be = tl.load(b_enc_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        pre = acc + be[None, :]  # [BM, BN]
        if ACT == 2:  # TopK: merge this tile's best into the running top-K_PAD
            keys = _pack_keys(pre, cols)
            keys = tl.where(col_ok[None, :] & row_ok[:, None], keys, MIN_KEY)  # [BM, BN]
            kth = tl.min(running, axis=1)  # [BM] smallest kept key
            beats = (tl.max(keys, axis=1) > kth).to(tl.int32)
            if tl.max(beats, axis=0) > 0:
                running = _merge_top(running, keys, K_PAD)
        else:
            if ACT == 0:
                act = tl.maximum(pre, 0.0)
            else:
                thr = tl.load(thr_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                act = tl.where(pre > thr[None, :], pre, 0.0)
            tl.store(
                out_ptr + rows[:, None] * D_SAE + cols[None, :],
                act.to(out_ptr.dtype.element_ty),
                mask=row_ok[:, None] & col_ok[None, :],
            )
    if ACT == 2:
        slots = tl.arange(0, K_PAD)
        dst = cand_ptr + (rows[:, None] * N_PROGS_N + pid_n) * K_PAD + slots[None, :]
        tl.store(dst, running, mask=row_ok[:, None])


@triton.jit
def _merge_topk_kernel(
    cand_ptr, val_ptr, idx_ptr, B, N_CAND, K,
    K_PAD: tl.constexpr, C_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    row_ok = rows < B
    c = tl.arange(0, C_PAD)
    keys = tl.load(
        cand_ptr + rows[:, None] * N_CAND + c[None, :],
        mask=row_ok[:, None] & (c < N_CAND)[None, :],
        other=MIN_KEY,
    )  # [BM, C_PAD]
    top = _merge_top(tl.full([BLOCK_M, K_PAD], MIN_KEY, tl.int64), keys, K_PAD)  # desc
    vals, idx = _unpack_keys(top)
    vals = tl.maximum(vals, 0.0)  # ReLU on the selected values
    j = tl.arange(0, K_PAD)
    m = row_ok[:, None] & (j < K)[None, :]
    tl.store(val_ptr + rows[:, None] * K + j[None, :], vals.to(val_ptr.dtype.element_ty), mask=m)
    tl.store(idx_ptr + rows[:, None] * K + j[None, :], idx, mask=m)


def _upcast_dot(dtype: torch.dtype) -> bool:
    """The CPU interpreter gets bf16 `tl.dot` operands and fp32->bf16 casts wrong."""
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _tiles(B: int, d_sae: int, k_pad: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, TILES_PER_PROG, N_PROGS_N) for the TopK launch."""
    block_m = 64 if B >= 64 else 16
    block_n = 64 if d_sae <= 4096 else 128
    n_tiles = triton.cdiv(d_sae, block_n)
    # Enough programs along d_sae to fill the GPU, few enough to keep candidates small.
    target = max(1, 2048 // max(1, triton.cdiv(B, block_m)))
    n_progs_n = max(1, min(n_tiles, target, 64))
    tiles_per_prog = triton.cdiv(n_tiles, n_progs_n)
    n_progs_n = triton.cdiv(n_tiles, tiles_per_prog)
    return block_m, block_n, tiles_per_prog, n_progs_n


def _check(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> None:
    if x.dim() != 2 or W_enc.dim() != 2 or x.shape[1] != W_enc.shape[0]:
        raise ValueError(
            f"x [B, d_in] and W_enc [d_in, d_sae] do not match: "
            f"{tuple(x.shape)} vs {tuple(W_enc.shape)}"
        )
    if b_enc.shape != (W_enc.shape[1],) or b_dec.shape != (W_enc.shape[0],):
        raise ValueError(
            f"b_enc must be [{W_enc.shape[1]}] and b_dec [{W_enc.shape[0]}], got "
            f"{tuple(b_enc.shape)} and {tuple(b_dec.shape)}"
        )
    if len({t.dtype for t in (x, W_enc, b_enc, b_dec)}) != 1:
        raise TypeError("x, W_enc, b_enc and b_dec must share one dtype")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"the Triton encoder supports float32/bfloat16/float16, got {x.dtype}")


def encode_topk_fwd(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Fused TopK encode: `values [B, k]` (ReLU'd, x's dtype) and `indices [B, k]` int64."""
    _check(x, W_enc, b_enc, b_dec)
    B, d_in = x.shape
    d_sae = W_enc.shape[1]
    if not 1 <= k <= d_sae:
        raise ValueError(f"k must be in [1, {d_sae}], got {k}")
    x, W_enc, b_enc, b_dec = (t.contiguous() for t in (x, W_enc, b_enc, b_dec))
    k_pad = _pow2(k)
    block_m, block_n, tiles_per_prog, n_progs_n = _tiles(B, d_sae, k_pad)
    cand = torch.empty(B, n_progs_n, k_pad, dtype=torch.int64, device=x.device)
    grid = (triton.cdiv(B, block_m), n_progs_n)
    _encoder_kernel[grid](
        x, W_enc, b_enc, b_dec, b_enc, x, cand, B, d_in, d_sae, n_progs_n,
        ACT=ACT_TOPK, K_PAD=k_pad, TILES_PER_PROG=tiles_per_prog, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=32, IEEE=x.dtype == torch.float32,
        UPCAST=_upcast_dot(x.dtype),
    )  # fmt: skip
    values = torch.empty(B, k, dtype=x.dtype, device=x.device)
    indices = torch.empty(B, k, dtype=torch.int64, device=x.device)
    n_cand = n_progs_n * k_pad
    merge_m = 16
    _merge_topk_kernel[(triton.cdiv(B, merge_m),)](
        cand, values, indices, B, n_cand, k, K_PAD=k_pad, C_PAD=_pow2(n_cand), BLOCK_M=merge_m,
    )  # fmt: skip
    return values, indices


def encode_dense_fwd(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, threshold: Tensor | None
) -> Tensor:
    """Fused ReLU (threshold None) or JumpReLU encode; writes the `[B, d_sae]` code once."""
    _check(x, W_enc, b_enc, b_dec)
    B, d_in = x.shape
    d_sae = W_enc.shape[1]
    x, W_enc, b_enc, b_dec = (t.contiguous() for t in (x, W_enc, b_enc, b_dec))
    thr = b_enc if threshold is None else threshold.contiguous()
    out = torch.empty(B, d_sae, dtype=x.dtype, device=x.device)
    block_m, block_n = (64 if B >= 64 else 16), 64
    grid = (triton.cdiv(B, block_m), triton.cdiv(d_sae, block_n))
    _encoder_kernel[grid](
        x, W_enc, b_enc, b_dec, thr, out, out, B, d_in, d_sae, 1,
        ACT=ACT_RELU if threshold is None else ACT_JUMPRELU, K_PAD=16, TILES_PER_PROG=1,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=32, IEEE=x.dtype == torch.float32,
        UPCAST=_upcast_dot(x.dtype),
    )  # fmt: skip
    return out


def encode_dense_bwd(grad: Tensor, x: Tensor, W_enc: Tensor, b_dec: Tensor, acts: Tensor):
    """Gradients (dx, dW_enc, db_enc, db_dec) of the dense encoder: dense GEMMs (cuBLAS).

    The gate's derivative is taken as `acts != 0`; it differs from `pre > threshold` only
    where a JumpReLU with a negative threshold passes an exact 0.0.
    """
    d_pre = grad * (acts != 0).to(grad.dtype)  # [B, d_sae]
    dW_enc, db_enc, db_dec, dx = ref.encoder_backward_dense(d_pre, x, W_enc, b_dec)
    return dx, dW_enc, db_enc, db_dec


# ----------------------------------------------------------------------------- torch.library
# The dense-code op (ReLU/JumpReLU); the TopK ops are registered by ops/autograd.py.


@torch.library.custom_op("sae_fast::triton_encode_dense", mutates_args=())
def triton_encode_dense(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, threshold: Tensor | None
) -> Tensor:
    """Fused ReLU (threshold None) / JumpReLU encode, `[B, d_sae]`."""
    return encode_dense_fwd(x, W_enc, b_enc, b_dec, threshold)


@triton_encode_dense.register_fake
def _(x, W_enc, b_enc, b_dec, threshold):
    return x.new_empty(x.shape[0], W_enc.shape[1])


def _dense_setup(ctx, inputs, output):
    x, W_enc, _b_enc, b_dec, _thr = inputs
    ctx.save_for_backward(x, W_enc, b_dec, output)


def _dense_backward(ctx, grad):
    x, W_enc, b_dec, acts = ctx.saved_tensors
    dx, dW_enc, db_enc, db_dec = encode_dense_bwd(grad, x, W_enc, b_dec, acts)
    return (dx if ctx.needs_input_grad[0] else None), dW_enc, db_enc, db_dec, None


triton_encode_dense.register_autograd(_dense_backward, setup_context=_dense_setup)

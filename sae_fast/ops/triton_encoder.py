"""Triton encoder: `pre = (x - b_dec) @ W_enc + b_enc` with a TopK, ReLU or JumpReLU code.

Low-precision rule (reference.py): `xc = x - b_dec` is taken once, in the parameters' dtype;
the product is accumulated in fp32 and b_enc is added in fp32; TopK ranks those fp32 values
(ties to the lower index) and codes are returned in the parameters' dtype.

Two TopK paths, chosen per shape by `triton_dispatch.encoder_plan`:

- **fused** (`_topk_filter_kernel`): a tiled GEMM whose epilogue never writes `[B, d_sae]`.
  Each program walks a run of feature tiles for `BLOCK_M` rows and keeps, per row, the
  running maximum of `K_PAD` disjoint column groups. The smallest of those maxima is a lower
  bound `tau` of the row's k-th value (K_PAD >= k distinct entries reach it); the bound is
  shared between the programs of a row with an fp32 atomic max. Only entries `>= tau` are
  written, as packed int64 keys, into a per-program candidate list; `_select_candidates`
  then takes the k largest keys with `torch.topk`. The keys are unique, so the result is a
  pure function of the inputs whatever the atomics' timing. A row whose list overflows is
  redone on the chunked path.
- **chunked** (`encode_topk_chunked`): the cuBLAS GEMM into a fp32 buffer of at most 0.2x one
  `[B, d_sae]` fp32 matrix, a row chunk at a time, then the reference's `topk_select`.

Key = (order-preserving image of the fp32 value) << 32 | (2**32 - 1 - feature): one integer
comparison orders by value, then by lower feature.
"""

from __future__ import annotations

import itertools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import reference as ref

ACT_NONE, ACT_RELU, ACT_JUMPRELU = 0, 1, 2
INT64_MIN = -(2**63)
# A fused program's candidate list holds `list_capacity` keys per row before it overflows:
# CAP_PER_K per column group, plus one tile (the first tile meets no bound yet).
CAP_PER_K = 36
CANDIDATE_FRACTION = 0.18  # candidate lists, as a fraction of [B, d_sae] fp32
CHUNK_FRACTION = 0.2  # the chunked path's fp32 buffer, as a fraction of [B, d_sae] fp32


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """acc += a @ b. PRECISION 0: tensor cores in the operands' dtype (bf16/fp16, or tf32
    for fp32 when torch allows tf32); 1: fp32 "ieee"; 2: the CPU interpreter's fp32 upcast
    (it mishandles bf16/fp16 dot operands)."""
    if PRECISION == 2:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif PRECISION == 1:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _gemm_tile(xc_ptr, w_ptr, row0, col0, B, D_IN, D_SAE,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               PRECISION: tl.constexpr):  # fmt: skip
    """fp32 `xc[row0:row0+BM] @ W[:, col0:col0+BN]`, `[BLOCK_M, BLOCK_N]`.

    Every address is formed in int64 (the tile's origin, the K step and the offsets inside
    the tile), so `d_in * d_sae >= 2**31` is safe."""
    r = tl.arange(0, BLOCK_M).to(tl.int64)  # [BM]
    c = tl.arange(0, BLOCK_N).to(tl.int64)  # [BN]
    ks = tl.arange(0, BLOCK_K)  # [BK]
    row_ok = (row0 + r) < B
    col_ok = (col0 + c) < D_SAE
    x_base = xc_ptr + row0 * D_IN  # scalar, int64
    w_base = w_ptr + col0  # scalar, int64
    x_offs = r[:, None] * D_IN + ks[None, :]  # [BM, BK] int64
    w_offs = ks[:, None].to(tl.int64) * D_SAE + c[None, :]  # [BK, BN] int64
    w_step = tl.cast(D_SAE, tl.int64) * BLOCK_K  # tl.cast: D_SAE may be a constexpr 1
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D_IN, BLOCK_K):
        k_ok = (k0 + ks) < D_IN
        a = tl.load(x_base + x_offs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
        b = tl.load(w_base + w_offs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # [BK, BN]
        acc = _dot(a, b, acc, PRECISION)
        x_base += BLOCK_K
        w_base += w_step
    return acc


@triton.jit
def _pack_keys(pre, cols):
    """fp32 values [M, N] and feature ids [N] -> int64 keys ordered by (value, -feature)."""
    pre = tl.where(pre == 0.0, 0.0, pre)  # -0.0 and +0.0 tie, as in torch.topk
    bits = pre.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # order-preserving signed int32
    low = 4294967295 - cols.to(tl.int64)  # lower feature id -> larger key
    return (key.to(tl.int64) << 32) + low[None, :]


@triton.jit
def _topk_filter_kernel(
    xc_ptr, w_ptr, b_enc_ptr, tau_ptr, cand_ptr, count_ptr, scratch_ptr,
    B, D_IN, D_SAE, N_SPLIT, COLS_PER_PROG, CAP, SCRATCH_STRIDE,
    GROUPS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SUB: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK_M rows x COLS_PER_PROG features, a BLOCK_N tile at a time (see
    the module docstring). The tile's fp32 pre-activations and the running group maxima live in this
    program's own L2-resident scratch, so the filter reads SUB columns at a time in a blocked
    layout instead of holding accumulator, keys and slots in registers at once."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    r = tl.arange(0, BLOCK_M).to(tl.int64)  # [BM]
    rows = pid_m.to(tl.int64) * BLOCK_M + r  # [BM]
    row_ok = rows < B
    j = tl.arange(0, SUB)  # [SUB]
    scratch = scratch_ptr + (pid_m.to(tl.int64) * N_SPLIT + pid_n) * SCRATCH_STRIDE
    tile_ptrs = scratch + r[:, None] * BLOCK_N  # [BM, 1] the tile, row-major
    gm_ptrs = scratch + BLOCK_M * BLOCK_N + r[:, None] * GROUPS  # [BM, 1] group maxima
    for g0 in range(0, GROUPS, SUB):
        tl.store(gm_ptrs + g0 + j[None, :], tl.full([BLOCK_M, SUB], float("-inf"), tl.float32))
    tau = tl.full([BLOCK_M], float("-inf"), tl.float32)  # [BM] lower bound of the k-th value
    count = tl.zeros([BLOCK_M], dtype=tl.int32)  # [BM] entries this program has emitted
    cand_row = cand_ptr + (rows * N_SPLIT + pid_n) * CAP  # [BM] this program's lists
    first = pid_n.to(tl.int64) * COLS_PER_PROG
    for t in range(0, COLS_PER_PROG, BLOCK_N):
        n0 = first + t
        acc = _gemm_tile(xc_ptr, w_ptr, pid_m.to(tl.int64) * BLOCK_M, n0, B, D_IN, D_SAE,
                         BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip
        c = tl.arange(0, BLOCK_N)
        tl.store(tile_ptrs + c[None, :], acc)  # [BM, BN] fp32
        tl.debug_barrier()
        lowest = tl.full([BLOCK_M], float("inf"), tl.float32)  # [BM] min of group maxima
        # Filter against the bound of the tiles before (still a valid bound), and fold the
        # tile into GROUPS >= k disjoint column groups (column mod GROUPS), whose maxima are
        # GROUPS distinct entries: the smallest of them bounds the k-th value from below.
        for s in tl.static_range(0, BLOCK_N, SUB):
            cols = n0 + s + j  # [SUB] int64
            col_ok = cols < D_SAE
            v = tl.load(tile_ptrs + s + j[None, :], cache_modifier=".cg")  # [BM, SUB]
            be = tl.load(b_enc_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)  # [SUB]
            v = tl.where(col_ok[None, :], v + be[None, :], float("-inf"))  # pre, fp32
            nan = v != v  # NaN ranks above every number, as in torch.topk: always a candidate
            emit = ((v >= tau[:, None]) | nan) & col_ok[None, :] & row_ok[:, None]  # [BM, SUB]
            n_new = tl.sum(emit.to(tl.int32), axis=1)  # [BM]
            if tl.max(n_new, axis=0) > 0:
                pos = count[:, None] + tl.cumsum(emit.to(tl.int32), axis=1) - 1  # [BM, SUB]
                keys = _pack_keys(tl.where(nan, float("nan"), v), cols)  # one NaN, sign +
                tl.store(cand_row[:, None] + pos, keys, mask=emit & (pos < CAP))
                count += n_new
            gp = gm_ptrs + (s % GROUPS) + j[None, :]  # [BM, SUB]
            gm = tl.maximum(tl.load(gp, cache_modifier=".cg"), v)
            tl.store(gp, gm)
            if s >= BLOCK_N - GROUPS:  # the group's last update in this tile: final
                lowest = tl.minimum(lowest, tl.min(gm, axis=1))
        tl.debug_barrier()  # the scratch tile is rewritten by the next tile
        tau = tl.maximum(tau, lowest)
        shared = tl.atomic_max(tau_ptr + rows, tau, mask=row_ok)  # the row's other programs
        tau = tl.maximum(tau, tl.where(row_ok, shared, float("-inf")))
    tl.store(count_ptr + rows * N_SPLIT + pid_n, count, mask=row_ok)


@triton.jit
def _dense_encoder_kernel(
    xc_ptr, w_ptr, b_enc_ptr, thr_ptr, out_ptr, B, D_IN, D_SAE,
    ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_ok = rows < B
    col_ok = cols < D_SAE
    acc = _gemm_tile(xc_ptr, w_ptr, tl.program_id(0).to(tl.int64) * BLOCK_M,
                     tl.program_id(1).to(tl.int64) * BLOCK_N,
                     B, D_IN, D_SAE, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip
    pre = acc + tl.load(b_enc_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        pre = tl.maximum(pre, 0.0)  # relu
    elif ACT == 2:
        thr = tl.load(thr_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        pre = tl.where(pre > thr[None, :], pre, 0.0)  # jumprelu
    tl.store(
        out_ptr + rows[:, None] * D_SAE + cols[None, :],
        pre.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


# ----------------------------------------------------------------------------- launch configs


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _precision(dtype: torch.dtype) -> int:
    """The `_dot` precision for `dtype`: fp32 follows torch's tf32 setting, as cuBLAS does."""
    if _interpreting():
        return 2 if dtype != torch.float32 else 1
    if dtype == torch.float32:
        return 0 if torch.backends.cuda.matmul.allow_tf32 else 1
    return 0


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def filter_configs(
    k_pad: int, dtype: torch.dtype, arch: int | None = None, precision: int | None = None
) -> list[dict]:
    """The fused TopK kernel's tile configurations for this launch, best guess first: the
    autotuner times them on the first call of each shape (the same table `aot_configs`
    compiles). The CPU interpreter gets one small configuration."""
    if _interpreting() and arch is None:
        return [dict(BLOCK_M=16, BLOCK_N=max(32, k_pad), BLOCK_K=16, num_warps=4, num_stages=1)]
    precision = _precision(dtype) if precision is None else precision
    if dtype == torch.float32:
        kind = "ieee" if precision == 1 else torch.float32
    else:
        kind = None
    for row in FILTER_CONFIGS[arch or gpu_arch()]:
        if row["k_pad"] >= k_pad and row["dtype"] == kind:
            names = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")
            return [dict(zip(names, alt, strict=True)) for alt in row["alts"]]
    raise ValueError(f"no fused TopK configuration for k <= {k_pad}")


def filter_config(
    k_pad: int, dtype: torch.dtype, arch: int | None = None, precision: int | None = None
) -> dict:
    """The first (untimed default) of `filter_configs`."""
    return dict(filter_configs(k_pad, dtype, arch, precision)[0])


# Per GPU generation, smallest k_pad first; `dtype` None = bf16/fp16, "ieee" = fp32 with
# exact fp32 products (torch without tf32: FMA units, operands in registers, small tiles).
# `alts`: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) the autotuner chooses between. fp32
# tiles hold half the K depth (twice the bytes per element) so the pipeline's shared memory
# stays under sm_90's 227 KB. sm_80's mma.sync keeps operand fragments in registers, so
# 128x256 tiles spill there: 64x256. Every one is checked spill-free by make gpu-compile.
FILTER_CONFIGS = {
    90: [
        dict(k_pad=64, dtype="ieee", alts=[(64, 128, 32, 8, 3)]),
        dict(k_pad=256, dtype="ieee", alts=[(64, 256, 16, 8, 3)]),
        dict(k_pad=64, dtype=torch.float32, alts=[(128, 128, 32, 8, 3)]),
        dict(k_pad=256, dtype=torch.float32, alts=[(64, 256, 32, 8, 3)]),
        dict(k_pad=64, dtype=None, alts=[(128, 256, 64, 8, 3), (128, 256, 64, 8, 4),
                                          (128, 128, 64, 8, 4)]),
        dict(k_pad=256, dtype=None, alts=[(64, 256, 64, 8, 3)]),
    ],
    80: [
        dict(k_pad=256, dtype="ieee", alts=[(64, 256, 16, 8, 3)]),
        dict(k_pad=256, dtype=torch.float32, alts=[(64, 256, 32, 8, 3)]),
        dict(k_pad=256, dtype=None, alts=[(64, 256, 64, 8, 3)]),
    ],
}  # fmt: skip
MAX_FUSED_K_PAD = 256


def gpu_arch() -> int:
    """90 on Hopper and newer, else 80: which launch table applies."""
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9:
        return 90
    return 80


# Dense encoder tiles: {is fp32: config}.
_DENSE_CONFIGS = {
    False: dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=3),
    True: dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
}


def dense_config(dtype: torch.dtype) -> dict:
    """Tile sizes of the dense (ReLU/JumpReLU/none) encoder."""
    if _interpreting():
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=1)
    return dict(_DENSE_CONFIGS[dtype == torch.float32])


TILE_QUANTUM = 256  # the widest BLOCK_N of every table


def groups_for(k_pad: int) -> int:
    """Column groups of the fused kernel's bound: >= k, and a multiple of its 16-column reads."""
    return max(k_pad, 32)


def list_capacity(k_pad: int) -> int:
    """Keys a program's candidate list holds per row (see CAP_PER_K)."""
    return CAP_PER_K * groups_for(k_pad) + TILE_QUANTUM


def split_plan(B: int, d_sae: int, k_pad: int, block_m: int, block_n: int) -> tuple[int, int]:
    """(N_SPLIT, COLS_PER_PROG): programs per row block along d_sae, and the features each
    walks (a multiple of TILE_QUANTUM, so that every configuration's BLOCK_N divides it).

    Enough programs to fill a GPU (>= ~4 waves of 132 SMs), few enough that the candidate
    lists (N_SPLIT * list_capacity int64 keys per row) stay within CANDIDATE_FRACTION of the
    row's fp32 pre-activations."""
    del block_n
    n_tiles = triton.cdiv(d_sae, TILE_QUANTUM)
    row_blocks = triton.cdiv(B, block_m)
    want = max(1, triton.cdiv(528, row_blocks))
    by_memory = max(1, int(CANDIDATE_FRACTION * d_sae * 4) // (8 * list_capacity(k_pad)))
    n_split = max(1, min(n_tiles, want, by_memory, 32))
    tiles = triton.cdiv(n_tiles, n_split)
    return triton.cdiv(n_tiles, tiles), tiles * TILE_QUANTUM


# ----------------------------------------------------------------------------- host side


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


def _centred(x: Tensor, W_enc: Tensor, b_dec: Tensor) -> tuple[Tensor, Tensor]:
    """(x - b_dec, W_enc), both contiguous: the centring is done once, not per tile."""
    return (x - b_dec).contiguous(), W_enc.contiguous()


def unpack_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of the kernels' key packing: (fp32 values, int64 feature ids)."""
    hi = (keys >> 32).to(torch.int32)
    bits = hi ^ ((hi >> 31) & 0x7FFFFFFF)
    return bits.view(torch.float32), 4294967295 - (keys & 4294967295)


def _select_candidates(cand: Tensor, counts: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(values fp32 [B, k], indices [B, k], rows to redo [B] bool) from the lists. A row is
    redone when its lists overflowed, or when they hold fewer than k keys: a NaN
    pre-activation is never emitted, and the chunked path ranks NaN as torch.topk does."""
    B, _n_split, cap = cand.shape
    slot = torch.arange(cap, device=cand.device)
    valid = slot[None, None, :] < counts[:, :, None].to(torch.int64)
    keys = torch.where(valid, cand, torch.full_like(cand, INT64_MIN)).reshape(B, -1)
    top = torch.topk(keys, k, dim=1, sorted=True).values  # unique keys: no ties to break
    vals, idx = unpack_keys(top)
    return vals, idx, (counts > cap).any(1) | (top[:, -1] == INT64_MIN)


def _gemm_fp32(xc: Tensor, W: Tensor) -> Tensor:
    """fp32 `xc @ W` with fp32 accumulation (cuBLAS), whatever the operands' dtype."""
    if xc.dtype == torch.float32:
        return xc @ W
    if xc.is_cuda:
        try:
            return torch.mm(xc, W, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a torch without the fp32-output GEMM
            pass
        return encode_dense_centred(xc, W, torch.zeros_like(W[0]), None, ACT_NONE, torch.float32)
    return xc.float() @ W.float()


def chunk_rows(B: int) -> int:
    """Rows per chunk of the chunked path: at most 0.2x of the batch."""
    return max(1, int(CHUNK_FRACTION * B))


def encode_topk_chunked(xc: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Chunked TopK of centred `xc`: fp32 (values, indices), by row chunks of `chunk_rows`."""
    B = xc.shape[0]
    step = chunk_rows(B)
    vals = torch.empty(B, k, dtype=torch.float32, device=xc.device)
    idx = torch.empty(B, k, dtype=torch.int64, device=xc.device)
    bias = b_enc.float()
    for r0 in range(0, B, step):
        pre = _gemm_fp32(xc[r0 : r0 + step], W_enc)  # [rows, d_sae] fp32
        pre += bias
        vals[r0 : r0 + step], idx[r0 : r0 + step] = ref.topk_select(pre, k)
        del pre
    return vals, idx


_TUNED: dict[tuple, object] = {}


def _filter_launcher(configs: list[dict]):
    """`_topk_filter_kernel` as the launcher runs it: autotuned over `configs` on a GPU (one
    autotuner per table row, so each keeps its own timings), plain in the interpreter."""
    if _interpreting() or len(configs) == 1:
        cfg = dict(configs[0])
        warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
        return lambda grid, *args, **kw: _topk_filter_kernel[grid](
            *args, **kw, **cfg, num_warps=warps, num_stages=stages
        )
    key = tuple(tuple(sorted(c.items())) for c in configs)
    if key not in _TUNED:
        tuned = [
            triton.Config(
                {n: c[n] for n in ("BLOCK_M", "BLOCK_N", "BLOCK_K")},
                num_warps=c["num_warps"], num_stages=c["num_stages"],
            )
            for c in configs
        ]  # fmt: skip
        # Timing runs are harmless: each rewrites the counts and lists, and a bound that an
        # earlier run tightened in tau is still a bound for the same inputs.
        _TUNED[key] = triton.autotune(tuned, key=["B", "D_IN", "D_SAE", "CAP"])(_topk_filter_kernel)
    kernel = _TUNED[key]
    return lambda grid, *args, **kw: kernel[grid](*args, **kw)


def encode_topk_fused(xc: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Fused TopK of centred `xc`: fp32 (values, indices); overflowed rows go chunked."""
    B, d_in = xc.shape
    d_sae = W_enc.shape[1]
    k_pad = _pow2(k)
    configs = filter_configs(k_pad, xc.dtype)
    n_split, cols = split_plan(B, d_sae, k_pad, configs[0]["BLOCK_M"], configs[0]["BLOCK_N"])
    cap = min(list_capacity(k_pad), cols)  # a runtime argument: no recompile
    groups = groups_for(k_pad)
    stride = max(c["BLOCK_M"] * (c["BLOCK_N"] + groups) for c in configs)
    row_blocks = triton.cdiv(B, min(c["BLOCK_M"] for c in configs))
    tau = torch.full((B,), float("-inf"), dtype=torch.float32, device=xc.device)
    cand = torch.empty(B, n_split, cap, dtype=torch.int64, device=xc.device)
    counts = torch.empty(B, n_split, dtype=torch.int32, device=xc.device)
    scratch = torch.empty(row_blocks * n_split * stride, dtype=torch.float32, device=xc.device)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(B, meta["BLOCK_M"]), n_split)

    _filter_launcher(configs)(
        grid, xc, W_enc, b_enc, tau, cand, counts, scratch, B, d_in, d_sae, n_split, cols, cap,
        stride, GROUPS=groups, SUB=16, PRECISION=_precision(xc.dtype),
    )  # fmt: skip
    vals, idx, over = _select_candidates(cand, counts, k)
    if bool(over.any()):  # a list filled up: redo those rows exactly
        rows = over.nonzero(as_tuple=True)[0]
        vals[rows], idx[rows] = encode_topk_chunked(xc[rows], W_enc, b_enc, k)
    return vals, idx


def encode_topk(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, method: str = "auto"
) -> tuple[Tensor, Tensor]:
    """TopK encode: `values [B, k]` (ReLU'd, x's dtype) and `indices [B, k]` int64.

    `method`: "fused", "chunked" or "auto" (`triton_dispatch.encoder_plan` per shape)."""
    from .triton_dispatch import encoder_plan

    _check(x, W_enc, b_enc, b_dec)
    B, d_in = x.shape
    d_sae = W_enc.shape[1]
    if not 1 <= k <= d_sae:
        raise ValueError(f"k must be in [1, {d_sae}], got {k}")
    if method == "auto":
        method = encoder_plan(B, d_in, d_sae, k, x.dtype)
    if method not in ("fused", "chunked"):
        raise ValueError(f"method must be 'auto', 'fused' or 'chunked', got {method!r}")
    xc, W = _centred(x, W_enc, b_dec)
    if method == "fused" and _pow2(k) <= MAX_FUSED_K_PAD:
        vals, idx = encode_topk_fused(xc, W, b_enc.contiguous(), k)
    else:
        vals, idx = encode_topk_chunked(xc, W, b_enc, k)
    return torch.relu(vals).to(x.dtype), idx


def encode_dense_centred(
    xc: Tensor, W: Tensor, b_enc: Tensor, threshold: Tensor | None, act: int, out_dtype
) -> Tensor:
    """`act(xc @ W + b_enc)` `[B, d_sae]` in `out_dtype` (act: ACT_NONE/RELU/JUMPRELU)."""
    B, d_in = xc.shape
    d_sae = W.shape[1]
    out = torch.empty(B, d_sae, dtype=out_dtype, device=xc.device)
    cfg = dense_config(xc.dtype)
    grid = (triton.cdiv(B, cfg["BLOCK_M"]), triton.cdiv(d_sae, cfg["BLOCK_N"]))
    thr = b_enc if threshold is None else threshold.contiguous()
    _dense_encoder_kernel[grid](
        xc, W, b_enc.contiguous(), thr, out, B, d_in, d_sae, ACT=act,
        PRECISION=_precision(xc.dtype), **cfg,
    )  # fmt: skip
    return out


def encode_dense(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, threshold: Tensor | None
) -> Tensor:
    """Fused ReLU (threshold None) or JumpReLU encode; writes the `[B, d_sae]` code once."""
    _check(x, W_enc, b_enc, b_dec)
    xc, W = _centred(x, W_enc, b_dec)
    act = ACT_RELU if threshold is None else ACT_JUMPRELU
    return encode_dense_centred(xc, W, b_enc, threshold, act, x.dtype)


def encode_dense_bwd(grad: Tensor, x: Tensor, W_enc: Tensor, b_dec: Tensor, acts: Tensor):
    """Gradients (dx, dW_enc, db_enc, db_dec) of the dense encoder: dense GEMMs (cuBLAS).

    The gate's derivative is taken as `acts != 0`; it differs from `pre > threshold` only
    where a JumpReLU with a negative threshold passes an exact 0.0.
    """
    d_pre = grad * (acts != 0).to(grad.dtype)  # [B, d_sae]
    dW_enc, db_enc, db_dec, dx = ref.encoder_backward_dense(d_pre, x, W_enc, b_dec)
    return dx, dW_enc, db_enc, db_dec


# ----------------------------------------------------------------------------- make gpu-compile

AOT_KS = (16, 32, 64, 128, 256)
_AOT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _precisions(dt: str) -> tuple[int, ...]:
    """fp32 launches either tf32 tensor cores (torch allows tf32) or "ieee"; bf16/fp16 one."""
    return (0, 1) if dt == "fp32" else (0,)


def _text(tiles: dict) -> str:
    return " ".join(f"{n}={v}" for n, v in tiles.items())


def aot_configs() -> list:
    """Every GPU launch configuration of this module's kernels, for `make gpu-compile`:
    fused TopK for k in AOT_KS x dtype x precision, dense encoder x activation x dtype.
    Sizes (B, d_in, d_sae up to 2**20 and beyond) are runtime int32 arguments: they change
    no compile; pointers and d_in / d_sae are launched as multiples of 16."""
    from .triton_aot import KernelConfig

    out = []
    for dt, torch_dt in _AOT_DTYPES.items():
        p = "*" + dt
        for prec, k, arch in itertools.product(_precisions(dt), AOT_KS, (90, 80)):
            k_pad = _pow2(k)
            for cfg in filter_configs(k_pad, torch_dt, arch, prec):
                warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
                out.append(KernelConfig(
                    name="encoder_topk_fused", fn=_topk_filter_kernel,
                    signature=dict(xc_ptr=p, w_ptr=p, b_enc_ptr=p, tau_ptr="*fp32",
                                   cand_ptr="*i64", count_ptr="*i32", scratch_ptr="*fp32",
                                   B="i32", D_IN="i32", D_SAE="i32", N_SPLIT="i32",
                                   COLS_PER_PROG="i32", CAP="i32", SCRATCH_STRIDE="i32"),
                    constexprs=dict(GROUPS=groups_for(k_pad), SUB=16, PRECISION=prec, **cfg),
                    num_warps=warps, num_stages=stages, archs=(arch,),
                    label=f"{dt} k={k} prec={prec} {_text(cfg)} w{warps} s{stages}",
                    divisible=("xc_ptr", "w_ptr", "b_enc_ptr", "tau_ptr", "cand_ptr",
                               "count_ptr", "scratch_ptr", "D_IN", "D_SAE", "COLS_PER_PROG",
                               "CAP", "SCRATCH_STRIDE"),
                    int64_offsets=True,
                ))  # fmt: skip
        for prec in _precisions(dt):
            dense = dict(_DENSE_CONFIGS[dt == "fp32"])
            warps, stages = dense.pop("num_warps"), dense.pop("num_stages")
            for act, act_name in (
                (ACT_RELU, "relu"),
                (ACT_JUMPRELU, "jumprelu"),
                (ACT_NONE, "none"),
            ):
                for out_dt in (dt,) if act != ACT_NONE else ("fp32",):
                    out.append(KernelConfig(
                        name="encoder_dense", fn=_dense_encoder_kernel,
                        signature=dict(xc_ptr=p, w_ptr=p, b_enc_ptr=p, thr_ptr=p,
                                       out_ptr="*" + out_dt, B="i32", D_IN="i32", D_SAE="i32"),
                        constexprs=dict(ACT=act, PRECISION=prec, **dense),
                        num_warps=warps, num_stages=stages,
                        label=f"{dt} {act_name} -> {out_dt} prec={prec}",
                        divisible=("xc_ptr", "w_ptr", "b_enc_ptr", "thr_ptr", "out_ptr", "D_IN",
                                   "D_SAE"),
                        int64_offsets=True,
                    ))  # fmt: skip
    return out


# ----------------------------------------------------------------------------- torch.library
# The dense-code op (ReLU/JumpReLU); the TopK ops are registered by ops/autograd.py.


@torch.library.custom_op("sae_fast::triton_encode_dense", mutates_args=())
def triton_encode_dense(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, threshold: Tensor | None
) -> Tensor:
    """Fused ReLU (threshold None) / JumpReLU encode, `[B, d_sae]`."""
    return encode_dense(x, W_enc, b_enc, b_dec, threshold)


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


def pre_activations(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    """The fused encoder with no activation: `(x - b_dec) @ W_enc + b_enc`, fp32 `[B, d_sae]`
    (the reference's low-precision rule: fp32 accumulation and bias)."""
    _check(x, W_enc, b_enc, b_dec)
    xc, W = _centred(x, W_enc, b_dec)
    return encode_dense_centred(xc, W, b_enc, None, ACT_NONE, torch.float32)


@torch.library.custom_op("sae_fast::triton_pre_activations", mutates_args=())
def triton_pre_activations(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    """Differentiable `pre_activations`; the backward is the dense encoder's (cuBLAS)."""
    return pre_activations(x, W_enc, b_enc, b_dec)


@triton_pre_activations.register_fake
def _(x, W_enc, b_enc, b_dec):
    return x.new_empty(x.shape[0], W_enc.shape[1], dtype=torch.float32)


def _pre_setup(ctx, inputs, output):
    x, W_enc, _b_enc, b_dec = inputs
    ctx.save_for_backward(x, W_enc, b_dec)


def _pre_backward(ctx, grad):
    x, W_enc, b_dec = ctx.saved_tensors
    # as the reference's autograd: x - b_dec rounded in the parameters' dtype, then fp32
    acc = torch.promote_types(x.dtype, torch.float32)
    xc = (x - b_dec).to(acc)
    grads = ref.encoder_backward_dense(grad.to(acc), xc, W_enc.to(acc), torch.zeros_like(xc[0]))
    dW_enc, db_enc, db_dec, dx = (g.to(x.dtype) for g in grads)
    return (dx if ctx.needs_input_grad[0] else None), dW_enc, db_enc, db_dec


triton_pre_activations.register_autograd(_pre_backward, setup_context=_pre_setup)

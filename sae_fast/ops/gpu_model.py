"""A static performance model of the GPU TopK step, as ratios to the cuBLAS encoder GEMM.

Used by `triton_dispatch.static_plan` (fused or chunked encoder, until a GPU measures it)
and by `python -m benchmarks.gpu_projection`, which fills in the compiled kernels' figures
and writes `benchmarks/results/gpu-projection-<date>.md`. Every assumption is a named
constant below; none is a measurement on a GPU.

Model, per kernel:
- GEMM-like work runs at `GEMM_EFFICIENCY` of the tensor cores' dense peak (cuBLAS and the
  fused kernel's main loop alike: same tile shape class, one CTA per SM).
- The fused kernel's epilogue does not overlap its own CTA's main loop (one CTA per SM: 255
  registers x 256 threads, 147 KB of shared memory): its cost is its issued instructions
  (`epilogue_instructions` per tile, from the SASS, x warps / 4 schedulers) at the SM clock,
  plus its L2 round trip of the fp32 tile through the scratch.
- Streaming passes (the chunked path's fp32 buffer, torch.topk's radix passes, gathers of
  rows in the sparse decode and backward) run at `BANDWIDTH_EFFICIENCY` of HBM bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

# H100 SXM / H200 (the same SMs and clocks; H200 has more and faster HBM).
SMS = 132
CLOCK_HZ = 1.755e9  # sustained boost under tensor-core load
DENSE_BF16_FLOPS = 989e12  # tensor-core peak, dense bf16/fp16
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12}
L2_BYTES_PER_S = 7.0e12  # aggregate L2 read+write
GEMM_EFFICIENCY = 0.70  # cuBLAS bf16 at d_in=4096 (large, square-ish problem)
BANDWIDTH_EFFICIENCY = 0.75  # streaming kernels; gathers of 8 KB rows are near-streaming
TOPK_PASSES = 4  # torch.topk's radix select reads a row once per 8-bit digit, fp32 keys
SCHEDULERS = 4  # warp instructions issued per clock per SM


@dataclass(frozen=True)
class FusedKernelStats:
    """What the compile says about the fused TopK kernel (from `make gpu-compile`)."""

    block_m: int = 128
    block_n: int = 256
    num_warps: int = 8
    epilogue_instructions: int = 5680  # SASS beyond the dense encoder (gpu-compile, 2026-12-01)
    emit_fraction: float = 0.5  # share of the epilogue's emission branches taken


def gemm_seconds(B: int, d_in: int, d_sae: int) -> float:
    """The cuBLAS encoder GEMM `[B, d_in] @ [d_in, d_sae]` (bf16 in, fp32 accumulate)."""
    return 2.0 * B * d_in * d_sae / (DENSE_BF16_FLOPS * GEMM_EFFICIENCY)


def _stream(nbytes: float, gpu: str) -> float:
    return nbytes / (HBM_BYTES_PER_S[gpu] * BANDWIDTH_EFFICIENCY)


def fused_encoder_seconds(
    B: int, d_in: int, d_sae: int, k: int, stats: FusedKernelStats, gpu: str = "H100"
) -> float:
    """The fused TopK encoder: GEMM main loop + per-tile epilogue + candidate selection."""
    tiles = -(-B // stats.block_m) * -(-d_sae // stats.block_n)
    waves = tiles / SMS
    epi_clocks = stats.epilogue_instructions * stats.num_warps / SCHEDULERS
    epi_clocks *= 0.5 + 0.5 * stats.emit_fraction  # untaken emission branches are skipped
    scratch_bytes = stats.block_m * stats.block_n * 4 * 2  # write + read the fp32 tile
    epilogue = waves * (epi_clocks / CLOCK_HZ + scratch_bytes * SMS / L2_BYTES_PER_S)
    from . import triton_encoder as te  # the launcher's own split and list sizes

    k_pad = 1 << max(0, (k - 1).bit_length())
    n_split, _ = te.split_plan(B, d_sae, k_pad, stats.block_m, stats.block_n)
    lists = B * n_split * te.list_capacity(k_pad) * 8.0  # int64 keys
    select = _stream(lists * 3, gpu)  # mask the unused slots (read, write), torch.topk (read)
    return gemm_seconds(B, d_in, d_sae) + epilogue + select


def chunked_encoder_seconds(B: int, d_in: int, d_sae: int, k: int, gpu: str = "H100") -> float:
    """cuBLAS GEMM into fp32 chunks, + b_enc, then the reference's topk_select per chunk."""
    del k
    dense = B * d_sae * 4.0  # one fp32 pass over all pre-activations
    passes = 1 + 2 + TOPK_PASSES + 1  # GEMM write, bias read+write, radix, tie check
    return gemm_seconds(B, d_in, d_sae) + _stream(dense * passes, gpu)


def sparse_seconds(B: int, d_in: int, d_sae: int, k: int, gpu: str = "H100") -> dict:
    """The sparse kernels of a step: decode, dL/dv, the one-pass backward, weight writes."""
    row = d_in * 2.0  # one bf16 row
    return {
        "sparse decode": _stream(B * k * row + B * row, gpu),
        "grad_values": _stream(B * k * row + B * row, gpu),
        "backward (one sort)": _stream(2 * B * k * row + 2 * d_sae * row + B * k * 24, gpu),
        "b_dec matvec": _stream(d_in * d_sae * 2.0, gpu),
    }


def adam_seconds(d_in: int, d_sae: int, gpu: str = "H100") -> float:
    """Fused Adam over W_enc, W_dec (bf16 params, fp32 states: read p, g, m, v; write p, m, v)."""
    n = 2.0 * d_in * d_sae
    return _stream(n * (2 + 2 + 4 + 4 + 2 + 4 + 4), gpu)


def step_ratios(
    B: int, d_in: int, d_sae: int, k: int, stats: FusedKernelStats, gpu: str = "H100"
) -> dict[str, float]:
    """Every projected time as a ratio to the encoder GEMM (the model's headline table)."""
    gemm = gemm_seconds(B, d_in, d_sae)
    fused = fused_encoder_seconds(B, d_in, d_sae, k, stats, gpu)
    chunked = chunked_encoder_seconds(B, d_in, d_sae, k, gpu)
    sparse = sparse_seconds(B, d_in, d_sae, k, gpu)
    best = min(fused, chunked)
    out = {"encoder GEMM (cuBLAS)": 1.0, "encoder fused": fused / gemm}
    out["encoder chunked"] = chunked / gemm
    out.update({name: t / gemm for name, t in sparse.items()})
    out["forward + backward"] = (best + sum(sparse.values())) / gemm
    out["Adam (own line)"] = adam_seconds(d_in, d_sae, gpu) / gemm
    # sparsify's step, modelled from the shape of its code (not measured): cuBLAS GEMM
    # written in bf16, torch.topk over it (radix passes of 2-byte keys), and sparse decode
    # and backward costed like ours.
    sparsify = gemm + _stream(B * d_sae * 2.0 * (1 + TOPK_PASSES), gpu) + sum(sparse.values())
    out["sparsify forward + backward (modelled)"] = sparsify / gemm
    return out


def choose_encoder(B: int, d_in: int, d_sae: int, k: int, stats: FusedKernelStats) -> str:
    """ "fused" or "chunked": whichever the model projects faster."""
    k_pad = 1 << max(0, (k - 1).bit_length())
    if k_pad > 256:
        return "chunked"
    fused = fused_encoder_seconds(B, d_in, d_sae, k, stats)
    return "fused" if fused <= chunked_encoder_seconds(B, d_in, d_sae, k) else "chunked"

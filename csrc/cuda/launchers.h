// Plain-C++ launchers of the CUDA kernels: raw pointers, a dtype code and a stream, so the
// .cu files need only the CUDA runtime (CI compiles them with `nvcc -c` on machines whose
// torch has no CUDA headers). csrc/cuda/ops_cuda.cpp wraps them as torch ops.
#pragma once
#include <cstdint>

struct CUstream_st;

namespace sae_fast {
namespace cuda {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// out[f, :] (fp32) = sum over sorted positions p in [offsets[f], offsets[f+1]) of
// coef[perm[p]] (fp32) * src[perm[p] / k, :];  sums[f] = sum of those coef (if sums != null).
// One block per (feature, 256-wide slice of D); fp32 accumulation; no atomics.
void feature_reduce(const int64_t* perm, const int64_t* offsets, const float* coef, const void* src,
                    DType src_dtype, float* out, float* sums, int64_t d_sae, int64_t k, int64_t D,
                    CUstream_st* stream);

// dv[b, j] (fp32) = g[b, :] . W_dec[indices[b, j], :]; one warp per (b, j).
void grad_values(const void* grad, const int64_t* indices, const void* W_dec, DType dtype, float* dv,
                 int64_t B, int64_t k, int64_t D, CUstream_st* stream);

// Last CUDA error as text, or nullptr when none.
const char* last_error();

}  // namespace cuda
}  // namespace sae_fast

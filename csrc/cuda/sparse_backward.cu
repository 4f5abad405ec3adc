// CUDA sparse backward over feature-sorted indices (DESIGN.md section 3):
//   dL/dW_dec[f]    = sum over (b, j) with i[b, j] = f of v[b, j] * g[b]
//   dL/dW_enc[:, f] = sum over (b, j) with i[b, j] = f of dL/dpre[b, j] * (x[b] - b_dec)
//   dL/db_enc[f]    = sum over (b, j) with i[b, j] = f of dL/dpre[b, j]
// plus the gathered dot products dL/dv[b, j] = g[b] . W_dec[i[b, j]]. fp32/bf16/fp16
// inputs, fp32 accumulation, each output element written by one thread in a fixed order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "launchers.h"

namespace sae_fast {
namespace cuda {
namespace {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

constexpr int kReduceThreads = 256;

template <typename T>
__global__ void feature_reduce_kernel(const int64_t* __restrict__ perm, const int64_t* __restrict__ offsets,
                                      const float* __restrict__ coef, const T* __restrict__ src,
                                      float* __restrict__ out, float* __restrict__ sums, int64_t k,
                                      int64_t D) {
  const int64_t f = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * kReduceThreads + threadIdx.x;
  const int64_t start = offsets[f], end = offsets[f + 1];
  float acc = 0.f, total = 0.f;
  for (int64_t p = start; p < end; ++p) {  // fixed order: deterministic
    const int64_t pos = perm[p];           // flat (b * k + j)
    const float c = coef[pos];
    total += c;
    if (d < D) acc += c * to_float(src[(pos / k) * D + d]);
  }
  if (d < D) out[f * D + d] = acc;
  if (sums != nullptr && blockIdx.y == 0 && threadIdx.x == 0) sums[f] = total;
}

template <typename T>
__global__ void grad_values_kernel(const T* __restrict__ grad, const int64_t* __restrict__ indices,
                                   const T* __restrict__ W_dec, float* __restrict__ dv, int64_t Bk,
                                   int64_t k, int64_t D) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= Bk) return;
  const T* g = grad + (warp / k) * D;       // [D] row b
  const T* w = W_dec + indices[warp] * D;   // [D] row i[b, j]
  float s = 0.f;
  for (int64_t d = lane; d < D; d += 32) s += to_float(g[d]) * to_float(w[d]);
  for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) dv[warp] = s;  // dL/dv = g . W_dec[i]
}

}  // namespace

void feature_reduce(const int64_t* perm, const int64_t* offsets, const float* coef, const void* src,
                    DType src_dtype, float* out, float* sums, int64_t d_sae, int64_t k, int64_t D,
                    CUstream_st* stream) {
  if (d_sae == 0) return;
  const dim3 grid(static_cast<unsigned>(d_sae), static_cast<unsigned>((D + kReduceThreads - 1) / kReduceThreads));
  switch (src_dtype) {
    case DType::kFloat32:
      feature_reduce_kernel<float><<<grid, kReduceThreads, 0, stream>>>(
          perm, offsets, coef, static_cast<const float*>(src), out, sums, k, D);
      break;
    case DType::kBFloat16:
      feature_reduce_kernel<__nv_bfloat16><<<grid, kReduceThreads, 0, stream>>>(
          perm, offsets, coef, static_cast<const __nv_bfloat16*>(src), out, sums, k, D);
      break;
    case DType::kFloat16:
      feature_reduce_kernel<__half><<<grid, kReduceThreads, 0, stream>>>(
          perm, offsets, coef, static_cast<const __half*>(src), out, sums, k, D);
      break;
  }
}

void grad_values(const void* grad, const int64_t* indices, const void* W_dec, DType dtype, float* dv,
                 int64_t B, int64_t k, int64_t D, CUstream_st* stream) {
  const int64_t Bk = B * k;
  if (Bk == 0) return;
  constexpr int threads = 256;  // 8 warps per block, one warp per (b, j)
  const unsigned blocks = static_cast<unsigned>((Bk * 32 + threads - 1) / threads);
  switch (dtype) {
    case DType::kFloat32:
      grad_values_kernel<float><<<blocks, threads, 0, stream>>>(
          static_cast<const float*>(grad), indices, static_cast<const float*>(W_dec), dv, Bk, k, D);
      break;
    case DType::kBFloat16:
      grad_values_kernel<__nv_bfloat16><<<blocks, threads, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(grad), indices, static_cast<const __nv_bfloat16*>(W_dec), dv, Bk,
          k, D);
      break;
    case DType::kFloat16:
      grad_values_kernel<__half><<<blocks, threads, 0, stream>>>(
          static_cast<const __half*>(grad), indices, static_cast<const __half*>(W_dec), dv, Bk, k, D);
      break;
  }
}

const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace cuda
}  // namespace sae_fast

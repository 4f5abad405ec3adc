// Declarations of the CPU kernels (one .cpp each), bound in csrc/bindings.cpp.
// Every entry point checks device, dtype, contiguity, shape and index range (csrc/checks.h).
#pragma once
#include <torch/extension.h>

#include <tuple>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sae_fast {

// OpenMP's thread counts, and 1 / thread 0 in a build without it.
inline int64_t omp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int64_t omp_threads() {  // in a parallel region: its threads
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

inline int64_t omp_thread() {  // in a parallel region: this thread's number
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// recon[b] = sum_j values[b, j] * W_dec[indices[b, j]] + b_dec   -> [B, d_in]
at::Tensor decode_sparse_cpu(const at::Tensor& values, const at::Tensor& indices,
                             const at::Tensor& W_dec, const at::Tensor& b_dec);

// TopK of pre = (x - b_dec) @ W_enc + b_enc per row, by row tile and feature block (one BLAS
// call each, merged while in cache; peak extra memory threads * tile * block), or by whole
// rows when d_sae <= block (one [max(256, B / 5), d_sae] buffer); ties to the lower index,
// values ReLU'd.
std::tuple<at::Tensor, at::Tensor> encode_topk_cpu(const at::Tensor& x, const at::Tensor& W_enc,
                                                   const at::Tensor& b_enc, const at::Tensor& b_dec,
                                                   int64_t k, int64_t block);

// dv[b, j] = g[b] . W_dec[indices[b, j]]  -> [B, k] in the accumulation dtype
at::Tensor grad_values_cpu(const at::Tensor& grad, const at::Tensor& indices, const at::Tensor& W_dec);

// Stable counting sort of the flat indices by feature: (perm [N], offsets [d_sae + 1]).
std::tuple<at::Tensor, at::Tensor> feature_segments_cpu(const at::Tensor& indices, int64_t d_sae);

// out[f] = sum over sorted positions p of feature f of coef[perm[p]] * src[perm[p] / k];
// sums[f] = sum of those coef. Parallel over features: no races, no atomics, and the
// result does not depend on the thread count.
std::tuple<at::Tensor, at::Tensor> feature_reduce_cpu(const at::Tensor& perm, const at::Tensor& offsets,
                                                      const at::Tensor& coef, const at::Tensor& src,
                                                      bool with_sum);

// The same sums written as columns: out [D, d_sae], out[:, f] = the row above (W_enc's layout).
std::tuple<at::Tensor, at::Tensor> feature_reduce_cols_cpu(const at::Tensor& perm, const at::Tensor& offsets,
                                                           const at::Tensor& coef, const at::Tensor& src,
                                                           bool with_sum);

// The whole TopK SAE backward from one sort, one walk over the features (topk_backward.cpp):
// (d_pre [B, k] acc dtype, dW_enc [D, d_sae], db_enc [d_sae] acc dtype, dW_dec [d_sae, D]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sparse_backward_cpu(
    const at::Tensor& grad, const c10::optional<at::Tensor>& grad_values, const at::Tensor& x,
    const at::Tensor& W_enc, const at::Tensor& b_dec, const at::Tensor& W_dec, const at::Tensor& values,
    const at::Tensor& indices);

// An uninitialised CPU tensor for a large kernel output, in memory reused from earlier
// outputs of the same size once they are freed (block_pool.cpp); small sizes: at::empty.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Frees every block the pool holds unused; returns the bytes released.
int64_t release_pooled_blocks();

}  // namespace sae_fast

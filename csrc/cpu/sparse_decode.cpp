// Sparse decode on the CPU: recon[b] = sum_j v[b, j] * W_dec[i[b, j]] + b_dec.
// Parallel over rows (OpenMP); each row accumulates in the op-math dtype (fp32 for
// bf16/fp16), a register tile of d_in at a time, with axpys the compiler vectorises.

#include <ATen/OpMathType.h>

#include "../checks.h"
#include "kernels.h"

namespace sae_fast {

template <typename scalar_t>
static void decode_sparse_rows(const scalar_t* __restrict__ values,  // [B, k]
                               const int64_t* __restrict__ indices,  // [B, k]
                               const scalar_t* __restrict__ W_dec,   // [d_sae, d_in]
                               const scalar_t* __restrict__ b_dec,   // [d_in]
                               scalar_t* __restrict__ out,           // [B, d_in]
                               int64_t B, int64_t k, int64_t d_in) {
  using acc_t = at::opmath_type<scalar_t>;
  // d_in in tiles of kTile: a tile's accumulators stay in registers across the k gathered
  // rows (one load of each W_dec slice, no load/store of the accumulator per row). Each
  // output element still sums its k terms in order j = 0..k-1.
  constexpr int64_t kTile = 64;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* __restrict__ vrow = values + b * k;
    const int64_t* __restrict__ irow = indices + b * k;
    scalar_t* __restrict__ row = out + b * d_in;  // [d_in]
    for (int64_t d0 = 0; d0 < d_in; d0 += kTile) {
      if (d0 + kTile <= d_in) {
        acc_t acc[kTile];
#pragma omp simd
        for (int64_t d = 0; d < kTile; ++d) acc[d] = static_cast<acc_t>(b_dec[d0 + d]);
        for (int64_t j = 0; j < k; ++j) {
          const acc_t v = static_cast<acc_t>(vrow[j]);
          if (v == acc_t(0)) continue;
          const scalar_t* __restrict__ w = W_dec + irow[j] * d_in + d0;
#pragma omp simd
          for (int64_t d = 0; d < kTile; ++d) acc[d] += v * static_cast<acc_t>(w[d]);
        }
#pragma omp simd
        for (int64_t d = 0; d < kTile; ++d) row[d0 + d] = static_cast<scalar_t>(acc[d]);
      } else {  // the last, partial tile
        const int64_t n = d_in - d0;
        acc_t acc[kTile];
        for (int64_t d = 0; d < n; ++d) acc[d] = static_cast<acc_t>(b_dec[d0 + d]);
        for (int64_t j = 0; j < k; ++j) {
          const acc_t v = static_cast<acc_t>(vrow[j]);
          if (v == acc_t(0)) continue;
          const scalar_t* __restrict__ w = W_dec + irow[j] * d_in + d0;
          for (int64_t d = 0; d < n; ++d) acc[d] += v * static_cast<acc_t>(w[d]);
        }
        for (int64_t d = 0; d < n; ++d) row[d0 + d] = static_cast<scalar_t>(acc[d]);
      }
    }
  }
}

at::Tensor decode_sparse_cpu(const at::Tensor& values, const at::Tensor& indices,
                             const at::Tensor& W_dec, const at::Tensor& b_dec) {
  SAE_CHECK_CPU(values); SAE_CHECK_CPU(indices); SAE_CHECK_CPU(W_dec); SAE_CHECK_CPU(b_dec);
  SAE_CHECK_DIM(values, 2); SAE_CHECK_DIM(indices, 2); SAE_CHECK_DIM(W_dec, 2); SAE_CHECK_DIM(b_dec, 1);
  SAE_CHECK_DTYPE(indices, at::kLong);
  SAE_CHECK_SAME_DTYPE(values, W_dec); SAE_CHECK_SAME_DTYPE(b_dec, W_dec);
  TORCH_CHECK(values.sizes() == indices.sizes(), "values and indices must have the same shape, got ",
              values.sizes(), " and ", indices.sizes());
  TORCH_CHECK(b_dec.size(0) == W_dec.size(1), "b_dec must have shape [", W_dec.size(1), "] (d_in), got ",
              b_dec.sizes());
  const int64_t B = values.size(0), k = values.size(1), d_sae = W_dec.size(0), d_in = W_dec.size(1);
  check_index_range(indices, d_sae);
  auto v = values.contiguous();
  auto i = indices.contiguous();
  auto w = W_dec.contiguous();
  auto bd = b_dec.contiguous();
  auto out = at::empty({B, d_in}, W_dec.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "decode_sparse_cpu", [&] {
    decode_sparse_rows<scalar_t>(v.data_ptr<scalar_t>(), i.data_ptr<int64_t>(), w.data_ptr<scalar_t>(),
                                 bd.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, k, d_in);
  });
  return out;
}

}  // namespace sae_fast

// Sparse backward pieces on the CPU (docs/design.md section 3):
//   dL/dv[b, j]     = g[b] . W_dec[i[b, j]]                           grad_values_cpu
//   dL/dW_dec[f]    = sum over (b, j) with i[b, j] = f of v[b, j] * g[b]  feature_reduce_cpu
//   dL/dW_enc[:, f] = sum over (b, j) with i[b, j] = f of dL/dpre[b, j] * (x[b] - b_dec)
//   dL/db_enc[f]    = sum over (b, j) with i[b, j] = f of dL/dpre[b, j]
// The per-feature sums run over a stable counting sort of the indices, one feature per
// iteration of a parallel loop: each output row is written by one thread in a fixed order.
#include <algorithm>
#include <vector>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "../checks.h"
#include "kernels.h"

namespace sae_fast {

at::Tensor grad_values_cpu(const at::Tensor& grad, const at::Tensor& indices, const at::Tensor& W_dec) {
  SAE_CHECK_CPU(grad); SAE_CHECK_CPU(indices); SAE_CHECK_CPU(W_dec);
  SAE_CHECK_DIM(grad, 2); SAE_CHECK_DIM(indices, 2); SAE_CHECK_DIM(W_dec, 2);
  SAE_CHECK_DTYPE(indices, at::kLong);
  SAE_CHECK_SAME_DTYPE(grad, W_dec);
  const int64_t B = indices.size(0), k = indices.size(1), d_sae = W_dec.size(0), D = W_dec.size(1);
  TORCH_CHECK(grad.size(0) == B && grad.size(1) == D, "grad must have shape [", B, ", ", D, "], got ",
              grad.sizes());
  check_index_range(indices, d_sae);
  auto g = grad.contiguous();
  auto idx = indices.contiguous();
  auto w = W_dec.contiguous();
  at::Tensor dv;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "grad_values_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dv = at::empty({B, k}, w.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const int64_t* ip = idx.data_ptr<int64_t>();
    acc_t* out = dv.data_ptr<acc_t>();
_Pragma("omp parallel for schedule(static)")
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* __restrict__ grow = gp + b * D;  // [D]
      for (int64_t j = 0; j < k; ++j) {
        const scalar_t* __restrict__ wrow = wp + ip[b * k + j] * D;  // [D]
        acc_t s = 0;
_Pragma("omp simd reduction(+ : s)")
        for (int64_t d = 0; d < D; ++d) s += static_cast<acc_t>(grow[d]) * static_cast<acc_t>(wrow[d]);
        out[b * k + j] = s;  // dL/dv = g . W_dec[i]
      }
    }
  });
  return dv;
}

std::tuple<at::Tensor, at::Tensor> feature_segments_cpu(const at::Tensor& indices, int64_t d_sae) {
  SAE_CHECK_CPU(indices);
  SAE_CHECK_DTYPE(indices, at::kLong);
  TORCH_CHECK(d_sae >= 1, "d_sae must be >= 1, got ", d_sae);
  check_index_range(indices, d_sae);
  auto flat = indices.contiguous().view(-1);
  const int64_t N = flat.numel();
  auto offsets = at::empty({d_sae + 1}, indices.options());
  auto perm = at::empty({N}, indices.options());
  const int64_t* ip = flat.data_ptr<int64_t>();
  int64_t* off = offsets.data_ptr<int64_t>();
  int64_t* pp = perm.data_ptr<int64_t>();
  // Parts of the positions are counted and scattered in parallel; part t's cursor for feature
  // f starts after every earlier part's entries of f, so the sort stays stable and its result
  // (unique for a stable sort) does not depend on the number of parts.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N / 16384));
  std::vector<int64_t> cursor(parts * d_sae, 0);  // [parts, d_sae]: counts, then cursors
_Pragma("omp parallel for schedule(static, 1) if (parts > 1)")
  for (int64_t t = 0; t < parts; ++t) {
    int64_t* cnt = cursor.data() + t * d_sae;
    for (int64_t n = N * t / parts; n < N * (t + 1) / parts; ++n) ++cnt[ip[n]];
  }
  int64_t running = 0;  // exclusive prefix sums over (feature, part)
  for (int64_t f = 0; f < d_sae; ++f) {
    off[f] = running;
    for (int64_t t = 0; t < parts; ++t) {
      const int64_t c = cursor[t * d_sae + f];
      cursor[t * d_sae + f] = running;
      running += c;
    }
  }
  off[d_sae] = running;
_Pragma("omp parallel for schedule(static, 1) if (parts > 1)")
  for (int64_t t = 0; t < parts; ++t) {
    int64_t* cur = cursor.data() + t * d_sae;
    for (int64_t n = N * t / parts; n < N * (t + 1) / parts; ++n) pp[cur[ip[n]]++] = n;  // positions ascend
  }
  return {perm, offsets};
}

namespace {

// feature_reduce_cpu and feature_reduce_cols_cpu: `columns` writes out[d, f] ([D, d_sae],
// the layout of W_enc) instead of out[f, d], so dL/dW_enc needs no transpose afterwards.
std::tuple<at::Tensor, at::Tensor> feature_reduce_impl(const at::Tensor& perm, const at::Tensor& offsets,
                                                       const at::Tensor& coef, const at::Tensor& src,
                                                       bool with_sum, bool columns) {
  SAE_CHECK_CPU(perm); SAE_CHECK_CPU(offsets); SAE_CHECK_CPU(coef); SAE_CHECK_CPU(src);
  SAE_CHECK_DTYPE(perm, at::kLong); SAE_CHECK_DTYPE(offsets, at::kLong);
  SAE_CHECK_DIM(perm, 1); SAE_CHECK_DIM(offsets, 1); SAE_CHECK_DIM(coef, 2); SAE_CHECK_DIM(src, 2);
  const int64_t B = coef.size(0), k = coef.size(1), D = src.size(1), d_sae = offsets.size(0) - 1;
  TORCH_CHECK(src.size(0) == B, "src must have ", B, " rows (one per coef row), got ", src.size(0));
  TORCH_CHECK(perm.numel() == B * k, "perm must have B*k = ", B * k, " entries, got ", perm.numel());
  TORCH_CHECK(d_sae >= 1, "offsets must have at least 2 entries");
  auto off = offsets.contiguous();
  auto pm = perm.contiguous();
  TORCH_CHECK(off[0].item<int64_t>() == 0 && off[d_sae].item<int64_t>() == B * k,
              "offsets must start at 0 and end at B*k = ", B * k);
  check_index_range(pm, B * k);
  auto c = coef.contiguous();
  auto s = src.contiguous();
  at::Tensor out, sums;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, s.scalar_type(), "feature_reduce_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    auto cc = c.to(acc_dtype);  // coef may arrive in the accumulation dtype already
    out = columns ? at::empty({D, d_sae}, s.options().dtype(acc_dtype))
                  : at::empty({d_sae, D}, s.options().dtype(acc_dtype));
    sums = at::empty({with_sum ? d_sae : 0}, s.options().dtype(acc_dtype));
    const int64_t* op = off.data_ptr<int64_t>();
    const int64_t* pp = pm.data_ptr<int64_t>();
    const acc_t* cp = cc.data_ptr<acc_t>();
    const scalar_t* sp = s.data_ptr<scalar_t>();
    acc_t* outp = out.data_ptr<acc_t>();
    acc_t* sump = with_sum ? sums.data_ptr<acc_t>() : nullptr;
    // Features go in groups of kGroup; with `columns` a group's rows are summed into scratch
    // and then stored as whole cache lines of each output row (out[d, f0:f0+kGroup]).
    constexpr int64_t kGroup = 16;
    const int64_t n_groups = (d_sae + kGroup - 1) / kGroup;
_Pragma("omp parallel")
    {
      std::vector<acc_t> scratch(columns ? kGroup * D : 0);
_Pragma("omp for schedule(dynamic, 4)")
      for (int64_t g = 0; g < n_groups; ++g) {
        const int64_t f0 = g * kGroup, nf = std::min(kGroup, d_sae - f0);
        for (int64_t f = f0; f < f0 + nf; ++f) {
          acc_t* __restrict__ row = columns ? scratch.data() + (f - f0) * D : outp + f * D;  // [D]
          for (int64_t d = 0; d < D; ++d) row[d] = acc_t(0);
          acc_t total = 0;
          for (int64_t p = op[f]; p < op[f + 1]; ++p) {
            const int64_t pos = pp[p];  // flat (b * k + j)
            const acc_t w = cp[pos];
            total += w;
            const scalar_t* __restrict__ srow = sp + (pos / k) * D;  // [D]
_Pragma("omp simd")
            for (int64_t d = 0; d < D; ++d) row[d] += w * static_cast<acc_t>(srow[d]);
          }
          if (sump) sump[f] = total;
        }
        if (columns)
          for (int64_t d = 0; d < D; ++d) {
            acc_t* __restrict__ dst = outp + d * d_sae + f0;
            for (int64_t f = 0; f < nf; ++f) dst[f] = scratch[f * D + d];
          }
      }
    }
  });
  return {out, sums};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> feature_reduce_cpu(const at::Tensor& perm, const at::Tensor& offsets,
                                                      const at::Tensor& coef, const at::Tensor& src,
                                                      bool with_sum) {
  return feature_reduce_impl(perm, offsets, coef, src, with_sum, false);
}

std::tuple<at::Tensor, at::Tensor> feature_reduce_cols_cpu(const at::Tensor& perm, const at::Tensor& offsets,
                                                           const at::Tensor& coef, const at::Tensor& src,
                                                           bool with_sum) {
  return feature_reduce_impl(perm, offsets, coef, src, with_sum, true);
}

}  // namespace sae_fast

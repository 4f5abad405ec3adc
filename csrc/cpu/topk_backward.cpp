// The whole TopK SAE backward on the CPU in one walk over the features (docs/design.md section 3):
// one stable counting sort of the indices, then for each feature f and each position (b, j)
// of its segment, with g = dL/drecon[b] and xc = x[b] - b_dec:
//   dv           = g . W_dec[f] (+ grad_values[b, j])        d_pre[b, j] = dv * (v[b, j] > 0)
//   dW_dec[f]   += v[b, j] * g        dW_enc[:, f] += d_pre[b, j] * xc     db_enc[f] += d_pre[b, j]
// so each row of g and x is read once per position (the separate kernels read g twice, W_dec
// once more and a materialised x - b_dec). Each feature is owned by one thread and summed in
// position order: deterministic, and independent of the thread count.
#include <algorithm>
#include <type_traits>
#include <vector>

#include <ATen/OpMathType.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "../checks.h"
#include "kernels.h"

namespace sae_fast {

namespace {

// x - b_dec as the reference computes it: in the input dtype (rounded once), then widened.
template <typename scalar_t, typename acc_t>
inline acc_t centred(acc_t diff) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) return diff;
  else return static_cast<acc_t>(static_cast<scalar_t>(diff));
}

// One feature's positions and the tensors its walk reads.
template <typename scalar_t>
struct Segment {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t* pos;  // [n] flat positions b * k + j, ascending
  int64_t n, k, D;
  const scalar_t* g;    // [B, D] dL/drecon
  const scalar_t* x;    // [B, D]
  const scalar_t* v;    // [B * k] values
  const acc_t* gv;      // [B * k] direct gradient on the values, or null
};

constexpr int64_t kAhead = 4;  // positions ahead whose rows pass 1 prefetches

// Pass 1 of a feature: d_pre of each of its positions (written to dpp and, with v, to
// coef[2 * i], coef[2 * i + 1]); returns their sum, dL/db_enc[f].
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
acc_t feature_dpre(const Segment<scalar_t>& s, const acc_t* __restrict__ w, acc_t* __restrict__ dpp,
                   acc_t* __restrict__ coef) {
  acc_t total = 0;
  for (int64_t i = 0; i < s.n; ++i) {
    const int64_t pos = s.pos[i];
    const scalar_t* __restrict__ grow = s.g + (pos / s.k) * s.D;
    if (i + kAhead < s.n) {  // the rows a few positions on are gathered, not streamed: prefetch
      const int64_t ahead = (s.pos[i + kAhead] / s.k) * s.D;
      const char* ga = reinterpret_cast<const char*>(s.g + ahead);
      const char* xa = reinterpret_cast<const char*>(s.x + ahead);
      for (int64_t byte = 0; byte < s.D * int64_t(sizeof(scalar_t)); byte += 64) {
        __builtin_prefetch(ga + byte);
        __builtin_prefetch(xa + byte);
      }
    }
    acc_t dv = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (s.D % 64 == 0) {  // four independent accumulators: the dot is not one long chain
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t d = 0; d < s.D; d += 64) {
          a0 = _mm512_fmadd_ps(_mm512_loadu_ps(grow + d), _mm512_loadu_ps(w + d), a0);
          a1 = _mm512_fmadd_ps(_mm512_loadu_ps(grow + d + 16), _mm512_loadu_ps(w + d + 16), a1);
          a2 = _mm512_fmadd_ps(_mm512_loadu_ps(grow + d + 32), _mm512_loadu_ps(w + d + 32), a2);
          a3 = _mm512_fmadd_ps(_mm512_loadu_ps(grow + d + 48), _mm512_loadu_ps(w + d + 48), a3);
        }
        dv = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
      } else {
#pragma omp simd reduction(+ : dv)
        for (int64_t d = 0; d < s.D; ++d) dv += grow[d] * w[d];
      }
    } else
#endif
    {
#pragma omp simd reduction(+ : dv)
      for (int64_t d = 0; d < s.D; ++d) dv += static_cast<acc_t>(grow[d]) * w[d];
    }
    if (s.gv) dv += s.gv[pos];
    const acc_t val = static_cast<acc_t>(s.v[pos]);
    const acc_t dp = dv * static_cast<acc_t>(val > acc_t(0));  // the ReLU mask, as the reference
    dpp[pos] = dp;
    coef[2 * i] = val;
    coef[2 * i + 1] = dp;
    total += dp;
  }
  return total;
}

#if defined(__AVX512F__)
// Pass 2 for fp32, NV vectors of D at a time held in registers across the whole segment:
// da[d0 + ...] = sum_i v_i g_i, ea[d0 + ...] = sum_i dpre_i (x_i - b_dec).
template <int NV>
inline void feature_sums_block(const Segment<float>& s, const float* __restrict__ coef, const float* __restrict__ bb,
                               int64_t d0, float* __restrict__ da, float* __restrict__ ea) {
  __m512 acc_d[NV], acc_e[NV], bias[NV];
  for (int q = 0; q < NV; ++q) {
    acc_d[q] = _mm512_setzero_ps();
    acc_e[q] = _mm512_setzero_ps();
    bias[q] = _mm512_loadu_ps(bb + d0 + 16 * q);
  }
  for (int64_t i = 0; i < s.n; ++i) {
    const int64_t row = (s.pos[i] / s.k) * s.D + d0;
    const __m512 val = _mm512_set1_ps(coef[2 * i]), dp = _mm512_set1_ps(coef[2 * i + 1]);
    for (int q = 0; q < NV; ++q) {
      acc_d[q] = _mm512_fmadd_ps(val, _mm512_loadu_ps(s.g + row + 16 * q), acc_d[q]);
      const __m512 xc = _mm512_sub_ps(_mm512_loadu_ps(s.x + row + 16 * q), bias[q]);
      acc_e[q] = _mm512_fmadd_ps(dp, xc, acc_e[q]);
    }
  }
  for (int q = 0; q < NV; ++q) {
    _mm512_storeu_ps(da + d0 + 16 * q, acc_d[q]);
    _mm512_storeu_ps(ea + d0 + 16 * q, acc_e[q]);
  }
}
#endif

// Pass 2 of a feature: da = dL/dW_dec[f] and ea = dL/dW_enc[:, f] from the (v, d_pre) pairs.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void feature_sums(const Segment<scalar_t>& s, const acc_t* __restrict__ coef, const acc_t* __restrict__ bb,
                  acc_t* __restrict__ da, acc_t* __restrict__ ea) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (s.D % 16 == 0) {
      int64_t d0 = 0;
      for (; d0 + 128 <= s.D; d0 += 128) feature_sums_block<8>(s, coef, bb, d0, da, ea);
      for (; d0 < s.D; d0 += 16) feature_sums_block<1>(s, coef, bb, d0, da, ea);
      return;
    }
  }
#endif
  for (int64_t d = 0; d < s.D; ++d) da[d] = ea[d] = acc_t(0);
  for (int64_t i = 0; i < s.n; ++i) {
    const int64_t row = (s.pos[i] / s.k) * s.D;
    const scalar_t* __restrict__ grow = s.g + row;
    const scalar_t* __restrict__ xrow = s.x + row;
    const acc_t val = coef[2 * i], dp = coef[2 * i + 1];
#pragma omp simd
    for (int64_t d = 0; d < s.D; ++d) {
      da[d] += val * static_cast<acc_t>(grow[d]);
      ea[d] += dp * centred<scalar_t>(static_cast<acc_t>(xrow[d]) - bb[d]);
    }
  }
}

// Both passes of one feature; returns dL/db_enc[f].
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
acc_t walk_feature(const Segment<scalar_t>& s, const acc_t* w, const acc_t* bb, acc_t* dpp, acc_t* coef,
                   acc_t* da, acc_t* ea) {
  const acc_t total = feature_dpre<scalar_t>(s, w, dpp, coef);
  feature_sums<scalar_t>(s, coef, bb, da, ea);
  return total;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sparse_backward_cpu(
    const at::Tensor& grad, const c10::optional<at::Tensor>& grad_values, const at::Tensor& x,
    const at::Tensor& W_enc, const at::Tensor& b_dec, const at::Tensor& W_dec, const at::Tensor& values,
    const at::Tensor& indices) {
  SAE_CHECK_CPU(grad); SAE_CHECK_CPU(x); SAE_CHECK_CPU(W_enc); SAE_CHECK_CPU(b_dec);
  SAE_CHECK_CPU(W_dec); SAE_CHECK_CPU(values); SAE_CHECK_CPU(indices);
  SAE_CHECK_DIM(grad, 2); SAE_CHECK_DIM(x, 2); SAE_CHECK_DIM(W_enc, 2); SAE_CHECK_DIM(b_dec, 1);
  SAE_CHECK_DIM(W_dec, 2); SAE_CHECK_DIM(values, 2); SAE_CHECK_DIM(indices, 2);
  SAE_CHECK_DTYPE(indices, at::kLong);
  SAE_CHECK_SAME_DTYPE(grad, W_dec); SAE_CHECK_SAME_DTYPE(x, W_dec); SAE_CHECK_SAME_DTYPE(W_enc, W_dec);
  SAE_CHECK_SAME_DTYPE(b_dec, W_dec); SAE_CHECK_SAME_DTYPE(values, W_dec);
  const int64_t B = indices.size(0), k = indices.size(1), d_sae = W_dec.size(0), D = W_dec.size(1);
  TORCH_CHECK(values.sizes() == indices.sizes(), "values must have the shape of indices ", indices.sizes(),
              ", got ", values.sizes());
  TORCH_CHECK(grad.size(0) == B && grad.size(1) == D, "grad must have shape [", B, ", ", D, "], got ", grad.sizes());
  TORCH_CHECK(x.size(0) == B && x.size(1) == D, "x must have shape [", B, ", ", D, "], got ", x.sizes());
  TORCH_CHECK(W_enc.size(0) == D && W_enc.size(1) == d_sae, "W_enc must have shape [", D, ", ", d_sae, "], got ",
              W_enc.sizes());
  TORCH_CHECK(b_dec.size(0) == D, "b_dec must have shape [", D, "], got ", b_dec.sizes());
  if (grad_values.has_value()) {
    SAE_CHECK_CPU((*grad_values));
    TORCH_CHECK(grad_values->sizes() == indices.sizes(), "grad_values must have the shape of indices ",
                indices.sizes(), ", got ", grad_values->sizes());
  }
  auto [perm, offsets] = feature_segments_cpu(indices, d_sae);  // the one sort (checks the range)
  auto g = grad.contiguous();
  auto xx = x.contiguous();
  auto wd = W_dec.contiguous();
  auto v = values.contiguous();
  auto bd = b_dec.contiguous();
  at::Tensor d_pre, dW_enc, db_enc, dW_dec;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, wd.scalar_type(), "sparse_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    d_pre = at::empty({B, k}, wd.options().dtype(acc_dtype));
    dW_enc = at::empty({D, d_sae}, W_enc.options());
    dW_dec = at::empty({d_sae, D}, wd.options());
    db_enc = at::empty({d_sae}, wd.options().dtype(acc_dtype));
    at::Tensor gv;
    if (grad_values.has_value()) gv = grad_values->to(acc_dtype).contiguous();
    const acc_t* gvp = gv.defined() ? gv.data_ptr<acc_t>() : nullptr;
    const int64_t* op = offsets.data_ptr<int64_t>();
    const int64_t* pp = perm.data_ptr<int64_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* xp = xx.data_ptr<scalar_t>();
    const scalar_t* wp = wd.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* bp = bd.data_ptr<scalar_t>();
    acc_t* dpp = d_pre.data_ptr<acc_t>();
    scalar_t* dencp = dW_enc.data_ptr<scalar_t>();
    scalar_t* ddecp = dW_dec.data_ptr<scalar_t>();
    acc_t* dbp = db_enc.data_ptr<acc_t>();
    // Features go in groups of kGroup: a group's dW_enc columns are summed into scratch, then
    // stored as whole cache lines of each row of dW_enc (dW_enc[d, f0:f0 + kGroup]).
    constexpr int64_t kGroup = 16;
    int64_t max_seg = 1;  // the longest segment: scratch for its (v, d_pre) pairs
    for (int64_t f = 0; f < d_sae; ++f) max_seg = std::max(max_seg, op[f + 1] - op[f]);
    const int64_t n_groups = (d_sae + kGroup - 1) / kGroup;
_Pragma("omp parallel")
    {
      std::vector<acc_t> enc(kGroup * D), dec(D), w(D), bdec(D), coef_buf(2 * max_seg);
      acc_t* coef = coef_buf.data();
      for (int64_t d = 0; d < D; ++d) bdec[d] = static_cast<acc_t>(bp[d]);
_Pragma("omp for schedule(dynamic, 2)")
      for (int64_t grp = 0; grp < n_groups; ++grp) {
        const int64_t f0 = grp * kGroup, nf = std::min(kGroup, d_sae - f0);
        for (int64_t f = f0; f < f0 + nf; ++f) {
          acc_t* __restrict__ ea = enc.data() + (f - f0) * D;  // [D], dW_enc[:, f]
          acc_t* __restrict__ da = dec.data();                 // [D], dW_dec[f]
          acc_t* __restrict__ wr = w.data();
          const acc_t* __restrict__ bb = bdec.data();
          for (int64_t d = 0; d < D; ++d) wr[d] = static_cast<acc_t>(wp[f * D + d]);
          dbp[f] = walk_feature<scalar_t>(Segment<scalar_t>{pp + op[f], op[f + 1] - op[f], k, D, gp, xp, vp, gvp},
                                          wr, bb, dpp, coef, da, ea);
          for (int64_t d = 0; d < D; ++d) ddecp[f * D + d] = static_cast<scalar_t>(da[d]);
        }
        for (int64_t d = 0; d < D; ++d) {
          scalar_t* __restrict__ dst = dencp + d * d_sae + f0;
          for (int64_t f = 0; f < nf; ++f) dst[f] = static_cast<scalar_t>(enc[f * D + d]);
        }
      }
    }
  });
  return {d_pre, dW_enc, db_enc, dW_dec};
}

}  // namespace sae_fast

// The whole TopK SAE backward on the CPU from one stable counting sort of the indices
// (docs/design.md section 3). For each feature f and each position p = (b, j) of its segment,
// with g = dL/drecon[b] and xc = x[b] - b_dec:
//   dv           = g . W_dec[f] (+ grad_values[b, j])        d_pre[b, j] = dv * (v[b, j] > 0)
//   dW_dec[f]   += v[b, j] * g        dW_enc[:, f] += d_pre[b, j] * xc     db_enc[f] += d_pre[b, j]
//
// The rows of g and x are gathered (one per position), so the walk runs in column chunks of
// d_in: a chunk of g (or x) over all B rows is sized to stay in a core's L2, and every gather
// of a chunk pass hits it, where whole-row gathers of [B, d_in] streamed from L3 (at B=4096,
// d_in=384 the whole-row walk was L3-bound and cost ~0.8x the encoder GEMM). Three passes:
//   A, per chunk: dW_dec[f, chunk] and the chunk's part of each dv (summed over chunks in order);
//   B: d_pre and db_enc from the finished dv;
//   C, per chunk: dW_enc[chunk, f], stored as whole cache lines of kGroup features per row.
// Each feature group is owned by one thread (interleaved, the same in every pass, so no pass
// waits for another thread), and every sum runs in position order and chunk order: the result
// is deterministic and independent of the thread count.
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

constexpr int64_t kGroup = 64;      // features per group: dW_enc rows are stored 64 columns (4 lines) at a time
constexpr int64_t kMaxChunk = 128;  // widest chunk (elements)
constexpr int64_t kAhead = 4;       // positions ahead whose chunk of a row is prefetched
constexpr int64_t kAheadRows = 8;   // features ahead whose chunk of W_dec is prefetched

// The chunk width: the widest power of two in [16, kMaxChunk] whose [B, chunk] slab of one
// source fits ~1 MiB (half a core's L2 here), at most d_in rounded up; a function of B and
// d_in only, so the sums' order never depends on the machine.
inline int64_t chunk_width(int64_t B, int64_t D, int64_t itemsize) {
  int64_t w = kMaxChunk;
  while (w > 16 && B * w * itemsize > (int64_t(1) << 20)) w /= 2;
  while (w > 16 && w / 2 >= D) w /= 2;
  return w;
}

// The positions of the walk in feature order, with what each pass reads of them.
template <typename acc_t>
struct Walk {
  const int64_t* offsets;  // [d_sae + 1]
  const int64_t* row;      // [N] the position's row b = perm / k
  const acc_t* val;        // [N] v at the position
  acc_t* dv;               // [N] dL/dv, then d_pre
  int64_t D;
  int64_t N;  // positions in all
  int64_t d_sae;
};

inline void prefetch_chunk(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b);
}

// dst[0:n] = src[0:n] (cast), by non-temporal stores where they can be (fp32, whole aligned
// lines): the gradients are written once and not read here again, so they must not evict the
// chunk of g or x that the gathers read from L2.
template <typename scalar_t, typename acc_t>
inline void store_out(scalar_t* __restrict__ dst, const acc_t* __restrict__ src, int64_t n) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (n % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 64 == 0) {
      for (int64_t d = 0; d < n; d += 16) _mm512_stream_ps(dst + d, _mm512_load_ps(src + d));
      return;
    }
  }
#endif
  for (int64_t d = 0; d < n; ++d) dst[d] = static_cast<scalar_t>(src[d]);
}

// Pass A of one feature on columns [c0, c0 + w) (W > 0: w == W, known at compile time):
// dW_dec[f, c0:c0 + w] = sum_p v_p g[b_p, c0:c0 + w], and dv_p += g[b_p, c0:c0 + w] . W_dec[f, c0:c0 + w].
template <int W, typename scalar_t, typename acc_t>
void decoder_chunk(const Walk<acc_t>& s, int64_t f, int64_t c0, int64_t wrt, const acc_t* __restrict__ g,
                   const scalar_t* __restrict__ wdec, scalar_t* __restrict__ dW_dec) {
  const int64_t w = W > 0 ? W : wrt;
  alignas(64) acc_t wd[kMaxChunk], acc[kMaxChunk];
  const scalar_t* wrow = wdec + f * s.D + c0;
  if (f + kAheadRows < s.d_sae)  // a later feature's chunk of W_dec (measured: ~20% of the walk)
    prefetch_chunk(wrow + kAheadRows * s.D, w * int64_t(sizeof(scalar_t)));
  for (int64_t d = 0; d < w; ++d) {
    wd[d] = static_cast<acc_t>(wrow[d]);
    acc[d] = acc_t(0);
  }
  const int64_t end = s.offsets[f + 1];
  for (int64_t i = s.offsets[f]; i < end; ++i) {
    if (i + kAhead < s.N) prefetch_chunk(g + s.row[i + kAhead] * w, w * int64_t(sizeof(acc_t)));
    const acc_t* __restrict__ gr = g + s.row[i] * w;
    const acc_t v = s.val[i];
    acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < w; ++d) {
      dot += gr[d] * wd[d];
      acc[d] += v * gr[d];
    }
    s.dv[i] += dot;
  }
  store_out(dW_dec + f * s.D + c0, acc, w);
}

// Pass C of a group of nf features on columns [c0, c0 + w): dW_enc[c0 + d, f0 + q] =
// sum_p d_pre_p (x[b_p, c0 + d] - b_dec[c0 + d]) over feature f0 + q's positions.
template <int W, typename scalar_t, typename acc_t>
void encoder_chunk(const Walk<acc_t>& s, int64_t f0, int64_t nf, int64_t c0, int64_t wrt,
                   const acc_t* __restrict__ xc, int64_t d_sae, scalar_t* __restrict__ dW_enc) {
  const int64_t w = W > 0 ? W : wrt;
  alignas(64) acc_t enc[kGroup][kMaxChunk];
  for (int64_t q = 0; q < nf; ++q) {
    acc_t* __restrict__ acc = enc[q];
    for (int64_t d = 0; d < w; ++d) acc[d] = acc_t(0);
    const int64_t end = s.offsets[f0 + q + 1];
    for (int64_t i = s.offsets[f0 + q]; i < end; ++i) {
      if (i + kAhead < s.N) prefetch_chunk(xc + s.row[i + kAhead] * w, w * int64_t(sizeof(acc_t)));
      const acc_t* __restrict__ xr = xc + s.row[i] * w;
      const acc_t dp = s.dv[i];
#pragma omp simd
      for (int64_t d = 0; d < w; ++d) acc[d] += dp * xr[d];
    }
  }
  alignas(64) acc_t line[kGroup];
  for (int64_t d = 0; d < w; ++d) {
    for (int64_t q = 0; q < nf; ++q) line[q] = enc[q][d];
    store_out(dW_enc + (c0 + d) * d_sae + f0, line, nf);
  }
}

// Calls fn.template operator()<W>(c0, w) for each chunk of [0, D): whole chunks of width
// `chunk` with a compile-time width, the tail (if any) with a run-time one.
template <typename Fn>
void for_chunks(int64_t D, int64_t chunk, Fn&& fn) {
  int64_t c0 = 0;
  for (; c0 + chunk <= D; c0 += chunk) {
    switch (chunk) {
      case 128: fn(std::integral_constant<int, 128>{}, c0, chunk); break;
      case 64: fn(std::integral_constant<int, 64>{}, c0, chunk); break;
      case 32: fn(std::integral_constant<int, 32>{}, c0, chunk); break;
      default: fn(std::integral_constant<int, 16>{}, c0, chunk); break;
    }
  }
  if (c0 < D) fn(std::integral_constant<int, 0>{}, c0, D - c0);
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
  const int64_t N = B * k;
  at::Tensor d_pre, dW_enc, db_enc, dW_dec;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, wd.scalar_type(), "sparse_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    d_pre = at::empty({B, k}, wd.options().dtype(acc_dtype));
    dW_enc = pooled_empty({D, d_sae}, W_enc.options());  // every element is written below
    dW_dec = pooled_empty({d_sae, D}, wd.options());
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
    std::vector<int64_t> row(N);
    std::vector<acc_t> val(N), dv(N), bdec(D);
    for (int64_t d = 0; d < D; ++d) bdec[d] = static_cast<acc_t>(bp[d]);
_Pragma("omp parallel for schedule(static)")
    for (int64_t i = 0; i < N; ++i) {  // the positions in feature order, with what they read
      const int64_t pos = pp[i];
      row[i] = pos / k;
      val[i] = static_cast<acc_t>(vp[pos]);
      dv[i] = gvp ? gvp[pos] : acc_t(0);
    }
    const Walk<acc_t> s{op, row.data(), val.data(), dv.data(), D, N, d_sae};
    const int64_t chunk = chunk_width(B, D, int64_t(sizeof(acc_t)));
    const int64_t n_groups = (d_sae + kGroup - 1) / kGroup;
    // Each thread's copy of one chunk of g or x over all B rows, [B, w] contiguous: gathered
    // rows are then w apart on few pages, not D apart across the whole input. Allocated here
    // (nothing may throw inside the region), from the pool: no page faults call after call.
    auto slabs = pooled_empty({omp_max_threads() * B * chunk}, wd.options().dtype(acc_dtype));
    acc_t* slabs_p = slabs.data_ptr<acc_t>();
_Pragma("omp parallel")
    {
      // Thread t owns groups t, t + nt, ...: the same in every pass, so a feature's dv is
      // only ever read and written by one thread and no pass waits on another.
      const int64_t nt = omp_threads(), t = omp_thread();
      acc_t* slab = slabs_p + t * B * chunk;
      for_chunks(D, chunk, [&](auto Wc, int64_t c0, int64_t w) {  // pass A
        acc_t* gs = slab;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t d = 0; d < w; ++d) gs[b * w + d] = static_cast<acc_t>(gp[b * D + c0 + d]);
        for (int64_t grp = t; grp < n_groups; grp += nt)
          for (int64_t f = grp * kGroup; f < std::min(d_sae, (grp + 1) * kGroup); ++f)
            decoder_chunk<decltype(Wc)::value>(s, f, c0, w, gs, wp, ddecp);
      });
      for (int64_t grp = t; grp < n_groups; grp += nt)  // pass B: d_pre, db_enc
        for (int64_t f = grp * kGroup; f < std::min(d_sae, (grp + 1) * kGroup); ++f) {
          acc_t total = 0;
          for (int64_t i = op[f]; i < op[f + 1]; ++i) {
            const acc_t dp = s.dv[i] * static_cast<acc_t>(s.val[i] > acc_t(0));  // the ReLU mask
            s.dv[i] = dp;
            dpp[pp[i]] = dp;
            total += dp;
          }
          dbp[f] = total;
        }
      for_chunks(D, chunk, [&](auto Wc, int64_t c0, int64_t w) {  // pass C
        acc_t* xs = slab;  // x - b_dec on the chunk, as the reference rounds it
        for (int64_t b = 0; b < B; ++b)
          for (int64_t d = 0; d < w; ++d)
            xs[b * w + d] = centred<scalar_t>(static_cast<acc_t>(xp[b * D + c0 + d]) - bdec[c0 + d]);
        for (int64_t grp = t; grp < n_groups; grp += nt) {
          const int64_t f0 = grp * kGroup;
          encoder_chunk<decltype(Wc)::value, scalar_t>(s, f0, std::min(kGroup, d_sae - f0), c0, w, xs, d_sae,
                                                       dencp);
        }
      });
    }
  });
  return {d_pre, dW_enc, db_enc, dW_dec};
}

}  // namespace sae_fast

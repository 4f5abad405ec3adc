// TopK encoder on the CPU: pre = (x - b_dec) @ W_enc + b_enc, one tile of rows and one block
// of features at a time (a BLAS call per tile and block on a strided view of W_enc, no copy),
// merged into a running per-row top-k kept as a min-heap whose root is the worst kept entry.
// Peak extra memory is O(threads * rows * block), never O(B * d_sae). Order: value descending, then lower index first; a
// later feature never displaces an equal earlier one, so ties go to the lower index.
#include <algorithm>
#include <vector>

#include <ATen/OpMathType.h>

#include "../checks.h"
#include "kernels.h"

namespace sae_fast {

namespace {

template <typename acc_t>
struct Entry {
  acc_t value;
  int64_t index;
};

// a ranks before b: larger value, then lower index.
template <typename acc_t>
inline bool ranks_before(const Entry<acc_t>& a, const Entry<acc_t>& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

// Min-heap on rank: heap[0] is the entry that ranks last.
template <typename acc_t>
inline void sift_down(Entry<acc_t>* heap, int64_t n, int64_t i) {
  for (;;) {
    int64_t worst = i;
    const int64_t l = 2 * i + 1, r = l + 1;
    if (l < n && ranks_before(heap[worst], heap[l])) worst = l;
    if (r < n && ranks_before(heap[worst], heap[r])) worst = r;
    if (worst == i) return;
    std::swap(heap[i], heap[worst]);
    i = worst;
  }
}

template <typename acc_t>
inline void sift_up(Entry<acc_t>* heap, int64_t i) {
  while (i > 0) {
    const int64_t parent = (i - 1) / 2;
    if (!ranks_before(heap[parent], heap[i])) return;
    std::swap(heap[i], heap[parent]);
    i = parent;
  }
}

// Merge one block of pre-activations [nr, nb] (features f0..f0+nb) into the heaps of nr rows.
// pre[b, c] + bias[c] is the pre-activation of feature f0 + c (the bias is added here, not
// by addmm, which would first copy it into every row of the block).
template <typename scalar_t, typename acc_t>
void merge_block(const scalar_t* __restrict__ pre, const scalar_t* __restrict__ bias, int64_t nr,
                 int64_t nb, int64_t f0, int64_t k, Entry<acc_t>* heaps, int64_t* sizes) {
  for (int64_t b = 0; b < nr; ++b) {
    Entry<acc_t>* heap = heaps + b * k;
    int64_t n = sizes[b];
    const scalar_t* row = pre + b * nb;
    int64_t c = 0;
    for (; c < nb && n < k; ++c) {  // fill phase
      heap[n] = {static_cast<acc_t>(row[c]) + static_cast<acc_t>(bias[c]), f0 + c};
      sift_up(heap, n++);
    }
    acc_t floor = heap[0].value;  // the worst kept value; strictly greater is needed
    constexpr int64_t kChunk = 32;
    while (c < nb) {
      const int64_t end = std::min(nb, c + kChunk);
      // Most chunks cannot beat the floor once the heap is warm: test them with one SIMD max.
      acc_t chunk_max = static_cast<acc_t>(row[c]) + static_cast<acc_t>(bias[c]);
#pragma omp simd reduction(max : chunk_max)
      for (int64_t q = c; q < end; ++q)
        chunk_max = std::max(chunk_max, static_cast<acc_t>(row[q]) + static_cast<acc_t>(bias[q]));
      if (!(chunk_max > floor)) {  // NaN never displaces a kept entry, as in the scalar path
        c = end;
        continue;
      }
      for (; c < end; ++c) {
        const acc_t v = static_cast<acc_t>(row[c]) + static_cast<acc_t>(bias[c]);
        if (!(v > floor)) continue;  // equal: the kept one has the lower index
        heap[0] = {v, f0 + c};
        sift_down(heap, k, 0);
        floor = heap[0].value;
      }
    }
    sizes[b] = n;
  }
}

// Rows per tile: a thread's [rows, block] pre-activation tile stays within ~512 KiB, so it is
// merged from L2 right after its GEMM instead of going out to memory and back; and a batch
// gives at least 8 tiles when it can (16 rows or more each). A function of B and block only,
// never of the thread count, so the result does not depend on it.
inline int64_t tile_rows(int64_t B, int64_t block, int64_t itemsize) {
  const int64_t by_cache = std::max<int64_t>((int64_t(1) << 19) / (block * itemsize), 16);
  return std::max<int64_t>(std::min(by_cache, (B + 7) / 8), 16);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_encode_cpu(const at::Tensor& x, const at::Tensor& W_enc,
                                                   const at::Tensor& b_enc, const at::Tensor& b_dec,
                                                   int64_t k, int64_t block) {
  SAE_CHECK_CPU(x); SAE_CHECK_CPU(W_enc); SAE_CHECK_CPU(b_enc); SAE_CHECK_CPU(b_dec);
  SAE_CHECK_DIM(x, 2); SAE_CHECK_DIM(W_enc, 2); SAE_CHECK_DIM(b_enc, 1); SAE_CHECK_DIM(b_dec, 1);
  SAE_CHECK_SAME_DTYPE(x, W_enc); SAE_CHECK_SAME_DTYPE(b_enc, W_enc); SAE_CHECK_SAME_DTYPE(b_dec, W_enc);
  const int64_t B = x.size(0), d_in = x.size(1), d_sae = W_enc.size(1);
  TORCH_CHECK(W_enc.size(0) == d_in, "W_enc must have shape [", d_in, ", d_sae] to match x, got ", W_enc.sizes());
  TORCH_CHECK(b_enc.size(0) == d_sae, "b_enc must have shape [", d_sae, "], got ", b_enc.sizes());
  TORCH_CHECK(b_dec.size(0) == d_in, "b_dec must have shape [", d_in, "], got ", b_dec.sizes());
  TORCH_CHECK(k >= 1 && k <= d_sae, "k must be in [1, ", d_sae, "], got ", k);
  TORCH_CHECK(block >= 1, "block must be >= 1, got ", block);
  TORCH_CHECK(W_enc.stride(1) == 1, "W_enc must be row-major (stride 1 along d_sae)");

  // The op computes in its inputs' dtype: an enclosing torch.autocast must not turn the
  // BLAS calls below into bf16 ones behind the kernel's back.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKeySet({c10::DispatchKey::AutocastCPU}));
  auto xc = (x - b_dec).contiguous();  // [B, d_in]
  auto bias = b_enc.contiguous();       // [d_sae]
  auto values = at::empty({B, k}, x.options());
  auto indices = at::empty({B, k}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "topk_encode_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<Entry<acc_t>> heaps(B * k);
    std::vector<int64_t> sizes(B, 0);
    const int64_t rows = tile_rows(B, block, x.element_size());
    const int64_t n_tiles = (B + rows - 1) / rows;
    const scalar_t* bias_ptr = bias.data_ptr<scalar_t>();
    // Each thread takes whole row tiles: per tile, one GEMM per feature block into its own
    // buffer, merged at once. Tiles depend on B only, so the result does not depend on the
    // thread count.
_Pragma("omp parallel")
    {
      // The dispatcher's thread-local state does not reach OpenMP workers: stay below
      // autograd and outside autocast here too.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      c10::impl::ExcludeDispatchKeyGuard no_autocast_here(c10::DispatchKeySet({c10::DispatchKey::AutocastCPU}));
      auto buf = at::empty({rows * block}, x.options());
_Pragma("omp for schedule(dynamic, 1)")
      for (int64_t t = 0; t < n_tiles; ++t) {
        const int64_t r0 = t * rows, nr = std::min(rows, B - r0);
        auto xt = xc.narrow(0, r0, nr);
        for (int64_t f0 = 0; f0 < d_sae; f0 += block) {
          const int64_t nb = std::min(block, d_sae - f0);
          auto pre = buf.narrow(0, 0, nr * nb).view({nr, nb});
          at::mm_out(pre, xt, W_enc.narrow(1, f0, nb));  // [nr, nb], strided view of W_enc
          merge_block<scalar_t, acc_t>(pre.data_ptr<scalar_t>(), bias_ptr + f0, nr, nb, f0, k,
                                       heaps.data() + r0 * k, sizes.data() + r0);
        }
      }
    }
    scalar_t* vout = values.data_ptr<scalar_t>();
    int64_t* iout = indices.data_ptr<int64_t>();
_Pragma("omp parallel for schedule(static)")
    for (int64_t b = 0; b < B; ++b) {
      Entry<acc_t>* heap = heaps.data() + b * k;
      std::sort(heap, heap + k, ranks_before<acc_t>);
      for (int64_t j = 0; j < k; ++j) {
        vout[b * k + j] = static_cast<scalar_t>(std::max(heap[j].value, acc_t(0)));  // ReLU
        iout[b * k + j] = heap[j].index;
      }
    }
  });
  return {values, indices};
}

}  // namespace sae_fast

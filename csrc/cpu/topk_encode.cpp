// TopK encoder on the CPU: pre = (x - b_dec) @ W_enc + b_enc, one tile of rows and one block
// of features at a time (a BLAS call per tile and block on a strided view of W_enc, no copy),
// merged into a running per-row top-k kept as a min-heap whose root is the worst kept entry.
// Peak extra memory is O(threads * rows * block), never O(B * d_sae) (bf16/fp16 add one fp32
// copy of W_enc, see below). A dictionary no wider than one block (at most 4096 features by
// default) is encoded by whole rows instead (encode_whole_rows): one buffer of
// [max(256, ceil(B / 5)), d_sae]. Order: value descending, then lower index first; a later
// feature never displaces an equal earlier one, so ties go to the lower index.
//
// Ranking is on an integer key of the value (order_key): the same order as the floating-point
// one, with -0 == +0, and NaN ranked above every number (as torch.topk does), so the order is
// total and a NaN cannot corrupt the heap.
//
// Low precision (docs/design.md section 3): for bf16/fp16, x - b_dec is computed in the input dtype,
// then the GEMM runs in fp32 (fp32 copies of that and of W_enc) with an fp32 result, b_enc is
// added in fp32 and the ranking is on the fp32 value; values are relu(pre) cast back.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <ATen/OpMathType.h>

#include "../checks.h"
#include "kernels.h"

namespace sae_fast {

namespace {

// The integer type whose order matches acc_t's (float -> int32, double -> int64).
template <typename acc_t>
using key_t = std::conditional_t<sizeof(acc_t) == 4, int32_t, int64_t>;

// Order-preserving key: a < b (as numbers) iff key(a) < key(b); -0 and +0 share a key; every
// NaN gets the largest key. Branch-free, so the per-block pass vectorises.
template <typename acc_t>
inline key_t<acc_t> order_key(acc_t v) {
  using K = key_t<acc_t>;
  v += acc_t(0);  // -0 + 0 = +0
  K bits;
  std::memcpy(&bits, &v, sizeof bits);
  const K magnitude = std::numeric_limits<K>::max();  // all bits but the sign
  K key = bits ^ ((bits >> (8 * sizeof(K) - 1)) & magnitude);  // negatives: flip magnitude
  return v != v ? magnitude : key;
}

template <typename acc_t>
struct Entry {
  key_t<acc_t> key;
  acc_t value;
  int64_t index;
};

// a ranks before b: larger value, then lower index. Branch-free (`|`, `&`): heap sifts pick
// children with it, and a mispredicted branch per level would cost more than the compare.
template <typename acc_t>
inline bool ranks_before(const Entry<acc_t>& a, const Entry<acc_t>& b) {
  return (a.key > b.key) | ((a.key == b.key) & (a.index < b.index));
}

// Min-heap on rank: heap[0] is the entry that ranks last.
template <typename acc_t>
inline void sift_down(Entry<acc_t>* heap, int64_t n, int64_t i) {
  const Entry<acc_t> e = heap[i];
  for (;;) {
    const int64_t l = 2 * i + 1;
    if (l >= n) break;
    const int64_t r = l + 1;
    const int64_t worst = l + static_cast<int64_t>((r < n) && ranks_before(heap[l], heap[r]));  // worse child
    if (!ranks_before(e, heap[worst])) break;
    heap[i] = heap[worst];
    i = worst;
  }
  heap[i] = e;
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

constexpr int64_t kChunk = 64;  // entries per filter test of the warm phase

// The k best of n keys (n >= k): bisect on the key for the largest t with at least k keys >= t
// (one vectorised count per step, at most ~31 steps), then emit every key > t and the first
// keys == t in order, by calling emit(c) for each chosen c in increasing c. A cold heap would
// otherwise take ~k * ln(n / k) sifts per row, as much as the GEMM's own tile costs at small
// d_sae. Requires count(key >= lo) >= k > count(key > hi).
template <typename K, typename Emit>
void bisect_select(const K* __restrict__ key, int64_t n, int64_t k, K lo, K hi, Emit emit) {
  using U = std::make_unsigned_t<K>;
  // A step that finds exactly k keys >= mid ends the search: those k are the answer, with
  // no tie at the boundary (on continuous data that comes after ~half the ~31 steps).
  while (lo < hi) {
    const K mid = static_cast<K>(static_cast<U>(lo) + (static_cast<U>(hi) - static_cast<U>(lo) + 1) / 2);
    int32_t count = 0;
#pragma omp simd reduction(+ : count)
    for (int64_t c = 0; c < n; ++c) count += key[c] >= mid;
    if (count == k) {
      lo = mid - 1;  // keys > lo: exactly k
      break;
    }
    if (count > k) lo = mid; else hi = mid - 1;
  }
  int32_t above = 0;  // keys above lo: at most k of them
#pragma omp simd reduction(+ : above)
  for (int64_t c = 0; c < n; ++c) above += key[c] > lo;
  const int64_t ties = k - above;  // the first keys == lo by index fill the rest
  int64_t seen = 0;
  auto take = [&](int64_t c) {  // key[c] >= lo
    if (key[c] > lo || seen++ < ties) emit(c);
  };
  int64_t c = 0;
#ifdef __AVX512F__
  if constexpr (std::is_same_v<K, int32_t>) {  // ~k of n pass: visit the mask's set bits only
    for (; c + 16 <= n; c += 16) {
      uint32_t mask = _mm512_cmpge_epi32_mask(_mm512_loadu_si512(key + c), _mm512_set1_epi32(lo));
      for (; mask != 0; mask &= mask - 1) take(c + __builtin_ctz(mask));
    }
  }
#endif
  for (; c < n; ++c)
    if (key[c] >= lo) take(c);
}

// A row's candidate list: the positions (ascending) of its keys >= a guessed threshold.
template <typename K>
struct Candidates {
  std::vector<K> key;
  std::vector<int32_t> pos;
  int64_t cap = 0;  // more candidates than this: the guess was too low, bisect the row
  explicit Candidates(int64_t k, int64_t nb)
      : key(std::min<int64_t>(8 * k, nb) + 16), pos(std::min<int64_t>(8 * k, nb) + 16),
        cap(std::min<int64_t>(8 * k, nb)) {}
};

// One pass over a block's pre-activations row[c] + bias[c]: the positions (ascending) and keys
// of those whose key is >= t go to `cand`; returns how many (cand.cap + 1 or more once the
// list is full: the caller then bisects the whole row) and the row's largest value.
template <typename acc_t>
int64_t gather_candidates(const acc_t* __restrict__ row, const acc_t* __restrict__ bias, int64_t nb,
                          key_t<acc_t> t, Candidates<key_t<acc_t>>& cand, acc_t& vmax) {
  int64_t n = 0, c = 0;
  vmax = -std::numeric_limits<acc_t>::infinity();
#ifdef __AVX512F__
  if constexpr (std::is_same_v<acc_t, float>) {
    // Branch-free: compress the passing lanes in registers (a compress straight to memory is
    // slow on some cores) and store all 16; the next store overwrites the unused tail.
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i tv = _mm512_set1_epi32(t), magnitude = _mm512_set1_epi32(0x7fffffff);
    __m512 vm = _mm512_set1_ps(vmax);
    for (; c + 16 <= nb && n <= cand.cap; c += 16) {
      // order_key, vectorised: +0 for -0, negatives' magnitude bits flipped, NaN the largest
      const __m512 v = _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(row + c), _mm512_loadu_ps(bias + c)),
                                     _mm512_setzero_ps());
      const __m512i bits = _mm512_castps_si512(v);
      __m512i kv = _mm512_xor_si512(bits, _mm512_and_si512(_mm512_srai_epi32(bits, 31), magnitude));
      kv = _mm512_mask_mov_epi32(kv, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), magnitude);
      vm = _mm512_max_ps(vm, v);
      const __mmask16 mask = _mm512_cmpge_epi32_mask(kv, tv);
      _mm512_storeu_si512(cand.key.data() + n, _mm512_maskz_compress_epi32(mask, kv));
      const __m512i pv = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(c)));
      _mm512_storeu_si512(cand.pos.data() + n, _mm512_maskz_compress_epi32(mask, pv));
      n += __builtin_popcount(static_cast<uint32_t>(mask));
    }
    vmax = _mm512_reduce_max_ps(vm);
  }
#endif
  for (; c < nb && n <= cand.cap; ++c) {
    const acc_t v = row[c] + bias[c];
    const key_t<acc_t> kc = order_key<acc_t>(v);
    vmax = std::max(vmax, v);
    if (kc >= t) {
      cand.key[n] = kc;
      cand.pos[n] = static_cast<int32_t>(c);
      ++n;
    }
  }
  return n;
}

// Whether any of kChunk entries might beat the floor: `!(v < floor)` is true for every value
// that could (larger, equal, NaN, and -0 against a +0 floor), so it never misses one.
template <typename acc_t>
inline bool chunk_may_enter(const acc_t* __restrict__ row, const acc_t* __restrict__ bias, acc_t floor) {
  int32_t count = 0;  // an int reduction over a fixed trip count: GCC vectorises this form
#pragma omp simd reduction(+ : count)
  for (int64_t q = 0; q < kChunk; ++q) count += (row[q] + bias[q] < floor) ? 0 : 1;
  return count > 0;
}

// Merge one block of pre-activations [nr, nb] (features f0..f0+nb) into the heaps of nr rows.
// pre[b, c] + bias[c] is the pre-activation of feature f0 + c (the bias is added here, not
// by addmm, which would first copy it into every row of the block). Scratch: `key` [nb],
// `sel` [k].
template <typename acc_t>
void merge_block(const acc_t* __restrict__ pre, const acc_t* __restrict__ bias, int64_t nr, int64_t nb,
                 int64_t f0, int64_t k, Entry<acc_t>* heaps, int64_t* sizes, key_t<acc_t>* __restrict__ key,
                 Entry<acc_t>* __restrict__ sel, Candidates<key_t<acc_t>>& cand, bool only_block) {
  using K = key_t<acc_t>;
  bool have_guess = false;  // a threshold guess from the previous row of this block
  K guess = 0;
  for (int64_t b = 0; b < nr; ++b) {
    Entry<acc_t>* heap = heaps + b * k;
    int64_t n = sizes[b];
    const acc_t* __restrict__ row = pre + b * nb;
    int64_t c = 0;
    if (n == 0 && nb >= k) {  // the row's first block: select, no per-entry inserts
      // The exact top k (ties to the lower index) in one of two ways; the guess changes only
      // the work. With a guess (the previous row's k-th value lowered by a quarter of its gap
      // to that row's max: ~2k entries pass on rows alike), one fused pass gathers the keys
      // >= guess and the bisection runs on those few. Without one, or when it kept fewer than
      // k or overflowed the list, the whole row's keys are bisected, narrowed by what the
      // guess showed.
      int64_t m = 0;
      acc_t kth = std::numeric_limits<acc_t>::infinity(), vmax;
      auto emit_at = [&](int64_t q) {  // q: a position in the block
        const acc_t v = row[q] + bias[q];
        sel[m++] = {order_key<acc_t>(v), v, f0 + q};
        kth = std::min(kth, v);
      };
      bool done = false;
      K lo_bound = std::numeric_limits<K>::min(), hi_bound = std::numeric_limits<K>::max();
      if (have_guess) {
        const int64_t found = gather_candidates<acc_t>(row, bias, nb, guess, cand, vmax);
        if (found >= k && found <= cand.cap) {
          K top = guess;
          for (int64_t q = 0; q < found; ++q) top = std::max(top, cand.key[q]);
          bisect_select(cand.key.data(), found, k, guess, top, [&](int64_t q) { emit_at(cand.pos[q]); });
          done = true;
        } else if (found < k) {
          hi_bound = guess - 1;  // fewer than k keys >= guess: the k-th lies below it
        } else {
          lo_bound = guess;  // at least k keys >= guess
        }
      }
      if (!done) {
        K kmin = std::numeric_limits<K>::max(), kmax = std::numeric_limits<K>::min();
        vmax = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(min : kmin) reduction(max : kmax, vmax)
        for (int64_t q = 0; q < nb; ++q) {
          const acc_t v = row[q] + bias[q];
          const K kc = order_key<acc_t>(v);
          key[q] = kc;
          kmin = std::min(kmin, kc);
          kmax = std::max(kmax, kc);
          vmax = std::max(vmax, v);
        }
        bisect_select(key, nb, k, std::max(kmin, lo_bound), std::min(kmax, hi_bound), emit_at);
      }
      const acc_t g = kth - (vmax - kth) / 4;  // the next row's guess; not finite: none
      have_guess = std::isfinite(g) && std::isfinite(vmax);
      if (have_guess) guess = order_key<acc_t>(g);
      std::copy(sel, sel + k, heap);
      if (!only_block)  // later blocks merge into a min-heap on rank (no later block: no heap)
        for (int64_t i = k / 2 - 1; i >= 0; --i) sift_down(heap, k, i);
      sizes[b] = k;
      continue;
    }
    for (; c < nb && n < k; ++c) {  // fill phase (blocks narrower than k)
      heap[n] = {order_key<acc_t>(row[c] + bias[c]), row[c] + bias[c], f0 + c};
      sift_up(heap, n++);
    }
    // Warm phase. Most chunks cannot beat the worst kept entry: a vectorised float test finds
    // the chunks that might, and only those get the exact key test.
    K floor = heap[0].key;  // the worst kept key; strictly greater is needed
    acc_t floor_value = heap[0].value;
    // The exact test of entry q, which passed the float test at some earlier floor.
    auto offer = [&](int64_t q) {
      const acc_t v = row[q] + bias[q];
      if (v < floor_value) return;
      const K kq = order_key<acc_t>(v);
      if (!(kq > floor)) return;  // equal: the kept one has the lower index
      heap[0] = {kq, v, f0 + q};
      sift_down(heap, k, 0);
      floor = heap[0].key;
      floor_value = heap[0].value;
    };
#ifdef __AVX512F__
    if constexpr (std::is_same_v<acc_t, float>) {
      // 16 entries per compare; the mask's set bits are the only entries looked at again.
      for (; c + 16 <= nb; c += 16) {
        const __m512 v = _mm512_add_ps(_mm512_loadu_ps(row + c), _mm512_loadu_ps(bias + c));
        uint32_t mask = _mm512_cmp_ps_mask(v, _mm512_set1_ps(floor_value), _CMP_NLT_UQ);
        for (; mask != 0; mask &= mask - 1) offer(c + __builtin_ctz(mask));
      }
    }
#endif
    while (c < nb) {
      const int64_t end = std::min(nb, c + kChunk);
      // the tail goes straight to the exact test
      if (end - c < kChunk || chunk_may_enter(row + c, bias + c, floor_value))
        for (int64_t q = c; q < end; ++q) offer(q);
      c = end;
    }
    sizes[b] = n;
  }
}

// A row's k kept entries written in rank order (value descending, then lower index), values
// ReLU'd. fp32 with indices below 2^31: each entry's rank is the number of entries that rank
// before it, counted 8 at a time on a composite 64-bit key (no branches, no sort); otherwise
// std::sort.
template <typename acc_t, typename scalar_t>
void write_sorted(Entry<acc_t>* e, int64_t k, scalar_t* vout, int64_t* iout) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<acc_t, float>) {
    constexpr int64_t kMax = 256;
    bool small = k <= kMax;
    for (int64_t j = 0; j < k && small; ++j) small = e[j].index < (int64_t(1) << 31);
    if (small) {
      alignas(64) int64_t comp[kMax + 8];
      for (int64_t j = 0; j < k; ++j)  // larger composite = ranks first; all distinct
        comp[j] = static_cast<int64_t>(static_cast<uint64_t>(static_cast<int64_t>(e[j].key)) << 32) |
                  (int64_t(0x7fffffff) - e[j].index);
      for (int64_t j = k; j < k + 8; ++j) comp[j] = std::numeric_limits<int64_t>::min();  // never above
      for (int64_t j = 0; j < k; ++j) {
        const __m512i cj = _mm512_set1_epi64(comp[j]);
        int64_t rank = 0;
        for (int64_t q = 0; q < k; q += 8)
          rank += __builtin_popcount(_mm512_cmpgt_epi64_mask(_mm512_load_si512(comp + q), cj));
        vout[rank] = static_cast<scalar_t>(std::max(e[j].value, acc_t(0)));  // ReLU
        iout[rank] = e[j].index;
      }
      return;
    }
  }
#endif
  std::sort(e, e + k, [](const Entry<acc_t>& a, const Entry<acc_t>& b) { return ranks_before(a, b); });
  for (int64_t j = 0; j < k; ++j) {
    vout[j] = static_cast<scalar_t>(std::max(e[j].value, acc_t(0)));  // ReLU
    iout[j] = e[j].index;
  }
}

// Rows per tile: enough that BLAS's repacking of the W_enc block (once per call) is small
// against the tile's GEMM (at least 512 rows, or ~512 KiB of tile when blocks are narrow);
// at 85-row tiles the repacking alone cost ~5% of the encode. A batch still gives at least 8
// tiles when it can (16 rows or more each). A function of B and block only, never of the
// thread count, so the result does not depend on it.
inline int64_t tile_rows(int64_t B, int64_t block, int64_t itemsize) {
  const int64_t by_cache = std::max<int64_t>((int64_t(1) << 19) / (block * itemsize), 512);
  return std::max<int64_t>(std::min(by_cache, (B + 7) / 8), 16);
}

constexpr int64_t kWholeRowParts = 5;  // the whole-row path's chunks: a fifth of the batch (>= 256 rows)

// Whole rows (block >= d_sae): one multi-threaded BLAS GEMM per chunk of rows into a bounded
// buffer ([ceil(B / kWholeRowParts), d_sae], at least 256 rows), then the chunk's rows selected
// in parallel, each thread a contiguous range (a row's threshold guess comes from the row
// before it; the guess never changes a result, so neither does the split). BLAS runs at its
// full rate on such calls, where small dictionaries lost it to the blocked path's per-tile
// repacking (d_sae=1536: 1.24x the bare GEMM against 1.45x).
template <typename acc_t>
void encode_whole_rows(const at::Tensor& xc, const at::Tensor& W, const at::Tensor& bias, int64_t k,
                       Entry<acc_t>* heaps, int64_t* sizes) {
  const int64_t B = xc.size(0), d_sae = W.size(1);
  const int64_t rows = std::min(B, std::max<int64_t>(256, (B + kWholeRowParts - 1) / kWholeRowParts));
  auto buf = at::empty({rows, d_sae}, xc.options());
  const acc_t* bias_ptr = bias.data_ptr<acc_t>();
  for (int64_t r0 = 0; r0 < B; r0 += rows) {
    const int64_t nr = std::min(rows, B - r0);
    auto pre = buf.narrow(0, 0, nr);
    at::mm_out(pre, xc.narrow(0, r0, nr), W);  // [nr, d_sae]
    const acc_t* pp = pre.data_ptr<acc_t>();
_Pragma("omp parallel")
    {
      std::vector<key_t<acc_t>> key(d_sae);
      std::vector<Entry<acc_t>> sel(k);
      Candidates<key_t<acc_t>> cand(k, d_sae);
      const int64_t nt = omp_threads(), t = omp_thread();
      const int64_t b0 = nr * t / nt, b1 = nr * (t + 1) / nt;
      if (b1 > b0)
        merge_block<acc_t>(pp + b0 * d_sae, bias_ptr, b1 - b0, d_sae, 0, k, heaps + (r0 + b0) * k,
                           sizes + r0 + b0, key.data(), sel.data(), cand, true);
    }
  }
}

// Row tiles and feature blocks: each thread takes whole row tiles; per tile, one GEMM per
// feature block into its own buffer, merged at once while in cache. Tiles depend on B and the
// block only, so the result does not depend on the thread count.
template <typename acc_t>
void encode_blocked(const at::Tensor& xc, const at::Tensor& W, const at::Tensor& bias, int64_t k, int64_t block,
                    Entry<acc_t>* heaps, int64_t* sizes) {
  const int64_t B = xc.size(0), d_sae = W.size(1);
  const int64_t rows = tile_rows(B, block, sizeof(acc_t));
  const int64_t n_tiles = (B + rows - 1) / rows;
  const int64_t nb_max = std::min(block, d_sae);
  const acc_t* bias_ptr = bias.data_ptr<acc_t>();
_Pragma("omp parallel")
  {
    // The dispatcher's thread-local state does not reach OpenMP workers: stay below
    // autograd and outside autocast here too.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    c10::impl::ExcludeDispatchKeyGuard no_autocast_here(c10::DispatchKeySet({c10::DispatchKey::AutocastCPU}));
    auto buf = at::empty({rows * nb_max}, xc.options());
    std::vector<key_t<acc_t>> key(nb_max);
    std::vector<Entry<acc_t>> sel(k);
    Candidates<key_t<acc_t>> cand(k, nb_max);
_Pragma("omp for schedule(dynamic, 1)")
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t r0 = t * rows, nr = std::min(rows, B - r0);
      auto xt = xc.narrow(0, r0, nr);
      for (int64_t f0 = 0; f0 < d_sae; f0 += block) {
        const int64_t nb = std::min(block, d_sae - f0);
        auto pre = buf.narrow(0, 0, nr * nb).view({nr, nb});
        at::mm_out(pre, xt, W.narrow(1, f0, nb));  // [nr, nb], strided view of W
        merge_block<acc_t>(pre.data_ptr<acc_t>(), bias_ptr + f0, nr, nb, f0, k, heaps + r0 * k, sizes + r0,
                           key.data(), sel.data(), cand, nb == d_sae);
      }
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> encode_topk_cpu(const at::Tensor& x, const at::Tensor& W_enc,
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
  auto values = at::empty({B, k}, x.options());
  auto indices = at::empty({B, k}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "encode_topk_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;  // the GEMM's and the ranking's dtype
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    // x - b_dec in the input dtype, then (bf16/fp16 only) widened for the fp32 GEMM; W_enc is
    // widened once per call (one fp32 copy; fp32/fp64 use the tensor, strided, as it is).
    auto xc = (x - b_dec).to(acc_dtype).contiguous();  // [B, d_in]
    auto W = W_enc.scalar_type() == acc_dtype ? W_enc : W_enc.to(acc_dtype).contiguous();  // [d_in, d_sae]
    auto bias = b_enc.to(acc_dtype).contiguous();  // [d_sae]
    std::vector<Entry<acc_t>> heaps(B * k);
    std::vector<int64_t> sizes(B, 0);
    if (block >= d_sae) encode_whole_rows<acc_t>(xc, W, bias, k, heaps.data(), sizes.data());
    else encode_blocked<acc_t>(xc, W, bias, k, block, heaps.data(), sizes.data());
    scalar_t* vout = values.data_ptr<scalar_t>();
    int64_t* iout = indices.data_ptr<int64_t>();
_Pragma("omp parallel for schedule(static)")
    for (int64_t b = 0; b < B; ++b) {
      write_sorted<acc_t, scalar_t>(heaps.data() + b * k, k, vout + b * k, iout + b * k);
    }
  });
  return {values, indices};
}

}  // namespace sae_fast

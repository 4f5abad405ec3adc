// Reused memory for the kernels' large outputs (the backward's dW_enc and dW_dec). A training
// step allocates each gradient anew and frees it at the next zero_grad(set_to_none=True);
// glibc may hand such blocks back to the kernel and map them again, and then a step pays a
// page fault per 4 KiB page of every gradient (the backward alone, called in a loop at
// d_in=384, d_sae=12288: ~11 ms of its 30 ms on this machine). Freed blocks are kept here by size and handed out again, and
// blocks of 2 MiB or more are aligned for and advised to use huge pages (fewer TLB misses
// in the backward's strided stores). Values never depend on it: every element is written.
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include <sys/mman.h>

#include "kernels.h"

namespace sae_fast {

namespace {

constexpr size_t kMinPooled = size_t(1) << 20;  // smaller outputs: plain at::empty
constexpr size_t kHuge = size_t(1) << 21;
constexpr size_t kKeepPerSize = 8;  // free blocks kept per size: dW_enc and dW_dec of up to 4 SAEs trained together

struct Pool {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free;  // bytes -> blocks

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto it = free.find(bytes);
      if (it != free.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        return p;
      }
    }
    void* p = nullptr;
    if (posix_memalign(&p, bytes >= kHuge ? kHuge : 64, bytes) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (bytes >= kHuge) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
  }

  void give(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex);
    auto& blocks = free[bytes];
    if (blocks.size() < kKeepPerSize) blocks.push_back(p);
    else std::free(p);
  }

  size_t release() {
    std::lock_guard<std::mutex> lock(mutex);
    size_t bytes = 0;
    for (auto& [size, blocks] : free) {
      for (void* p : blocks) std::free(p);
      bytes += size * blocks.size();
      blocks.clear();
    }
    return bytes;
  }
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: tensors may be freed after static destructors ran
  return *p;
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (bytes < kMinPooled) return at::empty(sizes, options);
  void* p = pool().take(bytes);
  return at::from_blob(p, sizes, [bytes](void* q) { pool().give(q, bytes); }, options);
}

int64_t release_pooled_blocks() { return static_cast<int64_t>(pool().release()); }

}  // namespace sae_fast

// Argument checks shared by every entry point: each failure is a Python exception
// (c10::Error -> RuntimeError) with a message naming the argument and what was expected.
#pragma once
#include <torch/extension.h>

#define SAE_CHECK_CPU(x) TORCH_CHECK((x).device().is_cpu(), #x " must be a CPU tensor, got ", (x).device())
#define SAE_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define SAE_CHECK_DIM(x, n) TORCH_CHECK((x).dim() == (n), #x " must have ", (n), " dims, got shape ", (x).sizes())
#define SAE_CHECK_DTYPE(x, dt) TORCH_CHECK((x).scalar_type() == (dt), #x " must have dtype ", (dt), ", got ", (x).scalar_type())
#define SAE_CHECK_SAME_DTYPE(x, y) TORCH_CHECK((x).scalar_type() == (y).scalar_type(), #x " and " #y " must have the same dtype, got ", (x).scalar_type(), " and ", (y).scalar_type())

namespace sae_fast {

// Every index must address a feature: 0 <= i < d_sae. One pass over B*k int64s (aminmax,
// not min() then max(): the check runs in every op of a step).
inline void check_index_range(const at::Tensor& indices, int64_t d_sae) {
  if (indices.numel() == 0) return;
  const auto [min_t, max_t] = at::aminmax(indices);
  const int64_t lo = min_t.item<int64_t>();
  const int64_t hi = max_t.item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < d_sae, "indices must be in [0, ", d_sae, "), got range [", lo, ", ", hi, "]");
}

}  // namespace sae_fast

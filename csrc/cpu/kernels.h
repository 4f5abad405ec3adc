// Declarations of the CPU kernels (one .cpp each), bound in csrc/bindings.cpp.
#pragma once
#include <torch/extension.h>

namespace sae_fast {

// recon[b] = sum_j values[b, j] * W_dec[indices[b, j]] + b_dec   -> [B, d_in]
at::Tensor sparse_decode_cpu(const at::Tensor& values, const at::Tensor& indices,
                             const at::Tensor& W_dec, const at::Tensor& b_dec);

}  // namespace sae_fast

// torch.library CUDA implementations of grad_values and feature_reduce, wrapping the raw
// launchers of sparse_backward.cu on torch's current stream. Built only when torch has CUDA
// (setup.py adds csrc/cuda/*.cpp then), where the c10/cuda headers exist.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "../checks.h"
#include "launchers.h"

namespace sae_fast {
namespace {

#define SAE_CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor, got ", (x).device())

cuda::DType dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    case at::kHalf: return cuda::DType::kFloat16;
    default: TORCH_CHECK(false, "CUDA sparse backward supports float32/bfloat16/float16, got ", t.scalar_type());
  }
}

void check_launch() {
  const char* err = cuda::last_error();
  TORCH_CHECK(err == nullptr, "CUDA kernel launch failed: ", err);
}

at::Tensor grad_values_cuda(const at::Tensor& grad, const at::Tensor& indices, const at::Tensor& W_dec) {
  SAE_CHECK_CUDA(grad); SAE_CHECK_CUDA(indices); SAE_CHECK_CUDA(W_dec);
  SAE_CHECK_DIM(grad, 2); SAE_CHECK_DIM(indices, 2); SAE_CHECK_DIM(W_dec, 2);
  SAE_CHECK_DTYPE(indices, at::kLong); SAE_CHECK_SAME_DTYPE(grad, W_dec);
  const int64_t B = indices.size(0), k = indices.size(1), D = W_dec.size(1);
  TORCH_CHECK(grad.size(0) == B && grad.size(1) == D, "grad must have shape [", B, ", ", D, "], got ", grad.sizes());
  check_index_range(indices, W_dec.size(0));
  const c10::cuda::CUDAGuard guard(grad.device());
  auto g = grad.contiguous(); auto i = indices.contiguous(); auto w = W_dec.contiguous();
  auto dv = at::empty({B, k}, g.options().dtype(at::kFloat));
  cuda::grad_values(g.data_ptr(), i.data_ptr<int64_t>(), w.data_ptr(), dtype_code(w), dv.data_ptr<float>(), B,
                    k, D, c10::cuda::getCurrentCUDAStream().stream());
  check_launch();
  return dv;
}

std::tuple<at::Tensor, at::Tensor> feature_reduce_cuda(const at::Tensor& perm, const at::Tensor& offsets,
                                                       const at::Tensor& coef, const at::Tensor& src,
                                                       bool with_sum) {
  SAE_CHECK_CUDA(perm); SAE_CHECK_CUDA(offsets); SAE_CHECK_CUDA(coef); SAE_CHECK_CUDA(src);
  SAE_CHECK_DTYPE(perm, at::kLong); SAE_CHECK_DTYPE(offsets, at::kLong);
  SAE_CHECK_DIM(coef, 2); SAE_CHECK_DIM(src, 2);
  const int64_t B = coef.size(0), k = coef.size(1), D = src.size(1), d_sae = offsets.size(0) - 1;
  TORCH_CHECK(src.size(0) == B, "src must have ", B, " rows, got ", src.size(0));
  TORCH_CHECK(perm.numel() == B * k, "perm must have B*k = ", B * k, " entries, got ", perm.numel());
  check_index_range(perm, B * k);
  const c10::cuda::CUDAGuard guard(src.device());
  auto s = src.contiguous();
  auto c = coef.to(at::kFloat).contiguous();
  auto out = at::empty({d_sae, D}, s.options().dtype(at::kFloat));
  auto sums = at::empty({with_sum ? d_sae : 0}, s.options().dtype(at::kFloat));
  cuda::feature_reduce(perm.contiguous().data_ptr<int64_t>(), offsets.contiguous().data_ptr<int64_t>(),
                       c.data_ptr<float>(), s.data_ptr(), dtype_code(s), out.data_ptr<float>(),
                       with_sum ? sums.data_ptr<float>() : nullptr, d_sae, k, D,
                       c10::cuda::getCurrentCUDAStream().stream());
  check_launch();
  return {out, sums};
}

}  // namespace

TORCH_LIBRARY_IMPL(sae_fast, CUDA, m) {
  m.impl("grad_values", &grad_values_cuda);
  m.impl("feature_reduce", &feature_reduce_cuda);
}

}  // namespace sae_fast

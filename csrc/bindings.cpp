// pybind11 module sae_fast._C plus torch.library registration of the ops under
// torch.ops.sae_fast.* (fake implementations live in sae_fast/ops/native.py). CPU only:
// on GPUs the Triton kernels in sae_fast/ops/ run instead.
#include <torch/extension.h>

#include "cpu/kernels.h"

TORCH_LIBRARY(sae_fast, m) {
  m.def("decode_sparse(Tensor values, Tensor indices, Tensor W_dec, Tensor b_dec) -> Tensor");
  m.def("encode_topk(Tensor x, Tensor W_enc, Tensor b_enc, Tensor b_dec, int k, int block) -> (Tensor, Tensor)");
  m.def("grad_values(Tensor grad, Tensor indices, Tensor W_dec) -> Tensor");
  m.def("feature_segments(Tensor indices, int d_sae) -> (Tensor, Tensor)");
  m.def("feature_reduce(Tensor perm, Tensor offsets, Tensor coef, Tensor src, bool with_sum) -> (Tensor, Tensor)");
  m.def("feature_reduce_cols(Tensor perm, Tensor offsets, Tensor coef, Tensor src, bool with_sum) -> (Tensor, Tensor)");
  m.def("sparse_backward(Tensor grad, Tensor? grad_values, Tensor x, Tensor W_enc, Tensor b_dec, Tensor W_dec, Tensor values, Tensor indices) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sae_fast, CPU, m) {
  m.impl("decode_sparse", &sae_fast::decode_sparse_cpu);
  m.impl("encode_topk", &sae_fast::encode_topk_cpu);
  m.impl("grad_values", &sae_fast::grad_values_cpu);
  m.impl("feature_segments", &sae_fast::feature_segments_cpu);
  m.impl("feature_reduce", &sae_fast::feature_reduce_cpu);
  m.impl("feature_reduce_cols", &sae_fast::feature_reduce_cols_cpu);
  m.impl("sparse_backward", &sae_fast::sparse_backward_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sae_fast native kernels (C++/OpenMP)";
  m.def("openmp_threads", &sae_fast::omp_max_threads, "Threads OpenMP will use (1 without OpenMP)");
  m.def("release_pooled_blocks", &sae_fast::release_pooled_blocks,
        "Free the unused blocks kept for the kernels' large outputs; returns the bytes freed");
}

// pybind11 module sae_fast._C plus torch.library registration of the ops under
// torch.ops.sae_fast.* (fake implementations live in sae_fast/ops/native.py).
#include <torch/extension.h>

#include "cpu/kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {
int openmp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
}  // namespace

TORCH_LIBRARY(sae_fast, m) {
  m.def("sparse_decode(Tensor values, Tensor indices, Tensor W_dec, Tensor b_dec) -> Tensor");
}

TORCH_LIBRARY_IMPL(sae_fast, CPU, m) { m.impl("sparse_decode", &sae_fast::sparse_decode_cpu); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sae_fast native kernels (C++/OpenMP, optional CUDA)";
  m.def("openmp_threads", &openmp_threads, "Threads OpenMP will use (1 without OpenMP)");
#ifdef SAE_FAST_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}

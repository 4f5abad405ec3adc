# ruff: noqa: E501  (the op table below is one row per line)
"""The ops: one math (reference.py) and the kernel sets that implement it.

Each op, where it lives in every implementation, and what tests and times it. Names are
`module.function` under `sae_fast.ops`, `torch.ops.sae_fast.<name>` for the C++ extension
(csrc/cpu/), and test / benchmark files from the project root. `tests/ops/test_op_table.py`
resolves every cell, so the table cannot go stale. An op has one verb everywhere: the
reference function, the Triton function, the C++ op, its `native.py` wrapper and the backend
method (`Backend.encode_topk`, ...) all carry the name in the first column.

| op | reference | Triton | C++ | tests | benchmark |
|---|---|---|---|---|---|
| encode_topk | reference.encode_topk | triton_encoder.encode_topk | encode_topk | tests/ops/test_triton_encoder.py, tests/ops/test_native.py | benchmarks/kernels.py |
| encode_dense | reference.encode_dense | triton_encoder.encode_dense | - | tests/ops/test_triton_encoder.py, tests/ops/test_reference.py | benchmarks/kernels.py |
| pre_activations | reference.pre_activations | triton_encoder.pre_activations | - | tests/ops/test_backends.py, tests/ops/test_reference.py | benchmarks/kernels.py |
| decode_sparse | reference.decode_sparse | triton_decoder.decode_sparse | decode_sparse | tests/ops/test_triton_decoder.py, tests/ops/test_native.py | benchmarks/kernels.py |
| grad_values | reference.topk_backward | triton_decoder.grad_values | grad_values | tests/ops/test_triton_decoder.py, tests/ops/test_native.py | benchmarks/kernels.py |
| feature_reduce | reference.topk_backward | triton_decoder.feature_reduce | feature_reduce | tests/ops/test_triton_decoder.py, tests/ops/test_native.py | benchmarks/kernels.py |
| sparse_backward | reference.topk_backward | triton_backward.sparse_backward | sparse_backward | tests/ops/test_triton_backward.py, tests/ops/test_native_backward.py | benchmarks/cpu_step.py |
| topk_sae | reference.encode_topk | autograd.register_sparse_ops | - | tests/ops/test_backends.py, tests/ops/test_properties.py | benchmarks/train.py |

JumpReLU's straight-through estimators (`reference.jumprelu_ste`, `reference.step_l0`) are
elementwise torch on every backend, over the backend's `pre_activations` (the one GEMM).

`autograd.register_sparse_ops` wraps a kernel set (`native_backend.NativeKernels`,
`triton_backend.TritonKernels`) into differentiable custom ops named
`sae_fast::<prefix>_encode_topk`, `_decode_sparse` and `_topk_sae`; `dispatch.get_backend`
picks the set for a device ("auto": Triton on CUDA, native on CPU, else the reference).
"""

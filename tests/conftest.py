"""Test setup: without a GPU, Triton kernels run in the CPU interpreter.

TRITON_INTERPRET must be set before any module defining `@triton.jit` kernels is imported,
so it is set here, at collection time.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"

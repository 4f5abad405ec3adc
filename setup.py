"""Build of the native extension `sae_fast._C`.

The extension holds the C++ (OpenMP) CPU kernels only; on GPUs the Triton kernels in
`sae_fast/ops/` run instead, so nothing here needs a CUDA toolkit. Any problem (no compiler,
no torch) is a warning and a pure-Python install, never a failed one: the package then runs
on its torch backend (`SAE_FAST_REQUIRE_EXT=1` makes it an error). `MAX_JOBS` is honoured by
torch's ninja build.
"""

from __future__ import annotations

import glob
import os
import sys
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extensions() -> tuple[list, dict]:
    if os.environ.get("SAE_FAST_SKIP_EXT") == "1":
        warnings.warn("SAE_FAST_SKIP_EXT=1: building without sae_fast._C", stacklevel=1)
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        warnings.warn("torch is not installed: building without sae_fast._C", stacklevel=1)
        return [], {}

    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cxx_flags = ["-O3", "-std=c++17"]
    link_flags: list[str] = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    # The extension is compiled where it is installed, so it may use that CPU's vector units
    # (AVX2/AVX-512 for the gather, axpy and selection loops); SAE_FAST_PORTABLE=1 builds
    # for the baseline ISA instead, e.g. for a wheel that must run on other machines.
    if os.environ.get("SAE_FAST_PORTABLE") != "1" and not sys.platform.startswith("darwin"):
        cxx_flags.append("-march=native")

    ext = CppExtension(
        "sae_fast._C",
        sources,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )
    base = BuildExtension.with_options(use_ninja=True)

    class TolerantBuildExt(base):
        """A compile failure becomes a warning and a pure-Python install (torch backend)."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as err:
                if os.environ.get("SAE_FAST_REQUIRE_EXT") == "1":
                    raise
                warnings.warn(
                    f"building sae_fast._C failed ({err}); installing without it", stacklevel=1
                )

    return [ext], {"build_ext": TolerantBuildExt}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

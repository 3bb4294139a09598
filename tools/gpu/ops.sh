#!/usr/bin/env bash
# The native ops (atom._C) on the GPU machine, from the repo root (run by the lead on the H100;
# about 2-4 minutes on a cold machine, most of it the nvcc build and torch.compile):
#   1. build: pip install -e . against the machine's torch (CUDA or ROCm kernels picked from it;
#      build outputs kept in build/, so a warm machine only recompiles what changed);
#   2. tests: every native-op test, the gpu-marked ones included (kernels vs torch references,
#      opcheck and torch.compile on CUDA, CUDA-graph replay, registration);
#   3. tools/bench_ops.py: GB/s per op vs a same-bytes copy and vs eager / compiled torch, with
#      the issue's targets checked (PASS/FAIL lines).
# Results: a table on stdout; JSON in benchmarks/results/ and in "$OUT" when set. Extra arguments
# go to the benchmark (e.g. --no-compile, --ops rms_norm).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
status=0

if compgen -G ".whl/*.whl" >/dev/null; then  # wheels carried to a machine without network
  python -m pip install -q --no-index --no-deps --no-compile .whl/*.whl || status=$?
fi
start=$(date +%s)
python -m pip install -q --no-build-isolation --no-deps --no-index -e . || exit 1
echo "build: $(($(date +%s) - start)) s"
python - <<'PY' || exit 1
import torch
import atom._C as ext
print(f"atom._C: gpu_backend={ext.gpu_backend!r} archs={ext.gpu_archs!r}; torch {torch.__version__}")
assert ext.gpu_backend, "atom._C was built without GPU kernels: is this torch a CUDA/ROCm build?"
PY

python -m pytest -q -p no:cacheprovider --maxfail=20 \
    tests/kernels/test_native_norm_act.py tests/kernels/test_native_rope_cache.py \
    tests/kernels/test_native_opcheck.py tests/build/test_extension.py \
    || status=$?
python tools/bench_ops.py "$@" || status=$?
exit $status

#!/usr/bin/env bash
# The native ops (atom._C) on the GPU machine, from the repo root (run by the lead on the H100;
# about 2-2.5 minutes on a cold machine, most of it the nvcc build and torch.compile):
#   1. build: pip install -e . against the machine's torch (CUDA or ROCm kernels picked from it;
#      build outputs kept in build/, so a warm machine only recompiles what changed);
#   2. tools/gpu/error_probe.py, first after the build: do C++ errors thrown from extensions built
#      here reach Python (each case in its own interpreter; a probe extension built both with a
#      plain compiler command and with atom._C's exact CMake flags; atom._C's own error paths);
#   3. tests, the CPU-device ones and the gpu-marked ones in separate pytest processes, so that a
#      crash in one cannot hide the other's results (kernels vs torch references, opcheck and
#      torch.compile on CUDA, CUDA-graph replay, registration, bad inputs -> ValueError);
#   4. tools/gpu/norm_sweep.cu (NVIDIA only): the RMSNorm block-shape sweep vs copy bandwidth;
#   5. tools/bench_ops.py: GB/s per op vs a same-bytes copy and vs eager / compiled torch, with
#      the issue's targets checked (PASS/FAIL lines).
# Every step after the build runs whatever the earlier ones returned; the exit status is the
# first failure. Results: tables on stdout; JSON in benchmarks/results/ and in "$OUT" when set.
# Extra arguments go to the benchmark (e.g. --no-compile, --ops rms_norm).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
status=0
t0=$(date +%s)
step() { echo; echo "== $1 ($(($(date +%s) - t0)) s)"; }
record() { local rc=$1; [[ $rc -ne 0 && $status -eq 0 ]] && status=$rc; return 0; }

if compgen -G ".whl/*.whl" >/dev/null; then  # wheels carried to a machine without network
  python -m pip install -q --no-index --no-deps --no-compile .whl/*.whl; record $?
fi
step "build"
python -m pip install -q --no-build-isolation --no-deps --no-index -e . || exit 1
python - <<'PY' || exit 1
import torch
import atom._C as ext
print(f"atom._C: gpu_backend={ext.gpu_backend!r} archs={ext.gpu_archs!r}; torch {torch.__version__}")
assert ext.gpu_backend, "atom._C was built without GPU kernels: is this torch a CUDA/ROCm build?"
PY

step "error probe"
python tools/gpu/error_probe.py; record $?

TESTS=(tests/kernels/test_native_norm_act.py tests/kernels/test_native_rope_cache.py
       tests/kernels/test_native_opcheck.py tests/kernels/test_native_checks.py
       tests/build/test_extension.py)
step "tests: CPU device"
python -m pytest -q -p no:cacheprovider -m "not gpu" -rfE "${TESTS[@]}"; record $?
step "tests: GPU"
python -m pytest -q -p no:cacheprovider -m gpu -rfE --durations=5 "${TESTS[@]}"; record $?

if command -v nvcc >/dev/null && python -c "import torch, sys; sys.exit(not torch.version.cuda)"; then
  step "RMSNorm block-shape sweep"
  mkdir -p build
  if nvcc -std=c++17 -O3 -arch=native -I csrc tools/gpu/norm_sweep.cu -o build/norm_sweep; then
    build/norm_sweep "${OUT:-build}/norm_sweep.json"; record $?
  else
    record 1
  fi
fi

step "benchmark"
python tools/bench_ops.py "$@"; record $?
step "done, exit status $status"
exit $status

#!/usr/bin/env bash
# MoE on the GPU (run by the lead on the H100; a few minutes, Triton compiles included):
#   1. the GPU kernel tests (Qwen3-30B-A3B expert shapes, CUDA-graph capture) and the CPU-suite
#      MoE tests, which on a GPU also run the Triton kernel against transformers' MoE blocks;
#   2. tools/bench_moe.py: Triton vs torch reference vs the weight-read bound, T = 1..256.
# Results: a table on stdout; JSON in benchmarks/results/ and in "$OUT" when set.
# Extra arguments go to the benchmark (e.g. --tokens 1 8 64 512).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
status=0
python -m pytest -q -p no:cacheprovider \
    tests/kernels/test_moe_kernel.py tests/layers/test_moe_router.py tests/layers/test_moe_layer.py \
    || status=$?
python tools/bench_moe.py "$@" || status=$?
exit $status

#!/usr/bin/env bash
# Paged attention on the GPU (run by the lead on the H100; about 3-5 minutes, Triton compiles
# included):
#   1. the GPU tests at realistic sizes (Llama-3-8B / GPT-OSS shapes, fp8, fp32, d80/d256,
#      CUDA-graph replay) and the CPU-suite attention tests, which on a GPU compile every
#      masking/split/window/sink variant of the kernels;
#   2. tools/bench_attention.py: decode GB/s vs copy bandwidth, prefill vs torch SDPA, config sweep.
# Results: a table on stdout (the WINNERS line names the best configs); JSON in benchmarks/results/
# and in "$OUT" when set. Extra arguments go to the benchmark.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
status=0
python -m pytest -q -p no:cacheprovider --maxfail=10 \
    tests/kernels/test_triton_attention_gpu.py tests/kernels/test_triton_attention.py \
    || status=$?
python tools/bench_attention.py "$@" || status=$?
exit $status

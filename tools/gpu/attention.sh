#!/usr/bin/env bash
# Paged attention on the GPU (run by the lead on the H100; about 4-6 minutes, Triton compiles
# included; `--bench-only` skips step 1, about 2 minutes):
#   1. the GPU tests at realistic sizes (Llama-3-8B / GPT-OSS shapes, fp8, fp32, d80/d256,
#      CUDA-graph replay) and the CPU-suite attention tests, which on a GPU compile every
#      masking/split/window/sink variant of the kernels;
#   2. tools/bench_attention.py: decode GB/s vs copy bandwidth, prefill vs torch SDPA, config sweep.
# Results: a table on stdout (the WINNERS line names the best configs); JSON in benchmarks/results/
# and in "$OUT" when set. Other arguments go to the benchmark.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
status=0
if [[ "${1:-}" == "--bench-only" ]]; then
    shift
else
    python -m pytest -q -p no:cacheprovider --maxfail=10 \
        tests/kernels/test_triton_attention_gpu.py tests/kernels/test_triton_attention.py \
        || status=$?
fi
python tools/bench_attention.py "$@" || status=$?
exit $status

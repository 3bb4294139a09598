#!/usr/bin/env bash
# The engine on the GPU (run by the lead on the H100; about 3-5 minutes):
#   1. tests/engine/test_engine_gpu.py: LLMEngine on CUDA, greedy fp32 == transformers on the same
#      GPU (tiny and SmolLM2-shaped random Llamas), scheduling invariance (batch / prefix cache /
#      preemption / chunked prefill), seeded sampling, KV cache sized from gpu_memory_utilization,
#      bf16 with bf16 and fp8 KV caches;
#   2. tools/bench_engine_gpu.py: fp32 correctness summary and bf16 throughput vs HF generate.
# Results: a table on stdout; JSON in benchmarks/results/engine_gpu.json and in "$OUT" when set.
# Extra arguments go to the benchmark.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
status=0
python -m pytest -q -p no:cacheprovider --maxfail=10 tests/engine/test_engine_gpu.py || status=$?
python tools/bench_engine_gpu.py "$@" || status=$?
exit $status

#!/usr/bin/env bash
# The model zoo on the GPU (run by the lead on the H100; about 3-5 minutes, Triton compiles and
# the dummy weights of the benchmark included):
#   1. the GPU tests of Qwen3, Qwen3-MoE, GLM-4-MoE and GPT-OSS on tiny random checkpoints:
#      fp32 logits over the paged cache == transformers on the same GPU (TF32 tolerance), LLMEngine
#      fp32 greedy == transformers (a divergence only at an HF near-tie), bf16 logits on average
#      at most 3x as far from fp32 transformers as bf16 transformers is; then the CPU-suite tests
#      of the same files, on the CPU (MXFP4 loading, layouts, loader errors);
#   2. tools/bench_zoo_gpu.py: Qwen3-30B-A3B-shaped decode tokens/s at batch 1 and 64 (dummy
#      weights, 8 of 48 layers unless --moe-layers says otherwise) and the Qwen3-0.6B-shaped
#      offline throughput (256 requests, lengths uniform in 100..1024).
# Results: a table on stdout; JSON in benchmarks/results/zoo_gpu.json and in "$OUT" when set.
# Extra arguments go to the benchmark.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
TESTS="tests/models/test_qwen3.py tests/models/test_qwen3_moe.py tests/models/test_glm4_moe.py
       tests/models/test_gpt_oss.py tests/models/test_gpt_oss_mxfp4.py"
status=0
# shellcheck disable=SC2086
python -m pytest -q -p no:cacheprovider -m gpu $TESTS || status=$?
# The CPU tests compare on the CPU: keep the engine there too (its device follows the platform).
# shellcheck disable=SC2086
CUDA_VISIBLE_DEVICES= python -m pytest -q -p no:cacheprovider -m "not gpu" $TESTS || status=$?
python tools/bench_zoo_gpu.py "$@" || status=$?
exit $status

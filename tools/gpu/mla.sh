#!/usr/bin/env bash
# MLA (DeepSeek-V3 / Kimi-K2) on the GPU (run by the lead on the H100; about 3-5 minutes, Triton
# compiles included):
#   1. the MLA kernel tests, which on a GPU run the Triton decode and cache-write kernels on every
#      awkward shape of the CPU suite plus DeepSeek-V3 shapes (128 heads, L 512, R 64; bf16 and
#      fp8 caches), the fp8 cache write and a CUDA-graph capture/replay;
#   2. the DeepseekV3ForCausalLM tests: the CPU comparisons with transformers, and on the GPU the
#      tiny model in fp32 (tight) and bf16 (within 2x transformers' own bf16 error);
#   3. tools/bench_mla.py: MLA decode at batch 64, context 4096 vs copy bandwidth (bytes = latent
#      cache read), config and split sweeps, fp8 cache, other batch sizes, torch baseline.
# Results: a table on stdout (the WINNER line names the best config); JSON in benchmarks/results/
# and in "$OUT" when set. Extra arguments go to the benchmark.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
status=0
python -m pytest -q -p no:cacheprovider --maxfail=10 \
    tests/kernels/test_mla_decode.py tests/models/test_deepseek_v3.py \
    tests/models/test_deepseek_v3_config.py \
    || status=$?
python tools/bench_mla.py "$@" || status=$?
exit $status

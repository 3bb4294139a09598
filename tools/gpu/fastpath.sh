#!/usr/bin/env bash
# The engine's GPU fast path (run by the lead on the H100; estimated 7-10 minutes on a cold
# machine, most of it torch.compile of the engines and Hugging Face generate; see PHASES below):
#   1. build: pip install -e . against the machine's torch (incremental on a warm machine);
#   2. tests/engine/test_cuda_graph_gpu.py: graph replay == the captured step run eagerly (bit
#      for bit), levels 1/2/3 give plain eager's greedy tokens, every architecture captures,
#      one host-device sync per decode step, capture failure falls back to eager;
#   3. tools/bench_decode.py: single-stream decode (Llama-3-8B and SmolLM2-135M shapes, dummy
#      bf16 weights, 128 prompt + 256 new tokens) at levels 0 (eager), 1 (graphs) and 3
#      (torch.compile + graphs) vs HF generate vs the copy-bandwidth bound, with the issue's
#      targets (PASS/MISS);
#   4. tools/bench_offline_throughput.py: 256 requests, lengths uniform 100..1024 (seed 0),
#      SmolLM2-135M and Llama-3-8B shapes, ATOM level 3 vs an HF static batch.
# Results: tables on stdout; JSON in benchmarks/results/ and in "$OUT" when set.
# Knobs: PHASES (default "build tests decode offline"; e.g. PHASES="build tests decode" then
# PHASES="offline" in a second call on the warm machine, whose inductor/Triton caches make the
# second compiles faster), DECODE_ARGS="...", OFFLINE_ARGS="..." (extra arguments of the two
# benchmarks, e.g. DECODE_ARGS="--levels 1 3 --no-hf").
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export TOKENIZERS_PARALLELISM=false
PHASES=${PHASES:-build tests decode offline}
status=0
start=$(date +%s)
stamp() { echo "--- $1 ($(( $(date +%s) - start )) s)"; }
want() { [[ " $PHASES " == *" $1 "* ]]; }

if want build; then
  if compgen -G ".whl/*.whl" >/dev/null; then  # wheels carried to a machine without network
    python -m pip install -q --no-index --no-deps --no-compile .whl/*.whl || status=$?
  fi
  python -m pip install -q --no-build-isolation --no-deps --no-index -e . || exit 1
  stamp "built"
fi
python - <<'PY' || exit 1
import torch
import atom.kernels  # noqa: F401  (registers the backends)
from atom.kernels import registry
print("torch", torch.__version__, "on", torch.cuda.get_device_name())
for op in ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "fused_qk_norm_rope_cache",
           "paged_attention"):
    print(f"  {op} on cuda: {registry.pick(op, 'cuda').__module__}")
PY

if want tests; then
  python -m pytest -q -p no:cacheprovider --maxfail=10 tests/engine/test_cuda_graph_gpu.py \
      || status=$?
  stamp "tests"
fi
if want decode; then
  python tools/bench_decode.py ${DECODE_ARGS:-} || status=$?
  stamp "single-stream decode"
fi
if want offline; then
  python tools/bench_offline_throughput.py ${OFFLINE_ARGS:-} || status=$?
  stamp "offline throughput"
fi
exit $status

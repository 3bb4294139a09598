#!/usr/bin/env bash
# The OpenAI server under benchmark_serving on the GPU (run by the lead on the H100; about 3-6
# minutes, most of it engine start-up and the concurrency-64 run):
#   1. a Meta-Llama-3-8B-shaped model folder with dummy weights (--load_dummy): its exact config
#      (vocab 128256) and a tokenizer built on the spot: the small byte-level BPE test tokenizer of
#      atom.engine.testing padded with plain added tokens up to 128256 ids, so every id the random
#      weights produce decodes to text (nothing is downloaded; the embedded GGUF does not travel);
#   2. python -m atom.entrypoints.openai_server with it, bf16, waiting for /health;
#   3. python -m atom.benchmarks.benchmark_serving, random 1024 in / 128 out, --ignore-eos, at
#      concurrency 1, 16 and 64 (4 x concurrency prompts each, at least 8).
# Results: a TTFT / TPOT / throughput table on stdout; one result JSON per concurrency plus a
# summary (serving_llama3_8b.json) in benchmarks/results/ and in "$OUT" when set.
# Missing packages (fastapi, uvicorn, pydantic, aiohttp, prometheus-client, ...) come from .whl/
# when present (../shared/tools/device-wheels). Environment knobs:
#   SERVER_ARGS   extra server/engine flags (e.g. "--enforce-eager --level 0")
#   CONCURRENCIES default "1 16 64";  INPUT_LEN 1024;  OUTPUT_LEN 128;  PORT 8000
#   STARTUP_TIMEOUT seconds to wait for /health (default 420); RUN_TIMEOUT per run (default 240)
#   SHAPE=tiny    a 2-layer model of the same vocabulary, to dry-run this script on a CPU
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
export PYTHONPATH="$REPO/python${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
CONCURRENCIES=${CONCURRENCIES:-"1 16 64"}
INPUT_LEN=${INPUT_LEN:-1024}
OUTPUT_LEN=${OUTPUT_LEN:-128}
PORT=${PORT:-8000}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-420}
RUN_TIMEOUT=${RUN_TIMEOUT:-240}
NAME=llama3-8b-dummy
WORK=${WORK:-/tmp/atom_serving}
RESULTS="$REPO/benchmarks/results"
mkdir -p "$WORK" "$RESULTS"

if compgen -G ".whl/*.whl" >/dev/null; then  # wheels carried to a machine without network
  python -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
fi
python -c "import fastapi, uvicorn, pydantic, aiohttp, prometheus_client" || {
  echo "missing server packages: carry wheels in .whl/ (see the header)"; exit 1; }

# 1. The model folder (kept across calls on a warm machine).
MODEL_DIR="$WORK/$NAME"
SHAPE=${SHAPE:-llama3-8b}
PREFIX=serving_llama3_8b
[[ $SHAPE == tiny ]] && MODEL_DIR="$WORK/$NAME-tiny" && PREFIX=serving_tiny_dryrun
python - "$MODEL_DIR" "$SHAPE" <<'PY' || exit 1
import json, sys, time
from pathlib import Path

from transformers import AutoTokenizer

from atom.engine.testing import write_test_tokenizer

folder = Path(sys.argv[1])
LLAMA3_8B = {  # meta-llama/Meta-Llama-3-8B config.json, token ids moved to the tokenizer's
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16", "dtype": "bfloat16",
}
if sys.argv[2] == "tiny":
    LLAMA3_8B.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16)
if (folder / "config.json").exists() and json.loads((folder / "config.json").read_text()) == LLAMA3_8B:
    print(f"model folder ready: {folder}")
    sys.exit(0)
start = time.time()
write_test_tokenizer(folder)
tok = AutoTokenizer.from_pretrained(folder)
# Plain (non-special) tokens up to the model's vocabulary, so every id decodes to some text.
tok.add_tokens([f"<t{i}>" for i in range(len(tok), LLAMA3_8B["vocab_size"])])
assert len(tok) == LLAMA3_8B["vocab_size"], len(tok)
tok.save_pretrained(folder)
(folder / "config.json").write_text(json.dumps(LLAMA3_8B, indent=2))
print(f"model folder written in {time.time() - start:.1f} s: {folder}")
PY

# 2. The server.
LOG="$WORK/server.log"
python -m atom.entrypoints.openai_server --model "$MODEL_DIR" --load_dummy \
    --served-model-name "$NAME" --host 127.0.0.1 --server-port "$PORT" \
    --max-model-len 4096 --uvicorn-log-level warning ${SERVER_ARGS:-} >"$LOG" 2>&1 &
SERVER_PID=$!
cleanup() { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; }
trap cleanup EXIT
start=$(date +%s)
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null || (( $(date +%s) - start > STARTUP_TIMEOUT )); then
    echo "the server did not come up; its log:"; tail -n 60 "$LOG"
    [[ -n "${OUT:-}" ]] && cp "$LOG" "$OUT/"
    exit 1
  fi
  sleep 2
done
echo "server up in $(( $(date +%s) - start )) s"
curl -s "http://127.0.0.1:$PORT/health"; echo

# 3. The benchmark runs.
status=0
files=()
for c in $CONCURRENCIES; do
  n=$(( c * 4 > 8 ? c * 4 : 8 ))
  file="${PREFIX}_c${c}.json"
  echo "=== concurrency $c: $n prompts, $INPUT_LEN in / $OUTPUT_LEN out ==="
  timeout "$RUN_TIMEOUT" python -m atom.benchmarks.benchmark_serving --backend vllm \
      --model "$NAME" --tokenizer "$MODEL_DIR" --base-url "http://127.0.0.1:$PORT" \
      --dataset-name random --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN" \
      --num-prompts "$n" --max-concurrency "$c" --request-rate inf --ignore-eos \
      --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99 --disable-tqdm \
      --save-result --result-dir "$RESULTS" --result-filename "$file" \
      --metadata "gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' _)" "shape=$SHAPE" \
      || { status=$?; echo "concurrency $c failed (exit $status)"; continue; }
  files+=("$RESULTS/$file")
done
grep -E "Traceback|Error" "$LOG" | tail -n 5

# The table and the summary JSON.
python - "$RESULTS/$PREFIX.json" "${files[@]}" <<'PY'
import json, sys
summary_path, paths = sys.argv[1], sys.argv[2:]
rows = []
for p in paths:
    r = json.load(open(p))
    rows.append({k: r.get(k) for k in (
        "max_concurrency", "num_prompts", "completed", "failed", "duration", "request_throughput",
        "output_throughput", "total_token_throughput", "mean_ttft_ms", "p99_ttft_ms",
        "mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "mean_e2el_ms", "gpu", "shape")})
head = f"{'conc':>5} {'done':>5} {'req/s':>7} {'out tok/s':>10} {'TTFT ms':>9} {'p99':>8} {'TPOT ms':>8} {'p99':>7} {'ITL ms':>7}"
print(head)
for r in rows:
    print(f"{r['max_concurrency']:>5} {r['completed']:>5} {r['request_throughput']:>7.2f} "
          f"{r['output_throughput']:>10.1f} {r['mean_ttft_ms']:>9.1f} {r['p99_ttft_ms']:>8.1f} "
          f"{r['mean_tpot_ms']:>8.2f} {r['p99_tpot_ms']:>7.2f} {r['mean_itl_ms']:>7.2f}")
import datetime, os, torch
json.dump({"model": "Meta-Llama-3-8B shape, dummy weights, bf16",
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "server_args": os.environ.get("SERVER_ARGS", ""), "runs": rows},
          open(summary_path, "w"), indent=2)
PY
if [[ -n "${OUT:-}" ]]; then
  cp "$RESULTS"/"$PREFIX"*.json "$OUT/" 2>/dev/null
  cp "$LOG" "$OUT/serving_server.log"
fi
exit $status

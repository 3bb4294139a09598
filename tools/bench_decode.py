"""Single-stream decode on the GPU: ATOM at several --level settings vs Hugging Face ``generate``
vs the bandwidth bound, on Llama-3-8B and SmolLM2-135M shapes with dummy bf16 weights.

    PYTHONPATH=python python tools/bench_decode.py [--shapes llama3-8b smollm2-135m]
        [--levels 0 1 3] [--prompt-len 128] [--new-tokens 256] [--no-hf]
    PYTHONPATH=python python tools/bench_decode.py --dry-run     (tiny shape on the CPU)

Per shape: a model folder with the shape's config.json and a word-level tokenizer covering the
whole vocabulary (nothing is downloaded; prompts are token ids); ATOM with --load_dummy at each
level (startup time = engine construction, compile and graph capture included); one request of
``--prompt-len`` random tokens, ``--new-tokens`` new tokens, greedy, EOS ignored; best of
``--repeats``. Decode tokens/s = 1 / TPOT (the prefill excluded); end-to-end = new tokens /
latency. HF: the same shape with random bf16 weights on the GPU, ``generate`` greedy, batch 1.
Bound: bytes one decode step reads (every weight once except the embedding table, of which one
row; plus the KV cache at the mean context) / device copy bandwidth (2 x bytes / time of a
1 GiB device-to-device copy).
Results: a table; JSON in benchmarks/results/ (and $OUT when set). bench_offline_throughput.py
reuses the helpers of this file.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import result_paths, write_json  # noqa: E402

_COMMON = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}  # fmt: skip
SHAPES = {
    # meta-llama/Meta-Llama-3-8B
    "llama3-8b": {
        **_COMMON, "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": False,
    },
    # HuggingFaceTB/SmolLM2-135M(-Instruct)
    "smollm2-135m": {
        **_COMMON, "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "head_dim": 64, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "tie_word_embeddings": True,
    },
    # --dry-run: a 2-layer model that runs in seconds on a CPU
    "tiny": {
        **_COMMON, "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": True,
    },
}  # fmt: skip
TARGETS = {"llama3-8b": 180.0, "smollm2-135m": 1500.0}  # decode tokens/s (the issue's)


# --- helpers shared with bench_offline_throughput.py -------------------------------------------
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def write_model_folder(root: Path, shape: str) -> Path:
    """config.json of the shape and a tokenizer for its whole vocabulary (write_vocab_tokenizer).
    Reused when already written."""
    config = SHAPES[shape]
    folder = root / shape
    config_file = folder / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()) == config:
        return folder
    write_vocab_tokenizer(folder, config["vocab_size"])
    config_file.write_text(json.dumps(config, indent=2))
    return folder


def write_vocab_tokenizer(folder: Path, vocab_size: int) -> Path:
    """A word-level tokenizer whose token i is "t{i}" for every id below vocab_size, so that
    whatever dummy weights generate decodes (an id outside a tokenizer's vocabulary takes the
    decoder's error path: ~40 us per token instead of ~2.5, which would bias the host time)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {f"t{i}": i for i in range(vocab_size)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="t0", bos_token="t1", eos_token="t2"
    ).save_pretrained(folder)
    return folder


def make_engine(folder: Path, **kw):
    """(LLMEngine with dummy bf16 weights, seconds its construction took)."""
    from atom import LLMEngine

    start = time.perf_counter()
    engine = LLMEngine(model=str(folder), load_dummy=True, dtype="bfloat16", **kw)
    sync()
    return engine, time.perf_counter() - start


def free_memory() -> None:
    """After the caller dropped its engine or model: collect it (reference cycles) and give its
    GPU memory back; forget compiled code of models that are gone."""
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def hf_model(shape: str):
    """transformers' model of the shape, random bf16 weights, built directly on the device."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    settings = dict(SHAPES[shape])
    settings.pop("architectures"), settings.pop("model_type")
    config = LlamaConfig(**settings)
    with torch.device(device()):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def step_bytes(model, config: dict, context: float, kv_itemsize: int = 2) -> float:
    """Bytes one decode step of one sequence reads: every weight once, except the embedding
    table when untied (one row of it), plus the K and V of ``context`` cached tokens."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    if not config["tie_word_embeddings"]:
        total -= config["vocab_size"] * config["hidden_size"] * 2  # only one row is read
    kv_per_token = (
        2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"]
    )
    return total + context * kv_per_token * kv_itemsize


def copy_bandwidth(num_bytes: int = 1 << 30, iters: int = 20) -> float:
    """Device copy bandwidth in bytes/s, counting the bytes read and written."""
    if not torch.cuda.is_available():
        num_bytes, iters = 1 << 26, 3
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device())
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        dst.copy_(src)
    sync()
    seconds = time.perf_counter() - start
    del src, dst
    return 2 * num_bytes * iters / seconds


def device_info() -> dict:
    """Device, date, torch, and which backend atom.kernels runs each op of the Llama path on."""
    import atom.kernels  # noqa: F401  (registers the backends)
    from atom.kernels import registry

    info = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__}
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    ops = ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "fused_qk_norm_rope_cache",
           "paged_attention")  # fmt: skip
    info["kernels"] = {
        op: registry.pick(op, "cuda" if torch.cuda.is_available() else "cpu").__module__
        for op in ops
    }
    return info


def save_results(result: dict, stem: str) -> Path:
    name = f"{stem}_{result['device'].replace(' ', '_').lower()}_{time.strftime('%Y%m%dT%H%M%S')}"
    return write_json(result, result_paths(f"{name}.json"), indent=2)[0]


# --- the single-stream benchmark --------------------------------------------------------------
def atom_decode(engine, prompt: list[int], new_tokens: int, repeats: int) -> dict:
    from atom import SamplingParams

    engine.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    sp = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    best = None
    for _ in range(repeats):
        out = engine.generate([prompt], sp)[0]
        assert out["num_tokens_output"] == new_tokens, out["num_tokens_output"]
        if best is None or out["tpot"] < best["tpot"]:
            best = out
    return {
        "decode_tokens_per_s": 1.0 / best["tpot"],
        "e2e_tokens_per_s": new_tokens / best["latency"],
        "tpot_ms": 1e3 * best["tpot"],
        "ttft_ms": 1e3 * best["ttft"],
    }


def graph_replay_ms(engine, iters: int = 100) -> float | None:
    """Milliseconds per replay of the batch-1 decode graph, back to back: the GPU time of a
    decode step without the host work around it (None without graphs). The buffers still hold
    the last step's inputs, so the replays recompute that step."""
    graphs = engine.runner.decode_graphs
    if graphs is None or not graphs.use_graphs:
        return None
    graph = graphs._graphs[graphs.size_for(1)]
    graph.replay()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        graph.replay()
    sync()
    return 1e3 * (time.perf_counter() - start) / iters


def kernel_breakdown(engine, prompt: list[int], steps: int = 4, top: int = 30) -> list[dict]:
    """The GPU kernels of one eager decode step (torch.profiler over ``steps`` steps after the
    prefill): name, launches per step, microseconds per step, the top ``top`` by time, and a
    last row with the totals."""
    from torch.profiler import ProfilerActivity, profile

    from atom import SamplingParams

    engine.add_request([prompt], SamplingParams(temperature=0, max_tokens=steps + 2))
    engine.step()  # prefill
    sync()
    gpu = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CUDA if gpu else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.step()
        sync()
    while engine.has_unfinished_requests():
        engine.step()
    rows = []
    for e in prof.key_averages():
        us = e.self_device_time_total if gpu else e.self_cpu_time_total
        if us > 0 and e.count:
            rows.append({"kernel": e.key[:90], "launches": e.count / steps, "us": us / steps})
    rows.sort(key=lambda r: -r["us"])
    total = {"kernel": "TOTAL", "launches": sum(r["launches"] for r in rows),
             "us": sum(r["us"] for r in rows)}  # fmt: skip
    return rows[:top] + [total]


@torch.no_grad()
def hf_decode(model, prompt: list[int], new_tokens: int, repeats: int) -> dict:
    ids = torch.tensor([prompt], device=device())
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warmup
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        sync()
        best = min(best, time.perf_counter() - start)
        assert out.shape[1] == len(prompt) + new_tokens
    return {"e2e_tokens_per_s": new_tokens / best}


def bench_shape(shape: str, args, root: Path, bandwidth: float) -> dict:
    config = SHAPES[shape]
    folder = write_model_folder(root, shape)
    rng = random.Random(0)
    prompt = [rng.randrange(3, config["vocab_size"]) for _ in range(args.prompt_len)]
    row: dict = {"shape": shape, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
    max_len = max(args.max_model_len, args.prompt_len + args.new_tokens + 16)
    runs = [(level, sb) for level in args.levels for sb in args.small_batch or [None]]
    for level, sb in runs:
        engine, startup = make_engine(
            folder, level=level, max_model_len=max_len, max_num_batched_tokens=4096,
            max_num_seqs=args.max_num_seqs,
            **({} if sb is None else {"small_batch_tokens": sb}),
            **({"num_kv_blocks": 64} if args.dry_run else {}),
        )  # fmt: skip
        result = atom_decode(engine, prompt, args.new_tokens, args.repeats)
        fast_path = engine.runner.fast_path
        if engine.runner.small_batch_layers:
            fast_path += (
                f"; fused small-batch layers (<= {engine.config.small_batch_tokens} tokens)"
            )
        result.update(
            startup_s=startup,
            fast_path=fast_path,
            small_batch_tokens=engine.config.small_batch_tokens,
        )
        replay_ms = graph_replay_ms(engine)
        if replay_ms is not None:
            result["graph_replay_ms"] = replay_ms  # GPU time of a step; TPOT - this = host
        if args.kernels and level == 0 and (sb is None or sb == args.small_batch[0]):
            row["kernels_per_step"] = kernel_breakdown(engine, prompt)
        row[f"atom_level{level}" + ("" if sb is None else f"_sb{sb}")] = result
        if "bytes_per_step" not in row:
            context = args.prompt_len + args.new_tokens / 2
            row["bytes_per_step"] = step_bytes(engine.runner.model, config, context)
        del engine
        free_memory()
    row["copy_bandwidth_gbs"] = bandwidth / 1e9
    row["bound_tokens_per_s"] = bandwidth / row["bytes_per_step"]
    if not args.no_hf:
        model = hf_model(shape)
        row["hf"] = hf_decode(model, prompt, args.new_tokens, max(1, args.repeats - 1))
        del model
        free_memory()
    row["target_decode_tokens_per_s"] = TARGETS.get(shape)
    return row


def print_table(result: dict) -> None:
    print(f"\nkernels: {result['kernels']}")
    print(f"single-stream decode on {result['device']}, torch {result['torch']}; "
          f"copy bandwidth {result['rows'][0]['copy_bandwidth_gbs']:.0f} GB/s")  # fmt: skip
    print(f"{'shape':>13} {'run':>9} {'decode tok/s':>13} {'e2e tok/s':>10} {'TPOT ms':>8} "
          f"{'startup s':>10} {'of bound':>9}  fast path")  # fmt: skip
    for row in result["rows"]:
        bound = row["bound_tokens_per_s"]
        for key, r in row.items():
            if not key.startswith("atom_level"):
                continue
            replay = r.get("graph_replay_ms")
            if replay is not None:
                print(f"{'':>13} {'':>9} graph replay {replay:.3f} ms/step (GPU); host "
                      f"{r['tpot_ms'] - replay:.3f} ms/step")  # fmt: skip
            print(f"{row['shape']:>13} {key[5:]:>11} {r['decode_tokens_per_s']:>13.1f} "
                  f"{r['e2e_tokens_per_s']:>10.1f} {r['tpot_ms']:>8.3f} {r['startup_s']:>10.1f} "
                  f"{r['decode_tokens_per_s'] / bound:>8.0%}  {r['fast_path']}")  # fmt: skip
        for k in row.get("kernels_per_step", []):
            print(
                f"{'':>13} {'kernel':>9} {k['us']:>9.1f} us {k['launches']:>6.1f}x  {k['kernel']}"
            )
        if "hf" in row:
            print(f"{row['shape']:>13} {'HF':>9} {'':>13} {row['hf']['e2e_tokens_per_s']:>10.1f}")
        target = row["target_decode_tokens_per_s"]
        best = max(r["decode_tokens_per_s"] for k, r in row.items() if k.startswith("atom_level"))
        verdict = (
            ""
            if target is None
            else f"; target {target:.0f}: {'PASS' if best >= target else 'MISS'}"
        )
        print(f"{row['shape']:>13} {'bound':>9} {bound:>13.1f}   ({row['bytes_per_step'] / 1e9:.3f} GB"
              f" per step{verdict})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["llama3-8b", "smollm2-135m"],
                        choices=sorted(SHAPES))  # fmt: skip
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 3])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small-batch", type=int, nargs="+", default=None,
                        help="small_batch_tokens settings to run at each level (0 = off; "
                        "default: the engine's)")  # fmt: skip
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face generate")
    parser.add_argument("--kernels", action="store_true",
                        help="profile the GPU kernels of an eager (level 0) decode step")  # fmt: skip
    parser.add_argument("--workdir", default="/tmp/atom_fastpath", help="model folders")
    parser.add_argument("--dry-run", action="store_true", help="tiny shape, few tokens (CPU)")
    args = parser.parse_args()
    if args.dry_run:
        args.shapes, args.prompt_len, args.new_tokens, args.repeats = ["tiny"], 16, 8, 1
        args.max_model_len = 64
    elif not torch.cuda.is_available():
        sys.exit("no GPU: use --dry-run to check this script on a CPU")
    bandwidth = copy_bandwidth()
    result = {"benchmark": "single_stream_decode", **device_info(), "rows": []}
    for shape in args.shapes:
        result["rows"].append(bench_shape(shape, args, Path(args.workdir), bandwidth))
    path = save_results(result, "fastpath_decode")
    print_table(result)
    print(f"results: {path}")


if __name__ == "__main__":
    main()

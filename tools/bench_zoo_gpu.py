"""Model-zoo throughput on a GPU, with dummy (seeded random) bf16 weights: no checkpoint needed.

    PYTHONPATH=python python tools/bench_zoo_gpu.py [--moe-layers 8] [--offline-requests 256]
        [--device cpu --quick]   (a dry run on tiny shapes)

1. Qwen3-30B-A3B shape (hidden 2048, 32 q / 4 KV heads of 128, 128 experts of 768, top-8,
   vocab 151936) with ``--moe-layers`` of its 48 layers (8 by default: the random weights are
   drawn on the CPU, and 48 layers of them take minutes): decode tokens/s at batch 1 and 64
   (128-token prompts, 128 new tokens; batch / mean time per output token), and the same per
   layer scaled to 48 layers (decode time grows about linearly with depth; stated as an estimate).
2. Qwen3-0.6B shape: offline throughput of ``--offline-requests`` requests with input and output
   lengths uniform in 100..1024 (seed 0, EOS ignored), all submitted at once: output tokens/s
   and total (input + output) tokens/s. For scale: vLLM is published at about 9,500 tokens/s on
   an A100 for this workload with Qwen3-0.6B; the H100 bar is 20,000.
Prints a table; writes JSON to benchmarks/results/zoo_gpu.json and to $OUT when set.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from atom import LLMEngine, SamplingParams  # noqa: E402
from bench_common import EngineStepTimers, result_paths, write_json  # noqa: E402
from bench_decode import write_vocab_tokenizer  # noqa: E402

QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936,
    "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
    "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
    "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True, "decoder_sparse_step": 1,
    "mlp_only_layers": [], "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False, "hidden_act": "silu", "dtype": "bfloat16",
}  # fmt: skip
QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
    "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": True, "hidden_act": "silu", "dtype": "bfloat16",
}  # fmt: skip
TINY = {"hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8,
        "num_experts_per_tok": 2, "vocab_size": 512}  # fmt: skip


def write_config(folder: Path, config: dict) -> Path:
    """config.json and a tokenizer covering the vocabulary: all that --load_dummy needs."""
    write_vocab_tokenizer(folder, config["vocab_size"])
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def decode_rate(engine, batch: int, prompt_len: int, new_tokens: int, device: str) -> dict:
    rng = random.Random(batch)
    prompts = [[rng.randrange(3, 400) for _ in range(prompt_len)] for _ in range(batch)]
    engine.generate(prompts, greedy(4))  # warmup (kernel compiles at these sizes)
    sync(device)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, greedy(new_tokens))
    sync(device)
    tpot = sum(o["tpot"] for o in outs) / len(outs)
    return {
        "batch": batch,
        "decode_tokens_per_s": batch / tpot,
        "mean_tpot_ms": 1e3 * tpot,
        "mean_ttft_ms": 1e3 * sum(o["ttft"] for o in outs) / len(outs),
        "wall_s": time.perf_counter() - t0,
    }


def offline_throughput(engine, num_requests: int, lo: int, hi: int, device: str) -> dict:
    rng = random.Random(0)
    prompts, params = [], []
    for _ in range(num_requests):
        prompts.append([rng.randrange(3, 400) for _ in range(rng.randint(lo, hi))])
        params.append(greedy(rng.randint(lo, hi)))
    timers = EngineStepTimers(engine)
    engine.generate(prompts[:8], greedy(4))  # warmup
    sync(device)
    timers.reset()
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    sync(device)
    elapsed = time.perf_counter() - t0
    out_tokens = sum(len(o["token_ids"]) for o in outs)
    in_tokens = sum(len(p) for p in prompts)
    return {
        "requests": num_requests,
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "seconds": elapsed,
        "output_tokens_per_s": out_tokens / elapsed,
        "total_tokens_per_s": (in_tokens + out_tokens) / elapsed,
        "steps": engine.num_steps,
        "time_split_s": timers.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moe-layers", type=int, default=8, help="layers of Qwen3-30B-A3B (48)")
    parser.add_argument("--offline-requests", type=int, default=256)
    parser.add_argument("--level", type=int, default=3, help="the engines' --level (0-3)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a dry run)")
    parser.add_argument("--parts", nargs="+", default=["moe", "offline"], choices=["moe", "offline"],
                        help="which benchmarks to run")  # fmt: skip
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device (use --device cpu --quick for a dry run)")
    moe_cfg = {**QWEN3_30B_A3B, "num_hidden_layers": args.moe_layers}
    dense_cfg = dict(QWEN3_0_6B)
    batches, prompt_len, new_tokens, lo, hi = [1, 64], 128, 128, 100, 1024
    if args.quick:
        moe_cfg.update(TINY, num_hidden_layers=2)
        dense_cfg.update(TINY, num_hidden_layers=2)
        batches, prompt_len, new_tokens, lo, hi = [1, 4], 16, 8, 10, 40
        args.offline_requests = min(args.offline_requests, 8)
    sizing = {} if args.device == "cuda" else {"num_kv_blocks": 512}
    result: dict = {"benchmark": "zoo_gpu", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "torch": torch.__version__, "weights": "dummy (seeded random), bf16",
                    "level": args.level}  # fmt: skip
    if args.device == "cuda":
        result["device"] = torch.cuda.get_device_name(0)

    with tempfile.TemporaryDirectory() as tmp:
        if "moe" in args.parts:
            result["qwen3_30b_a3b"] = moe_decode(Path(tmp), moe_cfg, batches, prompt_len,
                                                 new_tokens, args, sizing)  # fmt: skip
        if "offline" in args.parts:
            folder = write_config(Path(tmp) / "qwen3_0_6b", dense_cfg)
            engine = LLMEngine(model=str(folder), dtype="bfloat16", load_dummy=True,
                               level=args.level, max_model_len=2 * hi + 16, **sizing)  # fmt: skip
            result["qwen3_0_6b_offline"] = offline_throughput(
                engine, args.offline_requests, lo, hi, args.device
            )

    write_json(result, result_paths("zoo_gpu.json"), indent=2)
    print_summary(result)


def moe_decode(tmp: Path, moe_cfg: dict, batches, prompt_len, new_tokens, args, sizing) -> dict:
    """Decode rates of the Qwen3-30B-A3B shape (its engine is dropped before returning)."""
    folder = write_config(tmp / "qwen3_30b_a3b", moe_cfg)
    t0 = time.perf_counter()
    engine = LLMEngine(model=str(folder), dtype="bfloat16", load_dummy=True, level=args.level,
                       max_model_len=prompt_len + new_tokens + 16, **sizing)  # fmt: skip
    layers = moe_cfg["num_hidden_layers"]
    out = {"layers": layers, "of_layers": 48, "load_s": time.perf_counter() - t0, "decode": []}
    for b in batches:
        row = decode_rate(engine, b, prompt_len, new_tokens, args.device)
        row["est_48_layer_tokens_per_s"] = row["decode_tokens_per_s"] * layers / 48
        out["decode"].append(row)
    del engine
    gc.collect()  # the engine's reference cycles hold its weights, KV cache and graph pool
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return out


def print_summary(result: dict) -> None:
    print(f"\n{result.get('device', 'cpu')}, torch {result['torch']}, {result['weights']}")
    moe = result.get("qwen3_30b_a3b")
    if moe:
        print(
            f"Qwen3-30B-A3B shape, {moe['layers']} of 48 layers (loaded in {moe['load_s']:.0f} s):"
        )
        print(
            f"{'batch':>5} {'decode tok/s':>13} {'tpot ms':>8} {'ttft ms':>8} {'est. 48 layers':>15}"
        )
        for r in moe["decode"]:
            print(f"{r['batch']:>5} {r['decode_tokens_per_s']:>13.1f} {r['mean_tpot_ms']:>8.2f} "
                  f"{r['mean_ttft_ms']:>8.1f} {r['est_48_layer_tokens_per_s']:>15.1f}")  # fmt: skip
    off = result.get("qwen3_0_6b_offline")
    if not off:
        return
    print(f"time split (s): {off['time_split_s']}")
    print(f"Qwen3-0.6B shape offline: {off['requests']} requests, {off['output_tokens']} output "
          f"tokens in {off['seconds']:.1f} s: {off['output_tokens_per_s']:.0f} output tok/s, "
          f"{off['total_tokens_per_s']:.0f} total tok/s (bar: 20000)")  # fmt: skip


if __name__ == "__main__":
    main()

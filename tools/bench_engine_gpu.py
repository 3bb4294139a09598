"""LLMEngine end to end on a GPU vs Hugging Face ``generate`` on the same GPU.

    PYTHONPATH=python python tools/bench_engine_gpu.py [--batch-sizes 1 8 32 128]
        [--input-len 128] [--output-len 128] [--device cpu --quick]   (dry run on a CPU)

Uses a random-weight checkpoint of SmolLM2-135M's exact shape with a locally trained tokenizer
(the embedded GGUF does not travel to the GPU machine; nothing is downloaded).
1. correctness, fp32: greedy tokens of 8 prompts in one engine batch vs HF generate one prompt at
   a time; a difference only counts as a failure if HF's own top-2 logits were not a near-tie
   (TF32 dot products may flip those);
2. throughput, bf16: for each batch size, equal-length prompts, ``--output-len`` tokens each, EOS
   ignored: ATOM output tokens/s, mean TTFT and TPOT, and HF generate tokens/s in the same run;
3. the KV cache ATOM sizes from gpu_memory_utilization (0.9): blocks and GiB.
Prints a table; writes JSON to benchmarks/results/engine_gpu.json and to $OUT when set.
"""

from __future__ import annotations

import argparse
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
from atom.engine.testing import write_random_llama  # noqa: E402
from bench_common import result_paths, write_json  # noqa: E402

TINY = json.loads((REPO / "models" / "llama" / "tiny_config.json").read_text())
SMOLLM2_SHAPE = {
    **TINY, "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "max_position_embeddings": 8192, "rope_theta": 100000.0, "tie_word_embeddings": True,
}  # fmt: skip
NEAR_TIE = 5e-3


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def random_prompts(n: int, length: int | None, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 400) for _ in range(length or rng.randint(5, 60))] for _ in range(n)]


@torch.no_grad()
def check_correctness(folder: Path, device: str, max_new: int) -> dict:
    from transformers import AutoModelForCausalLM

    engine = LLMEngine(model=str(folder), dtype="float32", num_kv_blocks=512, max_model_len=256)
    prompts = random_prompts(8, None, seed=0)
    outs = engine.generate(
        prompts, SamplingParams(temperature=0, max_tokens=max_new, ignore_eos=True)
    )
    del engine
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    exact = near_tie = wrong = 0
    for prompt, out in zip(prompts, outs):
        ours = out["token_ids"]
        ids = torch.tensor([prompt], device=device)
        ref = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new,
            min_new_tokens=max_new,
            pad_token_id=0,
        )
        ref = ref[0, len(prompt) :].tolist()  # fmt: skip
        if ours == ref:
            exact += 1
            continue
        i = next(k for k, (a, b) in enumerate(zip(ours, ref)) if a != b)
        logits = hf(torch.tensor([prompt + ours[:i]], device=device)).logits[0, -1].float()
        if (logits[ref[i]] - logits[ours[i]]).item() <= NEAR_TIE:
            near_tie += 1
        else:
            wrong += 1
    del hf
    return {
        "prompts": len(prompts),
        "exact": exact,
        "near_tie_divergence": near_tie,
        "wrong": wrong,
    }


@torch.no_grad()
def hf_throughput(hf, prompts: list[list[int]], output_len: int, device: str) -> float:
    ids = torch.tensor(prompts, device=device)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    hf.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)  # warmup
    sync(device)
    t0 = time.perf_counter()
    hf.generate(ids, max_new_tokens=output_len, min_new_tokens=output_len, **kw)
    sync(device)
    return len(prompts) * output_len / (time.perf_counter() - t0)


def atom_throughput(engine, prompts, output_len: int, device: str) -> dict:
    engine.generate(prompts, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))  # warmup
    sync(device)
    t0 = time.perf_counter()
    outs = engine.generate(
        prompts, SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    )
    sync(device)
    elapsed = time.perf_counter() - t0
    return {
        "tokens_per_s": len(prompts) * output_len / elapsed,
        "mean_ttft_ms": 1e3 * sum(o["ttft"] for o in outs) / len(outs),
        "mean_tpot_ms": 1e3 * sum(o["tpot"] for o in outs) / len(outs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a dry run)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device (use --device cpu --quick for a dry run)")
    if args.quick:
        args.batch_sizes, args.input_len, args.output_len = [1, 4], 16, 8
    from transformers import AutoModelForCausalLM

    result: dict = {"benchmark": "engine_gpu", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "torch": torch.__version__, "model": "SmolLM2-135M shape, random weights"}  # fmt: skip
    if args.device == "cuda":
        result["device"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_llama(Path(tmp) / "smollm2", SMOLLM2_SHAPE)
        result["correctness_fp32"] = check_correctness(
            folder, args.device, 16 if args.quick else 32
        )

        max_len = args.input_len + args.output_len + 8
        sizing = (
            {"max_num_batched_tokens": 4096} if args.device == "cuda" else {"num_kv_blocks": 256}
        )
        engine = LLMEngine(model=str(folder), dtype="bfloat16", max_model_len=max_len, **sizing)
        result["kv_cache"] = {
            "num_blocks": engine.runner.num_blocks,
            "gib": engine.runner.num_blocks * engine.runner.bytes_per_block / 2**30,
        }
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(args.device)
        hf.eval()
        rows = []
        for bs in args.batch_sizes:
            prompts = random_prompts(bs, args.input_len, seed=bs)
            row = {"batch_size": bs, "input_len": args.input_len, "output_len": args.output_len}
            row.update({"atom_" + k: v for k, v in atom_throughput(engine, prompts, args.output_len,
                                                                  args.device).items()})  # fmt: skip
            row["hf_tokens_per_s"] = hf_throughput(hf, prompts, args.output_len, args.device)
            row["speedup"] = row["atom_tokens_per_s"] / row["hf_tokens_per_s"]
            rows.append(row)
        result["throughput_bf16"] = rows

    write_json(result, result_paths("engine_gpu.json"), indent=2)

    c = result["correctness_fp32"]
    print(f"\n{result.get('device', 'cpu')}, torch {result['torch']}, {result['model']}")
    print(f"fp32 greedy vs HF: {c['exact']}/{c['prompts']} identical, {c['near_tie_divergence']} "
          f"diverge at a near-tie, {c['wrong']} WRONG")  # fmt: skip
    kv = result["kv_cache"]
    print(f"KV cache: {kv['num_blocks']} blocks, {kv['gib']:.2f} GiB")
    print(f"{'batch':>5} {'in':>5} {'out':>5} {'ATOM tok/s':>11} {'ttft ms':>8} {'tpot ms':>8} "
          f"{'HF tok/s':>9} {'speedup':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['batch_size']:>5} {r['input_len']:>5} {r['output_len']:>5} "
              f"{r['atom_tokens_per_s']:>11.1f} {r['atom_mean_ttft_ms']:>8.1f} "
              f"{r['atom_mean_tpot_ms']:>8.2f} {r['hf_tokens_per_s']:>9.1f} {r['speedup']:>7.2f}x")  # fmt: skip
    if c["wrong"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

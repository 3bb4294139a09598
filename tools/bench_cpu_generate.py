"""CPU generation throughput: ATOM's LLMEngine vs Hugging Face ``generate`` on the embedded
SmolLM2-135M-Instruct (fp32), measured in the same process on the same prompts.

    PYTHONPATH=python python tools/bench_cpu_generate.py [--batch-sizes 1 8] [--input-len 64]
        [--output-len 32] [--threads N] [--repeats 3]

Each engine generates greedily, ``--output-len`` tokens per prompt (EOS ignored), for each batch
size; prompts of one batch have the same length, so HF needs no padding and its greedy tokens are
comparable with ATOM's (``tokens_match``). One untimed warmup run per engine and batch size, then
``--repeats`` timed runs of each, alternating HF and ATOM so that a busy machine slows both alike;
the best run of each counts.
Writes JSON to benchmarks/results/ (and to $OUT when set) and prints a table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import result_paths, write_json  # noqa: E402

TEXT = (
    "The history of computing is a story of abstraction. Early machines were programmed by "
    "rewiring them; later, instructions were stored in memory alongside data, and programmers "
    "wrote in assembly language, then in high-level languages compiled to machine code. "
)


def make_prompts(tokenizer, batch: int, length: int) -> list[list[int]]:
    ids = tokenizer.encode(TEXT)
    while len(ids) < length + batch:
        ids = ids + ids
    return [ids[i : i + length] for i in range(batch)]  # distinct prompts, equal lengths


def bench_hf(model, prompts: list[list[int]], output_len: int) -> tuple[float, list[list[int]]]:
    ids = torch.tensor(prompts)
    kwargs = dict(
        attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=output_len,
        min_new_tokens=output_len, pad_token_id=0,
    )  # fmt: skip
    with torch.no_grad():
        model.generate(ids, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warmup
        t0 = time.perf_counter()
        out = model.generate(ids, **kwargs)
        elapsed = time.perf_counter() - t0
    return elapsed, out[:, ids.shape[1] :].tolist()


def bench_atom(engine, prompts: list[list[int]], output_len: int):
    from atom import SamplingParams

    engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - t0
    return elapsed, [o["token_ids"] for o in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per engine (best counts)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from atom import LLMEngine
    from atom.loader import resolve_model

    path = resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    engine = LLMEngine(max_model_len=args.input_len + args.output_len + 16)

    rows = []
    for bs in args.batch_sizes:
        prompts = make_prompts(tokenizer, bs, args.input_len)
        hf_s = atom_s = float("inf")
        for _ in range(args.repeats):
            seconds, hf_tokens = bench_hf(hf, prompts, args.output_len)
            hf_s = min(hf_s, seconds)
            seconds, atom_tokens = bench_atom(engine, prompts, args.output_len)
            atom_s = min(atom_s, seconds)
        n = bs * args.output_len
        rows.append({
            "batch_size": bs, "input_len": args.input_len, "output_len": args.output_len,
            "hf_seconds": hf_s, "hf_tokens_per_s": n / hf_s,
            "atom_seconds": atom_s, "atom_tokens_per_s": n / atom_s,
            "speedup": hf_s / atom_s, "tokens_match": hf_tokens == atom_tokens,
            "repeats": args.repeats,
        })  # fmt: skip

    result = {
        "benchmark": "cpu_generate",
        "model": "SmolLM2-135M-Instruct (embedded, fp32)",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "results": rows,
    }
    name = f"cpu_generate_{time.strftime('%Y%m%d_%H%M%S')}.json"
    paths = write_json(result, result_paths(name), indent=2)

    print(
        f"\nCPU generate, {result['model']}, torch {result['torch']}, {result['threads']} threads"
    )
    print(
        f"{'batch':>5} {'in':>5} {'out':>5} {'HF tok/s':>10} {'ATOM tok/s':>11} {'speedup':>8} {'same tokens':>12}"
    )
    for r in rows:
        print(f"{r['batch_size']:>5} {r['input_len']:>5} {r['output_len']:>5} "
              f"{r['hf_tokens_per_s']:>10.1f} {r['atom_tokens_per_s']:>11.1f} "
              f"{r['speedup']:>7.2f}x {str(r['tokens_match']):>12}")  # fmt: skip
    print(f"results: {paths[0]}")


if __name__ == "__main__":
    main()

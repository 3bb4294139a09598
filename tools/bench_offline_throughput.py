"""Offline throughput on the GPU: 256 requests, input and output lengths uniform in 100..1024
(seed 0, EOS ignored), on SmolLM2-135M and Llama-3-8B shapes (dummy bf16 weights): ATOM's
LLMEngine.generate on all of them at once vs Hugging Face ``generate`` with a static batch.

    PYTHONPATH=python python tools/bench_offline_throughput.py [--shapes smollm2-135m llama3-8b]
        [--num-requests 256] [--level 3] [--hf-requests 32] [--no-hf]
    PYTHONPATH=python python tools/bench_offline_throughput.py --dry-run   (tiny, on a CPU)

The requests: for i in 0..N-1, input length, then output length, each ``rng.randint(100, 1024)``
with ``rng = random.Random(0)``, then the prompt's token ids (uniform over the vocabulary).
ATOM: one engine (default options but max_model_len 2048+), one ``generate`` of every request,
after a short warm-up; tokens/s = output tokens / wall time, and (input + output) / wall time.
HF: the first ``--hf-requests`` requests as one left-padded static batch, generated for the
longest output of the batch (outputs capped at ``--hf-max-new-tokens``, 128 by default: HF's
per-step cost grows with the context, so the cap favours HF) (a static batch cannot stop a row early: the rows' own output
tokens are what is counted, so padding and overrun are HF's cost, as in practice). The HF
subset is stated in the table; the ratio compares output tokens/s.
Results: a table; JSON in benchmarks/results/ (and $OUT when set).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import EngineStepTimers  # noqa: E402
from bench_decode import (  # noqa: E402
    SHAPES,
    device,
    device_info,
    free_memory,
    hf_model,
    make_engine,
    save_results,
    sync,
    write_model_folder,
)


def workload(num: int, vocab: int, lo: int = 100, hi: int = 1024, seed: int = 0):
    """(prompts, output lengths): lengths uniform in [lo, hi], token ids uniform in [3, vocab)."""
    rng = random.Random(seed)
    lengths = [(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(num)]
    prompts = [[rng.randrange(3, vocab) for _ in range(n_in)] for n_in, _ in lengths]
    return prompts, [n_out for _, n_out in lengths]


def atom_offline(engine, prompts, out_lens) -> dict:
    from atom import SamplingParams

    timers = EngineStepTimers(engine)
    warm = [p[:32] for p in prompts[:8]]
    engine.generate(warm, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    timers.reset()
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in out_lens]
    steps_before = engine.num_steps
    sync()
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    sync()
    seconds = time.perf_counter() - start
    produced = sum(o["num_tokens_output"] for o in outs)
    assert produced == sum(out_lens), (produced, sum(out_lens))
    total = produced + sum(len(p) for p in prompts)
    return {
        "seconds": seconds,
        "output_tokens_per_s": produced / seconds,
        "total_tokens_per_s": total / seconds,
        "requests_per_s": len(prompts) / seconds,
        "steps": engine.num_steps - steps_before,
        "mean_ttft_s": sum(o["ttft"] for o in outs) / len(outs),
        "mean_tpot_ms": 1e3 * sum(o["tpot"] for o in outs) / len(outs),
        "time_split_s": timers.summary(),
    }


@torch.no_grad()
def hf_offline(model, prompts, out_lens, max_new_tokens: int | None = None) -> dict:
    """One left-padded static batch, generated for the longest requested output (capped at
    ``max_new_tokens``, each request's output then counted up to the cap too)."""
    if max_new_tokens is not None:
        out_lens = [min(n, max_new_tokens) for n in out_lens]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device()), mask.to(device())
    longest = max(out_lens)
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0)
    model.generate(
        ids[:, -16:],
        attention_mask=mask[:, -16:],
        max_new_tokens=2,
        do_sample=False,
        pad_token_id=0,
    )  # fmt: skip  (warm-up)
    sync()
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=longest, min_new_tokens=longest, **kw)
    sync()
    seconds = time.perf_counter() - start
    assert out.shape[1] == width + longest
    useful = sum(out_lens)
    return {
        "requests": len(prompts),
        "seconds": seconds,
        "output_tokens_per_s": useful / seconds,
        "total_tokens_per_s": (useful + sum(len(p) for p in prompts)) / seconds,
        "generated_incl_overrun_per_s": len(prompts) * longest / seconds,
    }


def bench_shape(shape: str, args) -> dict:
    config = SHAPES[shape]
    folder = write_model_folder(Path(args.workdir), shape)
    prompts, out_lens = workload(args.num_requests, config["vocab_size"], args.min_len,
                                 args.max_len)  # fmt: skip
    row: dict = {
        "shape": shape,
        "num_requests": len(prompts),
        "input_tokens": sum(len(p) for p in prompts),
        "output_tokens": sum(out_lens),
        "lengths": f"uniform {args.min_len}..{args.max_len}, seed 0",
    }
    engine, startup = make_engine(
        folder, level=args.level, max_model_len=max(2048, 2 * args.max_len + 16),
        **({"num_kv_blocks": 512} if args.dry_run else {}),
    )  # fmt: skip
    row["atom"] = {**atom_offline(engine, prompts, out_lens), "startup_s": startup,
                   "level": args.level, "fast_path": engine.runner.fast_path,
                   "kv_blocks": engine.runner.num_blocks}  # fmt: skip
    del engine
    free_memory()
    if not args.no_hf:
        model = hf_model(shape)
        n = min(args.hf_requests, len(prompts))
        row["hf"] = hf_offline(model, prompts[:n], out_lens[:n], args.hf_max_new_tokens or None)
        row["hf"]["max_new_tokens"] = args.hf_max_new_tokens
        row["ratio_output_tokens_per_s"] = (
            row["atom"]["output_tokens_per_s"] / row["hf"]["output_tokens_per_s"]
        )
        del model
        free_memory()
    return row


def print_table(result: dict) -> None:
    print(f"\noffline throughput on {result['device']}, torch {result['torch']}")
    print(f"{'shape':>13} {'engine':>6} {'requests':>9} {'seconds':>8} {'out tok/s':>10} "
          f"{'total tok/s':>12} {'req/s':>7}  notes")  # fmt: skip
    for row in result["rows"]:
        a = row["atom"]
        print(f"{row['shape']:>13} {'ATOM':>6} {row['num_requests']:>9} {a['seconds']:>8.1f} "
              f"{a['output_tokens_per_s']:>10.0f} {a['total_tokens_per_s']:>12.0f} "
              f"{a['requests_per_s']:>7.2f}  level {a['level']}: {a['fast_path']}; startup "
              f"{a['startup_s']:.0f} s")  # fmt: skip
        if "hf" in row:
            h = row["hf"]
            print(f"{row['shape']:>13} {'HF':>6} {h['requests']:>9} {h['seconds']:>8.1f} "
                  f"{h['output_tokens_per_s']:>10.0f} {h['total_tokens_per_s']:>12.0f} "
                  f"{h['requests'] / h['seconds']:>7.2f}  static batch of the first "
                  f"{h['requests']}; ATOM/HF output tok/s = "
                  f"{row['ratio_output_tokens_per_s']:.1f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["smollm2-135m", "llama3-8b"],
                        choices=sorted(SHAPES))  # fmt: skip
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--min-len", type=int, default=100)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--hf-requests", type=int, default=32, help="HF's static batch")
    parser.add_argument("--hf-max-new-tokens", type=int, default=128,
                        help="cap of HF's outputs (its steps are slow: ~85 ms for SmolLM2 on an "
                        "H200; shorter outputs also flatter its tokens/s, so the ratio is "
                        "conservative); 0 = no cap")  # fmt: skip
    parser.add_argument("--no-hf", action="store_true")
    parser.add_argument("--workdir", default="/tmp/atom_fastpath", help="model folders")
    parser.add_argument("--dry-run", action="store_true", help="tiny shape and lengths (CPU)")
    args = parser.parse_args()
    if args.dry_run:
        args.shapes, args.num_requests, args.min_len, args.max_len = ["tiny"], 12, 4, 24
        args.hf_requests = 4
    elif not torch.cuda.is_available():
        sys.exit("no GPU: use --dry-run to check this script on a CPU")
    result = {"benchmark": "offline_throughput", **device_info(), "rows": []}
    for shape in args.shapes:
        result["rows"].append(bench_shape(shape, args))
    path = save_results(result, "fastpath_offline")
    print_table(result)
    print(f"results: {path}")


if __name__ == "__main__":
    main()

"""Offline profiling: a torch profiler trace of one batch of generation.

    python -m atom.examples.profile_offline --input-length 128 --output-length 32 --bs 4

Takes every EngineArgs flag plus --input-length (prompt tokens, default 128), --output-length
(tokens generated per request, default 32), --bs (requests in the batch, default 1) and
--random-input (random token ids instead of a fixed English text). Traces go to
``{--torch-profiler-dir}/rank_0/`` (default ./profiler_traces, or $ATOM_TORCH_PROFILER_DIR).
"""

from __future__ import annotations

import argparse
import random
import time

from atom.config import env_torch_profiler_dir
from atom.engine.arg_utils import EngineArgs
from atom.sampling_params import SamplingParams

DEFAULT_TRACE_DIR = "./profiler_traces"
TEXT = (
    "The history of computing is a story of abstraction. Early machines were programmed by "
    "rewiring them; later, instructions were stored in memory alongside data, and programmers "
    "wrote in assembly language, then in high-level languages compiled to machine code. Each "
    "layer hid the details of the one below, so that people could think about larger problems. "
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    EngineArgs.add_cli_args(parser)
    parser.add_argument(
        "--input-length",
        "--input_length",
        dest="input_length",
        type=int,
        default=128,
        help="approximate prompt length in tokens",
    )
    parser.add_argument(
        "--output-length",
        "--output_length",
        dest="output_length",
        type=int,
        default=32,
        help="tokens generated per request",
    )
    parser.add_argument("--bs", type=int, default=1, help="batch size (parallel requests)")
    parser.add_argument(
        "--random-input",
        "--random_input",
        dest="random_input",
        action="store_true",
        help="random token ids instead of the fixed text",
    )
    return parser  # fmt: skip


def make_prompt(tokenizer, length: int, random_input: bool, vocab_size: int, seed: int = 0):
    """A prompt of exactly ``length`` tokens."""
    if length < 1:
        raise ValueError(f"--input-length={length} must be >= 1")
    if random_input:
        rng = random.Random(seed)
        return [rng.randrange(vocab_size) for _ in range(length)]
    ids = tokenizer.encode(TEXT)
    while len(ids) < length:
        ids = ids + ids
    return ids[:length]


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    for name in ("output_length", "bs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.torch_profiler_dir is None and env_torch_profiler_dir() is None:
        args.torch_profiler_dir = DEFAULT_TRACE_DIR
    engine = EngineArgs.from_cli_args(args).create_engine()
    prompt = make_prompt(
        engine.tokenizer, args.input_length, args.random_input, engine.model_config.vocab_size
    )
    params = SamplingParams(temperature=0.0, max_tokens=args.output_length, ignore_eos=True)

    engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=2))  # warmup
    engine.start_profile()
    t0 = time.perf_counter()
    outputs = engine.generate([prompt] * args.bs, params)
    elapsed = time.perf_counter() - t0
    trace_dir = engine.stop_profile()

    generated = sum(o["num_tokens_output"] for o in outputs)
    ttft = sum(o["ttft"] for o in outputs) / len(outputs)
    tpot = sum(o["tpot"] for o in outputs) / len(outputs)
    print(f"bs={args.bs} input={args.input_length} output={args.output_length}: "
          f"{elapsed:.2f} s, {generated / elapsed:.1f} output tokens/s, "
          f"mean ttft {ttft * 1e3:.1f} ms, mean tpot {tpot * 1e3:.1f} ms (under the profiler)")  # fmt: skip
    print(f"trace written to {trace_dir}")
    return {"trace_dir": trace_dir, "elapsed_s": elapsed, "outputs": outputs}


if __name__ == "__main__":
    main()

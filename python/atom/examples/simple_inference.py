"""Quick check that a model loads and generates: four chat prompts (English and Chinese).

    python -m atom.examples.simple_inference                       # the embedded SmolLM2
    python -m atom.examples.simple_inference --model /path/to/hf/folder --temperature 0.6

Takes every EngineArgs flag plus --temperature (default 0.6) and --max-tokens (default 256 on
a GPU, 64 on the CPU so that it finishes in well under a minute there).
"""

from __future__ import annotations

import argparse
import time

from atom.engine.arg_utils import EngineArgs
from atom.sampling_params import SamplingParams

PROMPTS = [
    "Introduce yourself in two sentences.",
    "List all prime numbers below 30.",
    "1 + 2 + 3 = ?",
    "用三句话介绍一下长城。",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    EngineArgs.add_cli_args(parser)
    parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature")
    parser.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=None,
                        help="tokens to generate per prompt (default: 256 on GPU, 64 on CPU)")  # fmt: skip
    return parser


def chat_prompts(tokenizer, questions: list[str]) -> list[str]:
    """Each question through the model's chat template, with thinking enabled where the template
    knows that switch (Qwen3-style templates)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    extra = {"enable_thinking": True} if "enable_thinking" in str(template) else {}
    if not template:  # a base model: the raw question
        return list(questions)
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True, **extra
        )
        for q in questions
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    engine = EngineArgs.from_cli_args(args).create_engine()
    max_tokens = args.max_tokens or (64 if engine.runner.device.type == "cpu" else 256)
    params = SamplingParams(temperature=args.temperature, max_tokens=max_tokens)
    prompts = chat_prompts(engine.tokenizer, PROMPTS)

    t0 = time.perf_counter()
    engine.generate(prompts[:1], SamplingParams(temperature=args.temperature, max_tokens=4))
    print(f"warmup: {time.perf_counter() - t0:.2f} s")

    t0 = time.perf_counter()
    outputs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - t0
    for question, out in zip(PROMPTS, outputs):
        print("=" * 80)
        print(f"Prompt: {question!r}")
        print(f"Completion: {out['text']!r}")
        print(
            f"[{out['num_tokens_input']} prompt + {out['num_tokens_output']} output tokens, "
            f"finish={out['finish_reason']}, ttft={out['ttft']:.3f} s, tpot={out['tpot'] * 1e3:.1f} ms]"
        )
    generated = sum(o["num_tokens_output"] for o in outputs)
    print("=" * 80)
    print(f"{len(outputs)} prompts, {generated} tokens in {elapsed:.2f} s "
          f"({generated / elapsed:.1f} tokens/s)")  # fmt: skip
    engine.print_mtp_statistics()
    return outputs


if __name__ == "__main__":
    main()

"""Online serving benchmark (seeds/003 §4): many timed streaming requests against a running server.

    python -m atom.benchmarks.benchmark_serving --backend vllm --model MODEL \\
        --base-url http://localhost:8000 --dataset-name random \\
        --random-input-len 1024 --random-output-len 128 --num-prompts 1000 \\
        --request-rate inf --ignore-eos --save-result

Requests leave at ``--request-rate`` per second (gamma-distributed gaps: ``--burstiness`` 1 is a
Poisson process, lower is burstier, ``inf`` sends all at once), at most ``--max-concurrency`` in
flight. One test request goes first so that a misconfigured server fails fast. ``--profile``
brackets the run with POST /start_profile and /stop_profile.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from tqdm.asyncio import tqdm

from atom import envs
from atom.benchmarks.backend_request_func import (
    AIOHTTP_TIMEOUT,
    ASYNC_REQUEST_FUNCS,
    RequestFuncInput,
    RequestFuncOutput,
)
from atom.benchmarks.benchmark_dataset import (
    SampleRequest,
    sample_burstgpt,
    sample_hf,
    sample_random,
    sample_sharegpt,
    sample_sonnet,
)
from atom.benchmarks.benchmark_metrics import (
    LATENCY_NAMES,
    BenchmarkMetrics,
    calculate_metrics,
    parse_goodput,
)
from atom.benchmarks.benchmark_utils import convert_to_pytorch_benchmark_format, write_to_json


def load_tokenizer(name_or_path: str | None, trust_remote_code: bool = False):
    """A local tokenizer: the embedded model's name (or None) resolves to its converted folder;
    anything else must be a local path. Nothing is downloaded."""
    from transformers import AutoTokenizer

    from atom.loader import resolve_model

    path = Path(name_or_path).expanduser() if name_or_path else None
    if path is None or not path.is_dir() or not (path / "config.json").exists():
        if path is not None and path.is_dir():  # a tokenizer-only folder
            return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        path = resolve_model(name_or_path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def sample_requests(args: argparse.Namespace, tokenizer) -> list[SampleRequest]:
    name, n, seed = args.dataset_name, args.num_prompts, args.seed
    if name == "random":
        requests = sample_random(tokenizer, n, args.random_input_len, args.random_output_len,
                                 args.random_range_ratio, args.random_prefix_len, seed)  # fmt: skip
        if args.use_chat_template:
            for r in requests:
                r.prompt = tokenizer.apply_chat_template(
                    [{"role": "user", "content": r.prompt}], add_generation_prompt=True,
                    tokenize=False)  # fmt: skip
                r.prompt_len = len(tokenizer.encode(r.prompt, add_special_tokens=False))
        return requests
    if name == "sharegpt":
        return sample_sharegpt(args.dataset_path, tokenizer, n, args.sharegpt_output_len, seed)
    if name == "burstgpt":
        return sample_burstgpt(args.dataset_path, tokenizer, n, seed)
    if name == "sonnet":
        return sample_sonnet(args.dataset_path, tokenizer, n, args.sonnet_input_len,
                             args.sonnet_output_len, args.sonnet_prefix_len,
                             apply_chat_template=args.backend != "openai-chat", seed=seed)  # fmt: skip
    if name == "hf":
        return sample_hf(args.dataset_path, tokenizer, n, args.hf_split, args.hf_subset,
                         args.hf_output_len, seed)  # fmt: skip
    raise ValueError(f"--dataset-name {name!r}: choose sharegpt, burstgpt, sonnet, random or hf")


async def request_times(
    requests: list[SampleRequest], request_rate: float, burstiness: float, seed: int
) -> AsyncIterator[SampleRequest]:
    """Yields the requests at the chosen rate. Gaps are Gamma(shape=burstiness,
    scale=1/(rate*burstiness)): mean 1/rate whatever the burstiness, Poisson at burstiness 1."""
    if burstiness <= 0:
        raise ValueError(f"--burstiness {burstiness} must be positive")
    rng = np.random.default_rng(seed)
    for request in requests:
        yield request
        if request_rate == float("inf"):
            continue
        await asyncio.sleep(float(rng.gamma(burstiness, 1.0 / (request_rate * burstiness))))


async def post_control(base_url: str, route: str, api_key: str | None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with (
        aiohttp.ClientSession(timeout=AIOHTTP_TIMEOUT) as session,
        session.post(base_url + route, headers=headers) as response,
    ):
        if response.status != 200:
            raise RuntimeError(
                f"POST {route} failed: HTTP {response.status} {await response.text()}"
            )


async def benchmark(args: argparse.Namespace, tokenizer, requests: list[SampleRequest]) -> dict:
    request_func = ASYNC_REQUEST_FUNCS[args.backend]
    extra_body = {k: v for k in ("top_p", "top_k", "min_p", "temperature")
                  if (v := getattr(args, k)) is not None}  # fmt: skip

    def make_input(r: SampleRequest) -> RequestFuncInput:
        return RequestFuncInput(prompt=r.prompt, api_url=args.api_url, prompt_len=r.prompt_len,
                                output_len=r.expected_output_len, model=args.model,
                                model_name=args.served_model_name, logprobs=args.logprobs,
                                extra_body=extra_body or None, ignore_eos=args.ignore_eos,
                                api_key=args.api_key)  # fmt: skip

    print("Starting initial single prompt test run...")
    test = await request_func(make_input(requests[0]))
    if not test.success:
        raise RuntimeError(f"the initial test request failed; check the arguments: {test.error}")
    print("Initial test run completed. Starting main benchmark run...")
    if args.profile:
        await post_control(args.base_url, "/start_profile", args.api_key)
        print("Profiler started")

    print(f"Traffic request rate: {args.request_rate}, burstiness: {args.burstiness}, "
          f"max concurrency: {args.max_concurrency}")  # fmt: skip
    limit = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    pbar = None if args.disable_tqdm else tqdm(total=len(requests))

    async def run(r: SampleRequest) -> RequestFuncOutput:
        if limit is None:
            return await request_func(make_input(r), pbar=pbar)
        async with limit:
            return await request_func(make_input(r), pbar=pbar)

    start = time.perf_counter()
    tasks = []
    async for r in request_times(requests, args.request_rate, args.burstiness, args.seed):
        tasks.append(asyncio.create_task(run(r)))
    outputs: list[RequestFuncOutput] = await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    if pbar is not None:
        pbar.close()
    if args.profile:
        await post_control(args.base_url, "/stop_profile", args.api_key)
        print("Profiler stopped")

    percentiles = [float(p) for p in args.metric_percentiles.split(",")]
    goodput = parse_goodput(args.goodput)
    metrics, output_lens = calculate_metrics(requests, outputs, duration, tokenizer,
                                             percentiles, goodput)  # fmt: skip
    selected = [m.strip() for m in args.percentile_metrics.split(",") if m.strip()]
    print_report(metrics, duration, selected, bool(goodput))
    result: dict[str, Any] = {
        "duration": duration,
        "completed": metrics.completed,
        "failed": metrics.failed,
        "total_input_tokens": metrics.total_input,
        "total_output_tokens": metrics.total_output,
        "request_throughput": metrics.request_throughput,
        "request_goodput": metrics.request_goodput,
        "output_throughput": metrics.output_throughput,
        "total_token_throughput": metrics.total_token_throughput,
        "input_lens": [o.prompt_len for o in outputs],
        "output_lens": output_lens,
        "ttfts": [o.ttft for o in outputs],
        "itls": [o.itl for o in outputs],
        "generated_texts": [o.generated_text for o in outputs],
        "errors": [o.error for o in outputs],
    }
    flat = metrics.flat()
    result.update({k: v for k, v in flat.items() if any(f"_{m}_" in k for m in selected)})
    return result


def print_report(m: BenchmarkMetrics, duration: float, selected: list[str], goodput: bool) -> None:
    print("{s:{c}^50}".format(s=" Serving Benchmark Result ", c="="))
    rows = [("Successful requests:", m.completed), ("Failed requests:", m.failed),
            ("Benchmark duration (s):", f"{duration:.2f}"),
            ("Total input tokens:", m.total_input), ("Total generated tokens:", m.total_output),
            ("Request throughput (req/s):", f"{m.request_throughput:.2f}")]  # fmt: skip
    if goodput:
        rows.append(("Request goodput (req/s):", f"{m.request_goodput:.2f}"))
    rows += [("Output token throughput (tok/s):", f"{m.output_throughput:.2f}"),
             ("Total Token throughput (tok/s):", f"{m.total_token_throughput:.2f}")]  # fmt: skip
    for label, value in rows:
        print(f"{label:<40}{value:<10}")
    for name in selected:
        stats = m.latency[name]
        print("{s:{c}^50}".format(s=f" {LATENCY_NAMES[name]} ", c="-"))
        print(f"{f'Mean {name.upper()} (ms):':<40}{stats.mean_ms:<10.2f}")
        print(f"{f'Median {name.upper()} (ms):':<40}{stats.median_ms:<10.2f}")
        for p, value in stats.percentiles_ms:
            label = str(int(p)) if float(p).is_integer() else str(p)
            print(f"{f'P{label} {name.upper()} (ms):':<40}{value:<10.2f}")
    print("=" * 50)


def save_result(args: argparse.Namespace, result: dict) -> str:
    now = datetime.now().strftime("%Y%m%d-%H%M%S")
    record: dict[str, Any] = {
        "date": now,
        "backend": args.backend,
        "model_id": args.model,
        "tokenizer_id": args.tokenizer or args.model,
        "num_prompts": args.num_prompts,
        "request_rate": args.request_rate,
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
    }
    for item in args.metadata or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--metadata {item!r}: expected KEY=VALUE")
        record[key] = value
    record.update(result)
    concurrency = f"-concurrency{args.max_concurrency}" if args.max_concurrency else ""
    base_model = Path(str(args.model)).name
    filename = args.result_filename or (
        f"{args.backend}-{args.request_rate}qps{concurrency}-{base_model}-{now}.json"
    )
    path = Path(args.result_dir or ".") / filename
    write_to_json(path, record)
    per_metric = {k: [v] for k, v in result.items() if isinstance(v, (int, float))}
    pt_records = convert_to_pytorch_benchmark_format(args, per_metric, {"date": now})
    if pt_records:
        write_to_json(path.with_name(path.stem + ".pytorch.json"), pt_records)
    return str(path)


def main(argv: list[str] | None = None) -> dict:
    from atom.benchmarks.benchmark_args import make_parser

    args = make_parser().parse_args(argv)
    if args.backend not in ASYNC_REQUEST_FUNCS:
        raise SystemExit(f"--backend {args.backend!r}: choose one of {sorted(ASYNC_REQUEST_FUNCS)}")
    random.seed(args.seed)
    np.random.seed(args.seed)
    if args.endpoint is None:  # each protocol's usual route
        args.endpoint = {"openai-chat": "/v1/chat/completions", "tgi": "/generate_stream",
                         "tensorrt-llm": "/v2/models/ensemble/generate_stream",
                         "deepspeed-mii": "/mii/generate"}.get(args.backend, "/v1/completions")  # fmt: skip
    base = args.base_url or f"http://{args.host}:{args.port}"
    args.base_url = base.rstrip("/")
    args.api_url = args.base_url + args.endpoint
    args.api_key = args.api_key or envs.openai_api_key()
    tokenizer = load_tokenizer(args.tokenizer or args.model, args.trust_remote_code)
    requests = sample_requests(args, tokenizer)
    result = asyncio.run(benchmark(args, tokenizer, requests))
    if args.save_result:
        path = save_result(args, result)
        print(f"Saved the result to {path}")
        result["result_path"] = path
    return result


if __name__ == "__main__":
    main()

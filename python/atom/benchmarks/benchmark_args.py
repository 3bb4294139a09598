"""Command-line flags of ``benchmark_serving`` (seeds/003 §4.2, plus vLLM's dataset options).
Long flags work in kebab-case and snake_case."""

from __future__ import annotations

import argparse

from atom.benchmarks.backend_request_func import ASYNC_REQUEST_FUNCS
from atom.benchmarks.benchmark_metrics import LATENCY_METRICS

DATASETS = ("sharegpt", "burstgpt", "sonnet", "random", "hf")


def _rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"request rate {text!r} must be > 0 (or inf)")
    return value


def _metric_list(text: str) -> str:
    bad = [m for m in text.split(",") if m.strip() and m.strip() not in LATENCY_METRICS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown metrics {bad}; choose from {LATENCY_METRICS}")
    return text


def _percentiles(text: str) -> str:
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not all(0 < p <= 100 for p in values):
        raise argparse.ArgumentTypeError(f"percentiles must be in (0, 100]: {text!r}")
    return text


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m atom.benchmarks.benchmark_serving",
        description="Benchmark the online serving throughput and latency of a running server.",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}

    def add(name: str, *extra: str, group: str = "benchmark", **kw) -> None:
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        kebab, snake = "--" + name.replace("_", "-"), "--" + name
        flags = [kebab] if kebab == snake else [kebab, snake]
        groups[group].add_argument(*flags, *extra, dest=name, **kw)

    add("backend", type=str, default="vllm", choices=sorted(ASYNC_REQUEST_FUNCS))
    add("model", type=str, required=True, help="model name or path (as served)")
    add("served_model_name", type=str, default=None, help="name sent in requests (default --model)")
    add("tokenizer", type=str, default=None, help="local tokenizer (default: --model)")
    add("trust_remote_code", action="store_true")
    add("base_url", type=str, default=None, help="e.g. http://localhost:8000")
    add("host", type=str, default="127.0.0.1")
    add("port", type=int, default=8000)
    add("endpoint", type=str, default=None,
        help="API route (default /v1/completions; /v1/chat/completions for openai-chat)")  # fmt: skip
    add("api_key", type=str, default=None, help="bearer token (default $OPENAI_API_KEY)")
    add("num_prompts", type=int, default=1000)
    add("request_rate", type=_rate, default=float("inf"), help="requests/s; inf = all at once")
    add("burstiness", type=float, default=1.0, help="1.0 = Poisson; lower = burstier")
    add("max_concurrency", type=int, default=None, help="most requests in flight")
    add("ignore_eos", action="store_true")
    add("logprobs", type=int, default=None)
    add("seed", type=int, default=0)
    add("disable_tqdm", action="store_true")
    add("profile", action="store_true", help="POST /start_profile and /stop_profile around the run")
    add("percentile_metrics", type=_metric_list, default="ttft,tpot,itl")
    add("metric_percentiles", type=_percentiles, default="99")
    add("goodput", nargs="+", default=None, help="SLOs KEY:MS, e.g. ttft:100 tpot:50")
    for name in ("temperature", "top_p", "min_p"):
        add(name, type=float, default=None, group="sampling")
    add("top_k", type=int, default=None, group="sampling")

    add("save_result", action="store_true", group="result")
    add("result_dir", type=str, default=None, group="result")
    add("result_filename", type=str, default=None, group="result")
    add("metadata", nargs="*", default=None, group="result", help="KEY=VALUE pairs to record")

    add("dataset_name", type=str, default="sharegpt", choices=DATASETS, group="dataset")
    add("dataset_path", type=str, default=None, group="dataset", help="local file or folder")
    add("random_input_len", type=int, default=1024, group="dataset")
    add("random_output_len", type=int, default=128, group="dataset")
    add("random_range_ratio", type=float, default=1.0, group="dataset",
        help="lengths uniform in [len * ratio, len]")  # fmt: skip
    add("random_prefix_len", type=int, default=0, group="dataset")
    add("use_chat_template", action="store_true", group="dataset",
        help="wrap random prompts in the chat template")  # fmt: skip
    add("sharegpt_output_len", type=int, default=None, group="dataset")
    add("sonnet_input_len", type=int, default=550, group="dataset")
    add("sonnet_output_len", type=int, default=150, group="dataset")
    add("sonnet_prefix_len", type=int, default=200, group="dataset")
    add("hf_split", type=str, default="train", group="dataset")
    add("hf_subset", type=str, default=None, group="dataset")
    add("hf_output_len", type=int, default=None, group="dataset")
    return parser

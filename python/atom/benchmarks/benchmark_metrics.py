"""Aggregate serving metrics (seeds/003 §4.1) from per-request client timings.

Per request (successful ones only):
- TTFT: send -> first text chunk; E2EL: send -> last chunk;
- TPOT: (E2EL - TTFT) / (output_tokens - 1), for requests with more than one output token;
- ITL: every gap between two text chunks (pooled over all requests).
Throughputs divide by the benchmark's wall time. Goodput counts requests meeting every given SLO
(``ttft``, ``tpot``, ``e2el`` in milliseconds). Latencies are reported in milliseconds: mean,
median, standard deviation and the requested percentiles (numpy's linear interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from atom.benchmarks.backend_request_func import RequestFuncOutput
from atom.benchmarks.benchmark_dataset import SampleRequest

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
LATENCY_NAMES = {
    "ttft": "Time to First Token",
    "tpot": "Time per Output Token (excl. 1st token)",
    "itl": "Inter-token Latency",
    "e2el": "End-to-end Latency",
}


@dataclass
class LatencyStats:
    mean_ms: float = 0.0
    median_ms: float = 0.0
    std_ms: float = 0.0
    percentiles_ms: list[tuple[float, float]] = field(default_factory=list)  # (p, value)

    @classmethod
    def of(cls, seconds: list[float], percentiles: list[float]) -> LatencyStats:
        ms = np.asarray(seconds or [0.0], dtype=np.float64) * 1000.0
        return cls(
            mean_ms=float(ms.mean()),
            median_ms=float(np.median(ms)),
            std_ms=float(ms.std()),
            percentiles_ms=[(p, float(np.percentile(ms, p))) for p in percentiles],
        )


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float | None
    output_throughput: float
    total_token_throughput: float
    latency: dict[str, LatencyStats]  # keyed by LATENCY_METRICS

    def flat(self) -> dict[str, float]:
        """``mean_ttft_ms``, ``median_ttft_ms``, ``std_ttft_ms``, ``p99_ttft_ms``, ... for each metric."""
        out: dict[str, float] = {}
        for name, stats in self.latency.items():
            out[f"mean_{name}_ms"] = stats.mean_ms
            out[f"median_{name}_ms"] = stats.median_ms
            out[f"std_{name}_ms"] = stats.std_ms
            for p, value in stats.percentiles_ms:
                out[f"p{_percentile_label(p)}_{name}_ms"] = value
        return out


def _percentile_label(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    """``["ttft:100", "tpot:50"]`` -> ``{"ttft": 100.0, "tpot": 50.0}`` (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition(":")
        if not sep or name not in ("ttft", "tpot", "e2el"):
            raise ValueError(f"--goodput {item!r}: expected ttft|tpot|e2el:MILLISECONDS")
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {item!r}: {value!r} is not a number") from None
        if slos[name] <= 0:
            raise ValueError(f"--goodput {item!r}: the SLO must be positive")
    return slos


def calculate_metrics(
    input_requests: list[SampleRequest],
    outputs: list[RequestFuncOutput],
    duration_s: float,
    tokenizer,
    percentiles: list[float],
    goodput_slos: dict[str, float] | None = None,
) -> tuple[BenchmarkMetrics, list[int]]:
    """The metrics, and the output token count of each request (0 for failed ones)."""
    output_lens: list[int] = []
    ttfts, tpots, itls, e2els = [], [], [], []
    good = 0
    total_input = 0
    for request, out in zip(input_requests, outputs):
        if not out.success:
            output_lens.append(0)
            continue
        # Prefer the server's own count; else count the text (close, not exact).
        n = out.output_tokens or len(tokenizer.encode(out.generated_text, add_special_tokens=False))
        output_lens.append(n)
        total_input += request.prompt_len
        tpot = (out.latency - out.ttft) / (n - 1) if n > 1 else 0.0
        out.tpot = tpot
        if n > 1:
            tpots.append(tpot)
        ttfts.append(out.ttft)
        itls.extend(out.itl)
        e2els.append(out.latency)
        if goodput_slos:
            measured = {"ttft": out.ttft, "tpot": tpot, "e2el": out.latency}
            good += all(measured[k] * 1000.0 <= slo for k, slo in goodput_slos.items())
    completed = len(e2els)
    total_output = sum(output_lens)
    duration_s = max(duration_s, 1e-9)
    metrics = BenchmarkMetrics(
        completed=completed,
        failed=len(outputs) - completed,
        total_input=total_input,
        total_output=total_output,
        request_throughput=completed / duration_s,
        request_goodput=good / duration_s if goodput_slos else None,
        output_throughput=total_output / duration_s,
        total_token_throughput=(total_input + total_output) / duration_s,
        latency={
            "ttft": LatencyStats.of(ttfts, percentiles),
            "tpot": LatencyStats.of(tpots, percentiles),
            "itl": LatencyStats.of(itls, percentiles),
            "e2el": LatencyStats.of(e2els, percentiles),
        },
    )
    return metrics, output_lens

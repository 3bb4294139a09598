"""Prometheus metrics of the server (GET /metrics), named like vLLM's with an ``atom:`` prefix.

Per-request latencies are observed when a choice finishes, from the engine's own timestamps
(arrival, first token, finish) so they measure the engine rather than HTTP. Engine state (running,
waiting, KV blocks, prefix-cache counters) is read from ``EngineStats`` at scrape time. Each server
owns its registry, so several servers (or tests) in one process do not collide.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE  # noqa: F401
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from atom.engine.outputs import EngineStats, RequestOutput

# Bucket edges in seconds: fine at the low end (GPU decode steps are milliseconds), long tail for
# CPU runs and queued requests.
_TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 20.0, 40.0, 80.0)  # fmt: skip
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)  # fmt: skip
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                240.0, 480.0)  # fmt: skip


class ServerMetrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry
        self.ttft = Histogram("atom:time_to_first_token_seconds", "Time to first token",
                              labels, buckets=_TTFT_BUCKETS, registry=r)  # fmt: skip
        self.tpot = Histogram("atom:time_per_output_token_seconds",
                              "Mean time per output token after the first, per request",
                              labels, buckets=_TPOT_BUCKETS, registry=r)  # fmt: skip
        self.e2e = Histogram("atom:e2e_request_latency_seconds", "Arrival to last token",
                             labels, buckets=_E2E_BUCKETS, registry=r)  # fmt: skip
        self.finished = Counter("atom:request_success", "Finished choices by reason",
                                labels + ["finished_reason"], registry=r)  # fmt: skip
        self.prompt_tokens = Counter("atom:prompt_tokens", "Prompt tokens processed", labels,
                                     registry=r)  # fmt: skip
        self.generation_tokens = Counter("atom:generation_tokens", "Tokens generated", labels,
                                         registry=r)  # fmt: skip
        self.running = Gauge("atom:num_requests_running", "Sequences running", labels, registry=r)
        self.waiting = Gauge("atom:num_requests_waiting", "Sequences waiting", labels, registry=r)
        self.kv_usage = Gauge("atom:kv_cache_usage_perc", "Fraction of KV blocks in use (0..1)",
                              labels, registry=r)  # fmt: skip
        self.free_blocks = Gauge("atom:kv_cache_free_blocks", "Free KV blocks", labels, registry=r)
        self.total_blocks = Gauge("atom:kv_cache_total_blocks", "KV blocks", labels, registry=r)
        self.prefix_queries = Gauge("atom:prefix_cache_queries", "Prompt tokens looked up in the "
                                    "prefix cache (cumulative)", labels, registry=r)  # fmt: skip
        self.prefix_hits = Gauge("atom:prefix_cache_hits", "Prompt tokens found in the prefix "
                                 "cache (cumulative)", labels, registry=r)  # fmt: skip
        self.prefix_hit_rate = Gauge("atom:prefix_cache_hit_rate", "prefix_cache_hits / "
                                     "prefix_cache_queries (0 before any query)", labels,
                                     registry=r)  # fmt: skip
        self.healthy = Gauge("atom:engine_healthy", "1 while the engine loop runs", labels,
                             registry=r)  # fmt: skip
        self._labels = {"model_name": model_name}

    def observe_request(self, output: RequestOutput) -> None:
        """Record one finished choice."""
        m = self._labels
        self.finished.labels(**m, finished_reason=output.finish_reason or "unknown").inc()
        self.generation_tokens.labels(**m).inc(len(output.token_ids))
        if output.index == 0:  # the prompt is shared by the n choices of a request
            self.prompt_tokens.labels(**m).inc(len(output.prompt_token_ids))
        timing = request_timing(output)
        if timing["ttft_s"] is not None:
            self.ttft.labels(**m).observe(timing["ttft_s"])
        if timing["tpot_s"] is not None:
            self.tpot.labels(**m).observe(timing["tpot_s"])
        if timing["latency_s"] is not None:
            self.e2e.labels(**m).observe(timing["latency_s"])

    def render(self, stats: EngineStats) -> bytes:
        m = self._labels
        self.running.labels(**m).set(stats.num_running)
        self.waiting.labels(**m).set(stats.num_waiting)
        self.kv_usage.labels(**m).set(stats.kv_usage)
        self.free_blocks.labels(**m).set(stats.num_free_blocks)
        self.total_blocks.labels(**m).set(stats.num_total_blocks)
        self.prefix_queries.labels(**m).set(stats.prefix_cache_queries)
        self.prefix_hits.labels(**m).set(stats.prefix_cache_hits)
        rate = (
            stats.prefix_cache_hits / stats.prefix_cache_queries
            if stats.prefix_cache_queries
            else 0
        )
        self.prefix_hit_rate.labels(**m).set(rate)
        self.healthy.labels(**m).set(1.0 if stats.healthy else 0.0)
        return generate_latest(self.registry)


def request_timing(output: RequestOutput) -> dict[str, float | None]:
    """TTFT, TPOT (mean gap between output tokens after the first) and E2E latency of one choice,
    in seconds, from the engine's timestamps; None where a value is undefined."""
    arrival, first, finish = output.arrival_time, output.first_token_time, output.finish_time
    ttft = first - arrival if (first is not None and arrival) else None
    latency = finish - arrival if (finish is not None and arrival) else None
    num_tokens = len(output.token_ids)
    tpot = None
    if first is not None and finish is not None and num_tokens > 1:
        tpot = (finish - first) / (num_tokens - 1)
    return {"ttft_s": ttft, "tpot_s": tpot, "latency_s": latency}

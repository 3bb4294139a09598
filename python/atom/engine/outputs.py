"""What the engine hands back to its callers (LLMEngine.step, stream callbacks, the server).

The contract between the engine and its front ends:
- ``LLMEngine.add_request(prompts, sampling_params, stream_callback=None) -> list[str]`` returns one
  request id per prompt. With ``n > 1`` a request has n choices (``RequestOutput.index``).
- ``stream_callback(output: RequestOutput)`` is called from ``step()`` for every choice that got new
  tokens in that step, and once more (or in the same call) with ``finished=True``.
- ``step() -> list[RequestOutput]`` runs one scheduling step and returns the choices that finished in it.
- ``abort_request(request_id)`` drops a request at any time and frees every KV block it held.
- ``get_stats() -> EngineStats`` for /metrics and /health.
All engine methods are called from one thread; front ends that live elsewhere (the async server)
hand requests over between steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestOutput:
    request_id: str
    index: int  # which of the request's n choices
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]  # every output token so far
    new_token_ids: list[int]  # output tokens since the previous callback for this choice
    text: str  # detokenized output so far, stop string removed
    new_text: str  # text since the previous callback
    finished: bool
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    # Per output token: {token_id: logprob} for the sampled token plus the top `logprobs` ones.
    logprobs: list[dict[int, float]] | None = None
    # Per prompt token (None for the first one), same shape; only with prompt_logprobs.
    prompt_logprobs: list[dict[int, float] | None] | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    arrival_time: float = 0.0
    first_token_time: float | None = None
    finish_time: float | None = None


@dataclass
class EngineStats:
    num_running: int = 0
    num_waiting: int = 0
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of which found
    healthy: bool = True
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_total_blocks if self.num_total_blocks else 0.0

"""What both endpoints share: the serving context, prompt checks, sampling parameters, usage.

A request becomes, in order: token-id prompts (chat template or tokenizer, or ids as given),
checked against the vocabulary and ``max_model_len``; then one ``SamplingParams``; then the engine
stream of ``RequestOutput``s, which the endpoint turns into OpenAI chunks or one response body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi.responses import StreamingResponse
from starlette.requests import Request

from atom.engine.outputs import RequestOutput
from atom.entrypoints.async_engine import AsyncEngine
from atom.entrypoints.errors import APIError
from atom.entrypoints.metrics import ServerMetrics, request_timing
from atom.entrypoints.protocol import DEFAULT_MAX_TOKENS, SamplingFields
from atom.sampling_params import SamplingParams


@dataclass
class ServingContext:
    """Everything a request handler needs; built once by the server."""

    engine: AsyncEngine
    tokenizer: Any  # a Hugging Face tokenizer
    model_names: list[str]  # served names; the first is reported in responses
    max_model_len: int
    vocab_size: int
    metrics: ServerMetrics
    _token_text: dict[int, str] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    def check_model(self, requested: str | None) -> None:
        # An absent or empty `model` means the one served (seeds/003 §1.2: Optional).
        if requested and requested not in self.model_names:
            raise APIError(
                f"The model {requested!r} does not exist; this server serves "
                f"{', '.join(repr(n) for n in self.model_names)}",
                status=404,
                param="model",
            )

    def token_texts(self, token_ids: list[int]) -> list[str]:
        """The text of each token on its own (for logprobs), cached per id."""
        missing = sorted({t for t in token_ids if t not in self._token_text})
        if missing:
            texts = self.tokenizer.batch_decode([[t] for t in missing])
            self._token_text.update(zip(missing, texts))
        return [self._token_text[t] for t in token_ids]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def check_prompt_ids(ctx: ServingContext, ids: list[int], where: str = "prompt") -> None:
    if not ids:
        raise APIError(f"{where}: the prompt is empty (0 tokens)", param=where)
    bad = next((t for t in ids if not 0 <= t < ctx.vocab_size), None)
    if bad is not None:
        raise APIError(f"{where}: token id {bad} is outside the vocabulary [0, {ctx.vocab_size})",
                       param=where)  # fmt: skip


def resolve_max_tokens(ctx: ServingContext, requested: int | None, prompt_len: int) -> int:
    """The number of tokens to generate, checked against the context window.

    Explicit values must fit (prompt + max_tokens <= max_model_len) or the request is a 400, as in
    vLLM; when absent, the default (256, seeds/003 §1.2) is shortened to what still fits."""
    room = ctx.max_model_len - prompt_len
    if room <= 0 or (requested is not None and requested > room):
        asked = prompt_len + (requested or 0)
        raise APIError(
            f"This model's maximum context length is {ctx.max_model_len} tokens. However, you "
            f"requested {asked} tokens ({prompt_len} in the messages/prompt, {requested or 0} for "
            "the completion). Please reduce the length of the prompt or the completion.",
            param="messages" if room <= 0 else "max_tokens",
        )
    return min(DEFAULT_MAX_TOKENS, room) if requested is None else requested


def sampling_params(
    req: SamplingFields,
    max_tokens: int,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    """The engine's SamplingParams of a request. ``max_tokens == 0`` (echo-only scoring, as
    lm-eval sends) still generates one token: the engine needs >= 1; the caller hides it."""
    try:
        return SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            max_tokens=max(1, max_tokens),
            ignore_eos=req.ignore_eos,
            stop_strings=req.stop_list(),
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=0 if req.top_k is None else req.top_k,
            min_p=0.0 if req.min_p is None else req.min_p,
            seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            min_tokens=req.min_tokens,
            stop_token_ids=req.stop_token_ids,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            n=req.n,
        )
    except ValueError as exc:
        # SamplingParams names the field as "SamplingParams.<name>=<value> ..."; keep its words.
        param = str(exc).removeprefix("SamplingParams.").split("=")[0] or None
        raise APIError(str(exc), param=param) from exc


@dataclass
class ChoiceState:
    """What is known about one choice while its outputs arrive."""

    index: int  # the choice's index in the response
    last: RequestOutput | None = None
    prompt_logprobs: list | None = None
    num_tokens_sent: int = 0  # output tokens already streamed (for logprobs offsets)
    sent_role: bool = False
    finished: bool = False

    def update(self, output: RequestOutput) -> None:
        self.last = output
        if output.prompt_logprobs is not None:
            self.prompt_logprobs = output.prompt_logprobs
        self.finished = output.finished


def usage(
    prompt_lens: list[int], choices: list[ChoiceState], hide_output: bool = False
) -> dict[str, Any]:
    """OpenAI `usage` plus the timing fields of seeds/003 §1.3 over all choices of a response:
    ttft_s from the first arrival to the first token of any choice, latency_s to the last finish,
    tpot_s the mean of the choices' own TPOTs."""
    outputs = [c.last for c in choices if c.last is not None]
    completion = 0 if hide_output else sum(len(o.token_ids) for o in outputs)
    prompt = sum(prompt_lens)
    cached = sum(o.num_cached_tokens for o in outputs if o.index == 0)
    body: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "ttft_s": None,
        "tpot_s": None,
        "latency_s": None,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    if not outputs:
        return body
    arrivals = [o.arrival_time for o in outputs if o.arrival_time]
    firsts = [o.first_token_time for o in outputs if o.first_token_time is not None]
    finishes = [o.finish_time for o in outputs if o.finish_time is not None]
    if arrivals and firsts:
        body["ttft_s"] = min(firsts) - min(arrivals)
    if arrivals and finishes and all(o.finished for o in outputs):
        body["latency_s"] = max(finishes) - min(arrivals)
    tpots = [t for o in outputs if (t := request_timing(o)["tpot_s"]) is not None]
    if tpots and not hide_output:
        body["tpot_s"] = sum(tpots) / len(tpots)
    return body


def finish_reason(output: RequestOutput, hide_output: bool = False) -> str | None:
    if not output.finished:
        return None
    # Scoring-only requests (max_tokens=0) stop at their (hidden) length budget.
    return "length" if hide_output else (output.finish_reason or "stop")


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event carrying a JSON payload."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def collect_until_done(
    stream: AsyncIterator[tuple[int, RequestOutput]], raw_request: Request
) -> list[tuple[int, RequestOutput]]:
    """Drain an engine stream for a non-streaming response. A client that hangs up meanwhile
    cancels the drain, which aborts its request in the engine (and frees its KV blocks)."""

    async def drain() -> list[tuple[int, RequestOutput]]:
        return [item async for item in stream]

    task = asyncio.ensure_future(drain())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await raw_request.is_disconnected():
                task.cancel()
                raise APIError("client disconnected", status=499)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        # Close the generator now (runs its abort) rather than whenever it is collected.
        await stream.aclose()


_DISCONNECT_POLL_S = 0.5


class SSEResponse(StreamingResponse):
    """A text/event-stream response that notices a client hanging up even while no token is due
    (it listens for http.disconnect the whole time) and then closes the event generator at once,
    which aborts the request in the engine and frees its KV blocks."""

    def __init__(self, events: AsyncIterator[str]):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the socket died under us
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(watch)
        finally:
            await self.body_iterator.aclose()

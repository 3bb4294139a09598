"""One timed request to a serving backend (seeds/003 §4.3).

Each ``async_request_*`` function sends one ``RequestFuncInput`` and returns a
``RequestFuncOutput`` with the client-side timings the benchmark aggregates:

- ``ttft``: request sent -> first chunk carrying generated text;
- ``itl``: the gap before each later chunk carrying text (one entry per chunk, so a chunk holding
  several tokens counts once: inter-*chunk* latency, as vLLM measures it);
- ``latency``: request sent -> last chunk (E2EL);
- ``output_tokens``: from the server's ``usage`` when it reports one (OpenAI protocols, asked with
  ``stream_options.include_usage``), else 0 and the benchmark counts tokens of the text itself.

Timings use ``time.perf_counter``. Errors never raise: ``success=False`` and ``error`` say why.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from atom import envs

# Six hours: a benchmark at high concurrency can queue requests for a long time.
AIOHTTP_TIMEOUT = aiohttp.ClientTimeout(total=6 * 60 * 60)


@dataclass
class RequestFuncInput:
    prompt: str | list[int]
    api_url: str
    prompt_len: int
    output_len: int
    model: str
    model_name: str | None = None  # the name sent in the request (default: model)
    logprobs: int | None = None
    extra_body: dict | None = None  # merged into the JSON payload (sampling params, ...)
    ignore_eos: bool = False
    api_key: str | None = None  # default: $OPENAI_API_KEY


@dataclass
class RequestFuncOutput:
    generated_text: str = ""
    success: bool = False
    latency: float = 0.0
    output_tokens: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    tpot: float = 0.0
    prompt_len: int = 0
    error: str = ""


def _headers(request: RequestFuncInput) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    key = request.api_key or envs.openai_api_key()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def iter_sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The ``data:`` payloads of a server-sent event stream, as they arrive. Events are split on
    blank lines ourselves rather than with readline(), whose line limit a big chunk (many
    logprobs) can pass; comment lines (": ping") and other fields are skipped."""
    buffer = b""
    async for piece in response.content.iter_any():
        buffer += piece.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.decode("utf-8").split("\n"):
                if line.startswith("data:"):
                    yield line[5:].strip()
    if buffer.strip():
        for line in buffer.decode("utf-8").split("\n"):
            if line.startswith("data:"):
                yield line[5:].strip()


class _Clock:
    """Collects the timings of one streamed response."""

    def __init__(self, output: RequestFuncOutput):
        self.output = output
        self.start = time.perf_counter()
        self.last = self.start

    def chunk(self) -> None:
        now = time.perf_counter()
        if self.output.ttft == 0.0:
            self.output.ttft = now - self.start
        else:
            self.output.itl.append(now - self.last)
        self.last = now

    def finish(self) -> None:
        self.output.latency = self.last - self.start


def _fail(output: RequestFuncOutput, message: str) -> RequestFuncOutput:
    output.success = False
    output.error = message
    return output


async def _post_stream(
    request: RequestFuncInput,
    payload: dict,
    on_data: Callable[[dict, _Clock], None],
    pbar=None,
) -> RequestFuncOutput:
    """POST ``payload`` and feed each JSON event of the SSE answer to ``on_data``."""
    output = RequestFuncOutput(prompt_len=request.prompt_len)
    if request.extra_body:
        payload.update(request.extra_body)
    async with aiohttp.ClientSession(trust_env=True, timeout=AIOHTTP_TIMEOUT) as session:
        clock = _Clock(output)
        try:
            async with session.post(request.api_url, json=payload, headers=_headers(request)) as r:
                if r.status != 200:
                    return _fail(output, f"HTTP {r.status}: {(await r.text())[:500]}")
                async for data in iter_sse_data(r):
                    if data == "[DONE]":
                        continue
                    event = json.loads(data)
                    if "error" in event:
                        return _fail(output, f"server error: {event['error']}")
                    on_data(event, clock)
            clock.finish()
            if output.ttft == 0.0:
                return _fail(output, "the stream carried no generated text")
            output.success = True
        except Exception:  # noqa: BLE001 - a benchmark records failures, it does not stop
            _fail(output, "".join(traceback.format_exception(*sys.exc_info())))
    if pbar is not None:
        pbar.update(1)
    return output


async def async_request_openai_completions(request: RequestFuncInput, pbar=None):
    if not request.api_url.endswith(("completions", "profile")):
        raise ValueError(f"api_url {request.api_url!r} must end with 'completions'")
    payload = {
        "model": request.model_name or request.model,
        "prompt": request.prompt,
        "temperature": 0.0,
        "max_tokens": request.output_len,
        "logprobs": request.logprobs,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": request.ignore_eos,
    }

    def on_data(event: dict, clock: _Clock) -> None:
        choices = event.get("choices") or []
        if choices and choices[0].get("text"):
            clock.chunk()
            clock.output.generated_text += choices[0]["text"]
        if event.get("usage"):
            clock.output.output_tokens = event["usage"].get("completion_tokens", 0)

    return await _post_stream(request, payload, on_data, pbar)


async def async_request_openai_chat_completions(request: RequestFuncInput, pbar=None):
    if not request.api_url.endswith(("chat/completions", "profile")):
        raise ValueError(f"api_url {request.api_url!r} must end with 'chat/completions'")
    payload = {
        "model": request.model_name or request.model,
        "messages": [{"role": "user", "content": request.prompt}],
        "temperature": 0.0,
        "max_completion_tokens": request.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": request.ignore_eos,
    }

    def on_data(event: dict, clock: _Clock) -> None:
        choices = event.get("choices") or []
        if choices and (content := (choices[0].get("delta") or {}).get("content")):
            clock.chunk()
            clock.output.generated_text += content
        if event.get("usage"):
            clock.output.output_tokens = event["usage"].get("completion_tokens", 0)

    return await _post_stream(request, payload, on_data, pbar)


async def async_request_tgi(request: RequestFuncInput, pbar=None):
    """Hugging Face TGI: POST .../generate_stream, events ``{"token": {"text"}, ...}``."""
    if not request.api_url.endswith("generate_stream"):
        raise ValueError(f"api_url {request.api_url!r} must end with 'generate_stream'")
    params = {
        "max_new_tokens": request.output_len,
        "do_sample": True,
        "temperature": 0.01,  # TGI rejects 0; near-greedy
        "top_p": 0.99,
        "truncate": request.prompt_len,
        "ignore_eos_token": request.ignore_eos,
    }
    payload = {"inputs": request.prompt, "parameters": params}

    def on_data(event: dict, clock: _Clock) -> None:
        token = event.get("token") or {}
        if token.get("special"):
            return
        clock.chunk()
        clock.output.generated_text += token.get("text", "")

    return await _post_stream(request, payload, on_data, pbar)


async def async_request_trt_llm(request: RequestFuncInput, pbar=None):
    """TensorRT-LLM (Triton server): POST .../generate_stream, events ``{"text_output"}``."""
    if not request.api_url.endswith("generate_stream"):
        raise ValueError(f"api_url {request.api_url!r} must end with 'generate_stream'")
    payload = {
        "text_input": request.prompt,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": request.output_len,
        "stream": True,
    }
    if request.ignore_eos:
        payload["min_length"] = request.output_len

    def on_data(event: dict, clock: _Clock) -> None:
        clock.chunk()
        clock.output.generated_text += event.get("text_output", "")

    return await _post_stream(request, payload, on_data, pbar)


async def async_request_deepspeed_mii(request: RequestFuncInput, pbar=None):
    """DeepSpeed-MII answers in one piece, so TTFT can only be the whole latency."""
    output = RequestFuncOutput(prompt_len=request.prompt_len)
    payload = {"prompt": request.prompt, "max_tokens": request.output_len,
               "temperature": 0.01, "top_p": 1.0}  # fmt: skip
    if request.extra_body:
        payload.update(request.extra_body)
    start = time.perf_counter()
    async with aiohttp.ClientSession(trust_env=True, timeout=AIOHTTP_TIMEOUT) as session:
        try:
            async with session.post(request.api_url, json=payload, headers=_headers(request)) as r:
                if r.status != 200:
                    _fail(output, f"HTTP {r.status}: {(await r.text())[:500]}")
                else:
                    body = await r.json(content_type=None)
                    text = body.get("text", "")
                    output.generated_text = text[0] if isinstance(text, list) else str(text)
                    output.latency = output.ttft = time.perf_counter() - start
                    output.success = True
        except Exception:  # noqa: BLE001
            _fail(output, "".join(traceback.format_exception(*sys.exc_info())))
    if pbar is not None:
        pbar.update(1)
    return output


RequestFunc = Callable[..., Awaitable[RequestFuncOutput]]

ASYNC_REQUEST_FUNCS: dict[str, RequestFunc] = {
    "tgi": async_request_tgi,
    "vllm": async_request_openai_completions,
    "lmdeploy": async_request_openai_completions,
    "deepspeed-mii": async_request_deepspeed_mii,
    "openai": async_request_openai_completions,
    "openai-chat": async_request_openai_chat_completions,
    "tensorrt-llm": async_request_trt_llm,
    "scalellm": async_request_openai_completions,
    "sglang": async_request_openai_completions,
}

OPENAI_COMPATIBLE_BACKENDS = [
    name
    for name, fn in ASYNC_REQUEST_FUNCS.items()
    if fn in (async_request_openai_completions, async_request_openai_chat_completions)
]

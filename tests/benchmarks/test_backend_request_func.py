"""The request functions of each backend against a small local HTTP server that answers in that
backend's wire format (the OpenAI protocols are also covered against ATOM's own server in
tests/entrypoints/test_benchmark_serving.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from atom.benchmarks.backend_request_func import (
    ASYNC_REQUEST_FUNCS,
    OPENAI_COMPATIBLE_BACKENDS,
    RequestFuncInput,
)

GAP_S = 0.05


def sse_events(payloads: list[dict]) -> list[bytes]:
    return [f"data: {json.dumps(p)}\n\n".encode() for p in payloads] + [b"data: [DONE]\n\n"]


FRAMES = {
    "/v1/completions": sse_events(
        [{"choices": [{"text": t}]} for t in ("Hel", "lo", " world")]
        + [{"choices": [], "usage": {"completion_tokens": 3}}]
    ),
    "/v1/chat/completions": sse_events(
        [{"choices": [{"delta": {"role": "assistant", "content": ""}}]}]
        + [{"choices": [{"delta": {"content": t}}]} for t in ("Hel", "lo", " world")]
        + [{"choices": [], "usage": {"completion_tokens": 3}}]
    ),
    "/generate_stream": sse_events([{"token": {"text": t, "special": False}} for t in ("Hel", "lo", " world")]),
    "/v2/models/ensemble/generate_stream": sse_events([{"text_output": t} for t in ("Hel", "lo", " world")]),
}  # fmt: skip


async def serve(handler_log: list) -> tuple[web.AppRunner, str]:
    async def stream(request: web.Request):
        handler_log.append(
            (request.path, await request.json(), request.headers.get("Authorization"))
        )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, frame in enumerate(FRAMES[request.path]):
            if i:
                await asyncio.sleep(GAP_S)
            # Split each event at an awkward place: the client must reassemble it.
            await resp.write(frame[:7])
            await resp.write(frame[7:])
        await resp.write_eof()
        return resp

    async def mii(request: web.Request):
        handler_log.append((request.path, await request.json(), None))
        return web.json_response({"text": ["Hello world"]})

    async def fail(request: web.Request):
        return web.json_response({"error": "overloaded"}, status=503)

    app = web.Application()
    for path in FRAMES:
        app.router.add_post(path, stream)
    app.router.add_post("/mii/generate", mii)
    app.router.add_post("/fail/v1/completions", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


ROUTES = {"vllm": "/v1/completions", "openai-chat": "/v1/chat/completions",
          "tgi": "/generate_stream", "tensorrt-llm": "/v2/models/ensemble/generate_stream"}  # fmt: skip


@pytest.mark.parametrize("backend", sorted(ROUTES))
def test_streaming_backends(backend):
    async def run():
        log: list = []
        runner, base = await serve(log)
        try:
            req = RequestFuncInput(prompt="Say hello", api_url=base + ROUTES[backend],
                                   prompt_len=2, output_len=3, model="m", ignore_eos=True,
                                   api_key="secret")  # fmt: skip
            return await ASYNC_REQUEST_FUNCS[backend](req), log
        finally:
            await runner.cleanup()

    out, log = asyncio.run(run())
    assert out.success, out.error
    assert out.generated_text == "Hello world"
    assert len(out.itl) == 2  # three text chunks: one TTFT and two gaps
    assert all(gap >= GAP_S * 0.8 for gap in out.itl)
    assert out.ttft > 0 and out.latency >= out.ttft + sum(out.itl) - 1e-6
    if backend in OPENAI_COMPATIBLE_BACKENDS:
        assert out.output_tokens == 3  # from the usage chunk
        path, body, auth = log[0]
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["ignore_eos"] is True and auth == "Bearer secret"


def test_deepspeed_mii_and_http_errors():
    async def run():
        log: list = []
        runner, base = await serve(log)
        try:
            ok = await ASYNC_REQUEST_FUNCS["deepspeed-mii"](
                RequestFuncInput("hi", base + "/mii/generate", 1, 4, "m")
            )
            bad = await ASYNC_REQUEST_FUNCS["openai"](
                RequestFuncInput("hi", base + "/fail/v1/completions", 1, 4, "m")
            )
            return ok, bad
        finally:
            await runner.cleanup()

    ok, bad = asyncio.run(run())
    assert ok.success and ok.generated_text == "Hello world" and ok.ttft == ok.latency > 0
    assert not bad.success and "503" in bad.error and "overloaded" in bad.error


def test_every_seed_backend_is_registered():
    assert set(ASYNC_REQUEST_FUNCS) == {"tgi", "vllm", "lmdeploy", "deepspeed-mii", "openai",
                                        "openai-chat", "tensorrt-llm", "scalellm", "sglang"}  # fmt: skip

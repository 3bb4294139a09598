"""When the engine fails mid-step the server says so: open requests get an error, /health turns
503 with the reason, new requests get 503. A tiny random Llama serves in-process (uvicorn in a
thread) so that the failure can be injected into its model runner."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from atom.entrypoints.openai_server import build_app, make_context


@pytest.fixture
def tiny_server(make_tiny_llama):
    from atom import LLMEngine

    engine = LLMEngine(model=str(make_tiny_llama(tokenizer=True)), num_kv_blocks=32,
                       max_model_len=128)  # fmt: skip
    ctx = make_context(engine, ["tiny"], "tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(ctx), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.05)
    yield url, engine
    server.should_exit = True
    thread.join(30)


def test_engine_failure_is_reported(tiny_server):
    url, engine = tiny_server
    ok = httpx.post(
        url + "/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 3}, timeout=60
    )
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
    assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"

    def broken_run(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    engine.runner.run = broken_run
    # A streaming request open at the time of failure gets an SSE error event, then [DONE].
    with httpx.stream("POST", url + "/v1/completions", timeout=60,
                      json={"prompt": [5, 6, 7], "max_tokens": 5, "stream": True}) as resp:  # fmt: skip
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][len("data: ") :])["error"]
    assert error["code"] == 503 and "simulated device failure" in error["message"]

    health = httpx.get(url + "/health", timeout=30)
    assert health.status_code == 503
    assert "simulated device failure" in health.json()["error"]
    refused = httpx.post(url + "/v1/completions", json={"prompt": [5], "max_tokens": 2}, timeout=30)
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "service_unavailable"
    metrics = httpx.get(url + "/metrics", timeout=30).text
    assert 'atom:engine_healthy{model_name="tiny"} 0.0' in metrics

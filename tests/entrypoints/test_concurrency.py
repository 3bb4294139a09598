"""Many clients share one engine; clients that leave free their KV blocks; /health and /metrics
report the engine's real state."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import openai

NUM_CLIENTS = 64


def metric(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets)."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    return sum(float(m.group(2)) for m in pattern.finditer(text))


def test_64_concurrent_streams_complete_and_free_every_block(server):
    before = httpx.get(server.url + "/metrics", timeout=30).text
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=server.api_key,
                                max_retries=0, timeout=300)  # fmt: skip

    async def one(i: int) -> tuple[str, str | None, int]:
        stream = await client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": f"Count to {i}."}],
            max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        text, reason, tokens = "", None, 0
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                reason = choice.finish_reason or reason
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return text, reason, tokens

    async def run():
        try:
            return await asyncio.gather(*(one(i) for i in range(NUM_CLIENTS)))
        finally:
            await client.close()

    results = asyncio.run(run())
    assert len(results) == NUM_CLIENTS
    for text, reason, tokens in results:
        assert reason in ("stop", "length") and 1 <= tokens <= 6 and text
    engine = server.wait_until_idle()
    assert engine["free_blocks"] == engine["total_blocks"] > 0
    after = httpx.get(server.url + "/metrics", timeout=30).text
    finished = metric(after, "atom:request_success_total") - metric(
        before, "atom:request_success_total"
    )
    assert finished == NUM_CLIENTS
    ttft = metric(after, "atom:time_to_first_token_seconds_count")
    assert ttft - metric(before, "atom:time_to_first_token_seconds_count") == NUM_CLIENTS
    assert metric(after, "atom:num_requests_running") == 0
    assert metric(after, "atom:kv_cache_usage_perc") == 0
    assert metric(after, "atom:kv_cache_free_blocks") == engine["total_blocks"]
    for name in ("atom:e2e_request_latency_seconds_bucket", "atom:time_per_output_token_seconds_sum",
                 "atom:prefix_cache_hit_rate", "atom:num_requests_waiting"):  # fmt: skip
        assert name in after


def test_clients_that_disconnect_free_their_blocks(server):
    before = metric(
        httpx.get(server.url + "/metrics", timeout=30).text, "atom:generation_tokens_total"
    )
    body = {"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "stream": True}

    async def leave_after_two_chunks(client: httpx.AsyncClient) -> int:
        received = 0
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    received += 1
                    if received == 2:
                        break  # closing the stream drops the connection
        return received

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers,
                                     timeout=120) as client:  # fmt: skip
            return await asyncio.gather(*(leave_after_two_chunks(client) for _ in range(6)))

    assert asyncio.run(run()) == [2] * 6
    engine = server.wait_until_idle(timeout_s=30)
    assert engine["free_blocks"] == engine["total_blocks"]
    generated = metric(httpx.get(server.url + "/metrics", timeout=30).text,
                       "atom:generation_tokens_total") - before  # fmt: skip
    assert generated < 6 * 400 / 2  # aborted long before their 400 tokens


def test_non_streaming_client_that_leaves_frees_blocks(server):
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True})
    try:
        httpx.post(server.url + "/v1/completions", content=body, headers=server.headers,
                   timeout=1.5)  # fmt: skip
        raise AssertionError("400 tokens should take longer than the client's patience")
    except httpx.TimeoutException:
        pass
    engine = server.wait_until_idle(timeout_s=30)
    assert engine["free_blocks"] == engine["total_blocks"]


def test_event_loop_answers_while_the_engine_works(server):
    """A long generation runs in the engine thread; /health and /v1/models keep answering."""
    body = {"prompt": "Once upon a time", "max_tokens": 60, "ignore_eos": True}

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers,
                                     timeout=120) as client:  # fmt: skip
            long = asyncio.create_task(client.post("/v1/completions", json=body))
            await asyncio.sleep(0.5)
            latencies = []
            for _ in range(5):
                t0 = time.perf_counter()
                resp = await client.get("/v1/models")
                latencies.append(time.perf_counter() - t0)
                assert resp.status_code == 200
                health = (await client.get("/health")).json()
                assert health["status"] == "ok"
            assert not long.done()  # the answers came while it was still generating
            await long
            return latencies, health

    latencies, health = asyncio.run(run())
    assert max(latencies) < 2.0, latencies
    assert health["engine"]["running"] == 1


def test_prefix_cache_hits_show_in_usage_and_metrics(server):
    before = httpx.get(server.url + "/metrics", timeout=30).text
    prompt = "A long shared preamble that several requests repeat word for word. " * 4
    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0}
    first = httpx.post(
        server.url + "/v1/completions", json=body, headers=server.headers, timeout=60
    )
    second = httpx.post(
        server.url + "/v1/completions", json=body, headers=server.headers, timeout=60
    )
    assert first.json()["choices"][0]["text"] == second.json()["choices"][0]["text"]
    prompt_tokens = second.json()["usage"]["prompt_tokens"]
    cached = second.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert prompt_tokens > 32 and cached >= 32  # the full 16-token blocks of the repeated prompt
    after = httpx.get(server.url + "/metrics", timeout=30).text
    assert metric(after, "atom:prefix_cache_hits") - metric(before, "atom:prefix_cache_hits") >= 32
    assert 0 < metric(after, "atom:prefix_cache_hit_rate") <= 1

"""Raw HTTP: SSE framing and every error case, each answered in OpenAI's error format with the
right status; after each one the server still serves."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "Hi"}]


def post(server, path: str, body, headers=None, **kw) -> httpx.Response:
    content = json.dumps(body) if isinstance(body, (dict, list)) else body  # bytes or a generator
    return httpx.post(server.url + path, content=content,
                      headers={**server.headers, **(headers or {})}, timeout=60, **kw)  # fmt: skip


def assert_error(resp: httpx.Response, status: int, param: str | None = "<any>") -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] == status
    if param != "<any>":
        assert error["param"] == param, error
    return error


def assert_still_serving(server) -> None:
    assert server.health()["status"] == "ok"
    resp = post(server, COMPLETIONS, {"prompt": "Hello", "max_tokens": 1})
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 1


def parse_sse(raw: str) -> list[str]:
    """The data payloads of an SSE body, checking the framing: events separated by a blank line,
    each one `data: ...` line."""
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    for e in events:
        assert e.startswith("data: ") and "\n" not in e, repr(e)
    return [e[len("data: ") :] for e in events]


@pytest.mark.parametrize("path, body", [
    (CHAT, {"messages": MESSAGES, "max_tokens": 4, "stream": True}),
    (COMPLETIONS, {"prompt": "Hello", "max_tokens": 4, "stream": True,
                   "stream_options": {"include_usage": True}}),
])  # fmt: skip
def test_sse_framing(server, path, body):
    with httpx.stream("POST", server.url + path, json=body, headers=server.headers,
                      timeout=60) as resp:  # fmt: skip
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = "".join(resp.iter_text())
    payloads = parse_sse(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    expected_object = "chat.completion.chunk" if path == CHAT else "text_completion"
    assert {c["object"] for c in chunks} == {expected_object}
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["model"] == server.model and isinstance(c["created"], int) for c in chunks)
    reasons = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert len(reasons) == 1
    if "stream_options" in body:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


ERROR_CASES = [
    # (name, path, body, status, param)
    ("malformed json", CHAT, b'{"messages": [', 400, None),
    ("not an object", CHAT, b"[1, 2]", 400, None),
    ("max_tokens as string", CHAT, {"messages": MESSAGES, "max_tokens": "5"}, 400, "max_tokens"),
    ("messages as string", CHAT, {"messages": "hi"}, 400, "messages"),
    ("temperature as string", CHAT, {"messages": MESSAGES, "temperature": "hot"}, 400, "temperature"),
    ("stream as int", COMPLETIONS, {"prompt": "a", "stream": 1}, 400, "stream"),
    ("bad role", CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ("no messages", CHAT, {"messages": []}, 400, "messages"),
    ("no prompt", COMPLETIONS, {"max_tokens": 3}, 400, "prompt"),
    ("empty prompt", COMPLETIONS, {"prompt": ""}, 400, "prompt"),
    ("token id out of vocab", COMPLETIONS, {"prompt": [1, 10**9]}, 400, "prompt"),
    ("temperature too high", CHAT, {"messages": MESSAGES, "temperature": 3.0}, 400, "temperature"),
    ("top_p zero", CHAT, {"messages": MESSAGES, "top_p": 0.0}, 400, "top_p"),
    ("top_p above one", COMPLETIONS, {"prompt": "a", "top_p": 1.5}, 400, "top_p"),
    ("n zero", CHAT, {"messages": MESSAGES, "n": 0}, 400, "n"),
    ("negative max_tokens", CHAT, {"messages": MESSAGES, "max_tokens": -1}, 400, "max_tokens"),
    ("penalty out of range", CHAT, {"messages": MESSAGES, "presence_penalty": 5}, 400, "presence_penalty"),
    ("top_logprobs too many", CHAT, {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("top_logprobs without logprobs", CHAT, {"messages": MESSAGES, "top_logprobs": 2}, 400, "top_logprobs"),
    ("completion logprobs too many", COMPLETIONS, {"prompt": "a", "logprobs": 21}, 400, "logprobs"),
    ("negative seed", CHAT, {"messages": MESSAGES, "seed": -1}, 400, "seed"),
    ("min_p above one", CHAT, {"messages": MESSAGES, "min_p": 1.5}, 400, "min_p"),
    ("top_k below -1", CHAT, {"messages": MESSAGES, "top_k": -2}, 400, "top_k"),
    ("empty stop string", CHAT, {"messages": MESSAGES, "stop": [""]}, 400, "stop"),
    ("min_tokens above max_tokens", CHAT, {"messages": MESSAGES, "max_tokens": 2, "min_tokens": 5}, 400, "min_tokens"),
    ("reserved template kwarg", CHAT, {"messages": MESSAGES, "chat_template_kwargs": {"tokenize": True}}, 400, "chat_template_kwargs"),
    ("unknown model", CHAT, {"model": "gpt-9", "messages": MESSAGES}, 404, "model"),
    ("unknown model (completions)", COMPLETIONS, {"model": "gpt-9", "prompt": "a"}, 404, "model"),
    ("stream_options without stream", CHAT, {"messages": MESSAGES, "stream_options": {"include_usage": True}}, 400, "stream_options"),
]  # fmt: skip


@pytest.mark.parametrize("name, path, body, status, param", ERROR_CASES,
                         ids=[c[0] for c in ERROR_CASES])  # fmt: skip
def test_bad_requests(server, name, path, body, status, param):
    assert_error(post(server, path, body), status, param)
    assert_still_serving(server)


def test_prompt_over_max_model_len(server, tokenizer):
    long_prompt = [100] * (server.max_model_len + 10)
    error = assert_error(post(server, COMPLETIONS, {"prompt": long_prompt}), 400)
    assert str(server.max_model_len) in error["message"]
    long_text = "hello " * (server.max_model_len + 10)
    assert_error(post(server, CHAT, {"messages": [{"role": "user", "content": long_text}]}), 400)
    # The prompt fits but prompt + max_tokens does not.
    fits = [100] * (server.max_model_len - 10)
    assert_error(post(server, COMPLETIONS, {"prompt": fits, "max_tokens": 50}), 400, "max_tokens")
    # Without max_tokens the default (256) shrinks to what fits: 3 tokens here.
    nearly_full = [100] * (server.max_model_len - 3)
    resp = post(server, COMPLETIONS, {"prompt": nearly_full, "ignore_eos": True})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 3
    assert_still_serving(server)


def test_api_key_required(server):
    body = json.dumps({"messages": MESSAGES, "max_tokens": 1})
    missing = httpx.post(server.url + CHAT, content=body, timeout=30)
    assert_error(missing, 401)
    wrong = httpx.post(server.url + CHAT, content=body, timeout=30,
                       headers={"Authorization": "Bearer nope"})  # fmt: skip
    assert_error(wrong, 401)
    assert_error(httpx.post(server.url + "/start_profile", timeout=30), 401)
    assert_error(httpx.get(server.url + "/v1/models", timeout=30), 401)
    bad_client = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_client.models.list()
    # Health and metrics stay open (probes carry no key).
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    assert httpx.get(server.url + "/metrics", timeout=30).status_code == 200
    assert_still_serving(server)


def test_oversized_body(server):
    big = json.dumps({"prompt": "a" * (server.max_request_bytes + 10), "max_tokens": 1}).encode()
    assert_error(post(server, COMPLETIONS, big), 413)

    def chunked():  # no Content-Length: the server counts while reading
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    assert_error(post(server, COMPLETIONS, chunked()), 413)
    assert_still_serving(server)


def test_unknown_route_and_method(server):
    assert_error(httpx.get(server.url + "/v1/nothing", headers=server.headers, timeout=30), 404)
    assert_error(httpx.get(server.url + COMPLETIONS, headers=server.headers, timeout=30), 405)
    assert_still_serving(server)


def test_openai_client_maps_errors(client, server):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=server.model, messages=MESSAGES, temperature=9)


def test_prompt_alias_of_messages(server):
    resp = post(server, CHAT, {"prompt": MESSAGES, "max_tokens": 2})
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["role"] == "assistant"


def test_tokenize_routes(server, tokenizer):
    ids = httpx.post(server.url + "/tokenize", json={"prompt": "Hello world"}, timeout=30).json()
    assert ids["tokens"] == tokenizer.encode("Hello world")
    text = httpx.post(server.url + "/detokenize", json={"tokens": ids["tokens"]}, timeout=30)
    assert text.json()["prompt"] == "Hello world"
    info = httpx.get(server.url + "/tokenizer_info", timeout=30).json()
    assert info["eos_token"] == tokenizer.eos_token and info["chat_template"]


def test_profile_endpoints_write_traces(server):
    # Stopping a profiler that never started is the client's mistake: 400, the server lives on.
    assert_error(httpx.post(server.url + "/stop_profile", headers=server.headers, timeout=30), 400)
    before = set(server.profile_dir.rglob("*")) if server.profile_dir.exists() else set()
    started = httpx.post(server.url + "/start_profile", headers=server.headers, timeout=60)
    assert started.status_code == 200, started.text
    assert post(server, COMPLETIONS, {"prompt": "Hello", "max_tokens": 2}).status_code == 200
    stopped = httpx.post(server.url + "/stop_profile", headers=server.headers, timeout=120)
    assert stopped.status_code == 200, stopped.text
    traces = [p for p in set(server.profile_dir.rglob("*")) - before if p.is_file()]
    assert traces and all("rank_0" in p.parts for p in traces)
    assert_still_serving(server)

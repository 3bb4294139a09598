"""The official `openai` client against the real server: answers equal LLMEngine.generate."""

from __future__ import annotations

import math

import pytest

from atom import SamplingParams

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"


def chat_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def test_models_lists_the_served_model(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model]


def test_chat_greedy_equals_engine(client, engine, tokenizer, server):
    resp = client.chat.completions.create(model=server.model, messages=QUESTION, temperature=0,
                                          max_tokens=24)  # fmt: skip
    ref = engine.generate([chat_ids(tokenizer, QUESTION)],
                          SamplingParams(temperature=0, max_tokens=24))[0]  # fmt: skip
    choice = resp.choices[0]
    assert choice.message.content == ref["text"] == "The capital of France is Paris."
    assert choice.message.role == "assistant"
    assert choice.finish_reason == ref["finish_reason"] == "stop"
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    usage = resp.usage
    assert usage.prompt_tokens == ref["num_tokens_input"]
    assert usage.completion_tokens == ref["num_tokens_output"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extra = usage.model_extra
    assert 0 < extra["ttft_s"] <= extra["latency_s"] and extra["tpot_s"] > 0


def test_completion_greedy_equals_engine(client, engine, server):
    resp = client.completions.create(
        model=server.model, prompt=PROMPT, temperature=0, max_tokens=12
    )
    ref = engine.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12))[0]
    assert resp.choices[0].text == ref["text"] and ref["text"]
    assert resp.choices[0].finish_reason == ref["finish_reason"]
    assert resp.usage.completion_tokens == ref["num_tokens_output"]
    # Token ids as the prompt give the same answer as the text.
    ids = engine.tokenizer.encode(PROMPT)
    by_ids = client.completions.create(model=server.model, prompt=ids, temperature=0, max_tokens=12)
    assert by_ids.choices[0].text == ref["text"]


def test_chat_stream_equals_non_stream(client, server):
    kw = dict(model=server.model, messages=QUESTION, temperature=0, max_tokens=24)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_completion_stream_equals_non_stream(client, server):
    kw = dict(model=server.model, prompt=PROMPT, temperature=0, max_tokens=10)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n2_seeded_sampling_is_reproducible(client, server):
    kw = dict(model=server.model, messages=QUESTION, temperature=1.0, max_tokens=12, n=2, seed=7)
    first = client.chat.completions.create(**kw)
    again = client.chat.completions.create(**kw)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.message.content for c in again.choices]
    assert texts[0] != texts[1]  # the two choices sample with different derived seeds
    other = client.chat.completions.create(**{**kw, "seed": 8})
    assert [c.message.content for c in other.choices] != texts
    streamed = list(client.chat.completions.create(**kw, stream=True))
    per_choice = ["", ""]
    for c in streamed:
        for ch in c.choices:
            per_choice[ch.index] += ch.delta.content or ""
    assert per_choice == texts


def test_completion_batch_of_prompts_with_n(client, server, engine):
    prompts = [PROMPT, "One, two, three,"]
    resp = client.completions.create(model=server.model, prompt=prompts, temperature=0,
                                     max_tokens=6, n=2)  # fmt: skip
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    refs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=6))
    texts = [c.text for c in resp.choices]
    assert texts == [refs[0]["text"]] * 2 + [refs[1]["text"]] * 2
    assert resp.usage.completion_tokens == 2 * sum(r["num_tokens_output"] for r in refs)


def test_chat_logprobs_equal_engine(client, engine, tokenizer, server):
    resp = client.chat.completions.create(model=server.model, messages=QUESTION, temperature=0,
                                          max_tokens=8, logprobs=True, top_logprobs=3)  # fmt: skip
    ref = engine.generate([chat_ids(tokenizer, QUESTION)],
                          SamplingParams(temperature=0, max_tokens=8, logprobs=3))[0]  # fmt: skip
    content = resp.choices[0].logprobs.content
    assert len(content) == len(ref["token_ids"])
    for entry, token_id, ref_lp in zip(content, ref["token_ids"], ref["logprobs"]):
        assert entry.token == tokenizer.decode([token_id])
        assert entry.logprob == pytest.approx(ref_lp[token_id], abs=1e-4)
        assert len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the most likely
        assert bytes(entry.bytes).decode() == entry.token


def test_echo_scores_the_prompt(client, engine, server):
    """lm-eval's log-likelihood request: echo + logprobs + max_tokens=0."""
    resp = client.completions.create(model=server.model, prompt=PROMPT, echo=True, max_tokens=0,
                                     logprobs=1, temperature=0)  # fmt: skip
    ids = engine.tokenizer.encode(PROMPT)
    ref = engine.generate([ids], SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1))[0]
    choice = resp.choices[0]
    assert choice.text == PROMPT
    lp = choice.logprobs
    assert lp.tokens == [engine.tokenizer.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(ref["prompt_logprobs"][i][ids[i]], abs=1e-4)
        assert max(lp.top_logprobs[i].values()) >= lp.token_logprobs[i]
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(ids))]
    assert resp.usage.completion_tokens == 0 and resp.usage.prompt_tokens == len(ids)
    # Echo with generation: the prompt, then the same greedy text as without echo.
    plain = client.completions.create(
        model=server.model, prompt=PROMPT, max_tokens=4, temperature=0
    )
    echoed = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=4,
                                       temperature=0, echo=True, logprobs=0)  # fmt: skip
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert len(echoed.choices[0].logprobs.tokens) == len(ids) + echoed.usage.completion_tokens
    assert all(math.isfinite(x) for x in echoed.choices[0].logprobs.token_logprobs[1:])


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_cut_the_text(client, server, stream):
    kw = dict(model=server.model, messages=QUESTION, temperature=0, max_tokens=24, stream=stream)
    for stop in (" Paris", [" Paris", "zzz"]):
        resp = client.chat.completions.create(**kw, stop=stop)
        if stream:
            chunks = list(resp)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reason = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            text, reason = resp.choices[0].message.content, resp.choices[0].finish_reason
        assert text == "The capital of France is"
        assert reason == "stop"


def test_max_tokens_and_max_completion_tokens(client, server):
    resp = client.chat.completions.create(model=server.model, messages=QUESTION, temperature=0,
                                          max_completion_tokens=3)  # fmt: skip
    assert resp.usage.completion_tokens == 3 and resp.choices[0].finish_reason == "length"
    resp = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=5,
                                     temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
    assert resp.usage.completion_tokens == 5


def test_sampling_fields_are_accepted(client, server):
    resp = client.chat.completions.create(
        model=server.model, messages=QUESTION, max_tokens=4, temperature=0.7, top_p=0.9,
        presence_penalty=0.5, frequency_penalty=0.5, seed=1,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 4,
                    "chat_template_kwargs": {"enable_thinking": False}},
    )  # fmt: skip
    assert resp.usage.completion_tokens == 4

"""LLMEngine's SamplingParams end to end on the tiny random Llama: seeds, stop strings,
min/max tokens, EOS, n > 1, logprobs and prompt logprobs (against Hugging Face's logits)."""

from __future__ import annotations

import random

import pytest
import torch

from atom import SamplingParams

from .conftest import hf_greedy

PROMPT = [1500, 2300, 880, 41000, 77, 9000, 123, 4567, 222, 31000, 42]


def other_prompts(n: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 40000) for _ in range(rng.randint(3, 40))] for _ in range(n)]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from atom import LLMEngine

    return LLMEngine(model=str(tiny_model_dir), cpu_kv_cache_bytes=16 << 20)


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(engine, make_engine):
    sp = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=1234, max_tokens=16,
                        ignore_eos=True)  # fmt: skip
    alone = engine.generate([PROMPT], sp)[0]["token_ids"]
    assert engine.generate([PROMPT], sp)[0]["token_ids"] == alone
    others = other_prompts(7)
    mixed = [SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True),
             SamplingParams(temperature=0.0, max_tokens=9, ignore_eos=True),
             SamplingParams(temperature=0.7, seed=5, max_tokens=20, ignore_eos=True)]  # fmt: skip
    params = [mixed[i % 3] for i in range(7)]
    outs = engine.generate(others[:3] + [PROMPT] + others[3:], params[:3] + [sp] + params[3:])
    assert outs[3]["token_ids"] == alone
    # ... and under preemption with chunked prompts.
    small = make_engine(num_kv_blocks=10, block_size=8, max_model_len=80, max_num_batched_tokens=8)
    outs = small.generate(others[:3] + [PROMPT] + others[3:], params[:3] + [sp] + params[3:])
    assert outs[3]["token_ids"] == alone
    assert small.get_stats().extra["num_preemptions"] > 0
    # Another seed draws other tokens.
    other_seed = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=99, max_tokens=16,
                                ignore_eos=True)  # fmt: skip
    assert engine.generate([PROMPT], other_seed)[0]["token_ids"] != alone


def test_n_choices_are_independent_and_choice_0_keeps_the_seed(engine):
    sp = SamplingParams(temperature=1.0, seed=77, n=3, max_tokens=10, ignore_eos=True)
    out = engine.generate([PROMPT], sp)[0]
    choices = out["choices"]
    assert len(choices) == 3 and out["token_ids"] == choices[0]["token_ids"]
    assert len({tuple(c["token_ids"]) for c in choices}) == 3
    single = SamplingParams(temperature=1.0, seed=77, max_tokens=10, ignore_eos=True)
    assert engine.generate([PROMPT], single)[0]["token_ids"] == choices[0]["token_ids"]
    again = engine.generate([PROMPT], sp)[0]["choices"]
    assert [c["token_ids"] for c in again] == [c["token_ids"] for c in choices]


def test_max_tokens_gives_length(engine):
    out = engine.generate([PROMPT], SamplingParams(temperature=0, max_tokens=7, ignore_eos=True))[0]
    assert out["num_tokens_output"] == 7 and out["finish_reason"] == "length"
    assert out["num_tokens_input"] == len(PROMPT)
    assert out["latency"] >= out["ttft"] > 0 and out["tpot"] > 0


def test_max_model_len_ends_a_sequence(make_engine):
    engine = make_engine(max_model_len=len(PROMPT) + 3)
    out = engine.generate([PROMPT], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    assert out[0]["num_tokens_output"] == 3 and out[0]["finish_reason"] == "length"


def test_stop_string_across_tokens_is_removed(engine):
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    full = engine.generate([PROMPT], greedy)[0]
    tok = engine.tokenizer
    pieces = [tok.decode([t]) for t in full["token_ids"]]
    # A stop string made of the end of token 5's text and the start of token 6's.
    k = next(i for i in range(4, len(pieces) - 1) if pieces[i].strip() and pieces[i + 1].strip())
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    cut = full["text"].find(stop)
    sp = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop_strings=[stop])
    out = engine.generate([PROMPT], sp)[0]
    assert out["finish_reason"] == "stop" and out["stop_reason"] == stop
    assert out["text"] == full["text"][:cut]
    assert stop not in out["text"]
    assert out["token_ids"] == full["token_ids"][: len(out["token_ids"])]


def test_stop_token_ids_and_min_tokens(engine):
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    full = engine.generate([PROMPT], greedy)[0]["token_ids"]
    first = full[0]
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop_token_ids=[first])
    out = engine.generate([PROMPT], sp)[0]
    assert out["token_ids"] == [first]
    assert out["finish_reason"] == "stop" and out["stop_reason"] == first
    assert out["text"] == ""  # the stop token is not detokenized
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop_token_ids=[first],
                        min_tokens=4)  # fmt: skip
    out = engine.generate([PROMPT], sp)[0]
    assert first not in out["token_ids"][:4]
    assert len(out["token_ids"]) >= 4


def test_eos_stops_unless_ignored(engine, make_tiny_llama, make_engine):
    first = engine.generate([PROMPT], SamplingParams(temperature=0, max_tokens=1))[0]["token_ids"][
        0
    ]
    eos_model = make_tiny_llama(seed=0, tokenizer=True, eos_token_id=first)  # same weights
    eos_engine = make_engine(eos_model)
    out = eos_engine.generate([PROMPT], SamplingParams(temperature=0, max_tokens=10))[0]
    assert out["token_ids"] == [first] and out["finish_reason"] == "stop"
    out = eos_engine.generate(
        [PROMPT], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    )[0]
    assert len(out["token_ids"]) == 10 and out["finish_reason"] == "length"
    out = eos_engine.generate([PROMPT], SamplingParams(temperature=0, max_tokens=10, min_tokens=3))
    assert first not in out[0]["token_ids"][:3]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_num_batched_tokens": 5},  # prompt logprobs computed chunk by chunk
        {"num_kv_blocks": 14, "block_size": 4, "max_model_len": 56, "enable_prefix_caching": True},
    ],
    ids=["plain", "chunked", "preempted"],
)
def test_logprobs_and_prompt_logprobs_match_huggingface(make_engine, hf_tiny, options):
    engine = make_engine(**options)
    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=3,
                        prompt_logprobs=2)  # fmt: skip
    # PROMPT comes second: the newest sequence is the one preempted.
    out = engine.generate([other_prompts(1, seed=4)[0] * 2, PROMPT], sp)[1]
    if "num_kv_blocks" in options:
        assert engine.get_stats().extra["num_preemptions"] > 0
    tokens = out["token_ids"]
    assert tokens == hf_greedy(hf_tiny, PROMPT, 6)
    with torch.no_grad():
        logits = hf_tiny(torch.tensor([PROMPT + tokens[:-1]])).logits[0].float()
    lps = torch.log_softmax(logits, dim=-1)
    # Output token i is scored by the logits at position len(PROMPT) - 1 + i.
    assert len(out["logprobs"]) == len(tokens)
    for i, (tok, entry) in enumerate(zip(tokens, out["logprobs"])):
        row = lps[len(PROMPT) - 1 + i]
        assert list(entry)[0] == tok
        assert entry[tok] == pytest.approx(row[tok].item(), abs=1e-4)
        top = row.topk(3)
        assert set(top.indices.tolist()) <= set(entry)
        for t, v in zip(top.indices.tolist(), top.values.tolist()):
            assert entry[t] == pytest.approx(v, abs=1e-4)
    prompt_lps = out["prompt_logprobs"]
    assert len(prompt_lps) == len(PROMPT) and prompt_lps[0] is None
    for j in range(1, len(PROMPT)):
        row = lps[j - 1]
        assert prompt_lps[j][PROMPT[j]] == pytest.approx(row[PROMPT[j]].item(), abs=1e-4)
        assert set(row.topk(2).indices.tolist()) <= set(prompt_lps[j])

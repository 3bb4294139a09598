"""A request's greedy output does not depend on how it was scheduled: alone, in a batch of 16
mixed-length requests, with prefix caching, under preemption, with every prompt chunked. And it
is Hugging Face's greedy output (tiny random Llama, fp32)."""

from __future__ import annotations

import random

import pytest

from atom import SamplingParams

from .conftest import hf_greedy

NUM = 16


@pytest.fixture(scope="module")
def workload():
    """16 prompts of 10..70 tokens, several sharing prefixes (so the prefix cache has hits), and
    each its own max_tokens (4..20)."""
    rng = random.Random(0)
    shared = [rng.randrange(100, 40000) for _ in range(40)]
    prompts = []
    for i in range(NUM):
        n = rng.randint(10, 70)
        if i % 3 == 0:  # a shared prefix of 16..40 tokens, then its own tail
            cut = rng.randint(16, 40)
            tail = [rng.randrange(100, 40000) for _ in range(max(n - cut, 1))]
            prompts.append(shared[:cut] + tail)
        else:
            prompts.append([rng.randrange(100, 40000) for _ in range(n)])
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(4, 20), ignore_eos=True)
              for _ in range(NUM)]  # fmt: skip
    return prompts, params


@pytest.fixture(scope="module")
def alone(workload, tiny_model_dir):
    """Each request run by itself in one engine, in turn."""
    from atom import LLMEngine

    prompts, params = workload
    engine = LLMEngine(model=str(tiny_model_dir), cpu_kv_cache_bytes=16 << 20)
    return [engine.generate([p], sp)[0]["token_ids"] for p, sp in zip(prompts, params)]


def test_alone_matches_huggingface(workload, alone, hf_tiny):
    prompts, params = workload
    for i in (0, 1, 5):
        assert alone[i] == hf_greedy(hf_tiny, prompts[i], params[i].max_tokens)


def batch_outputs(make_engine, workload, **options):
    prompts, params = workload
    engine = make_engine(**options)
    outs = engine.generate(prompts, params)
    stats = engine.get_stats()
    assert stats.num_free_blocks == stats.num_total_blocks  # everything freed
    return [o["token_ids"] for o in outs], engine


def test_batch_of_16_matches_alone(make_engine, workload, alone):
    outs, _ = batch_outputs(make_engine, workload)
    assert outs == alone


def test_prefix_caching_matches_alone(make_engine, workload, alone):
    prompts, params = workload
    outs, engine = batch_outputs(make_engine, workload, enable_prefix_caching=True)
    assert outs == alone
    # Again: now every prompt's full blocks are cached.
    again = [o["token_ids"] for o in engine.generate(prompts, params)]
    assert again == alone
    stats = engine.get_stats()
    assert stats.prefix_cache_hits > 0.5 * sum(len(p) for p in prompts)


def test_preemption_matches_alone(make_engine, workload, alone):
    # 12 blocks of 16 tokens: 192 slots for 16 requests of up to 90 tokens each.
    outs, engine = batch_outputs(make_engine, workload, num_kv_blocks=12, block_size=16,
                                 max_model_len=128)  # fmt: skip
    assert engine.get_stats().extra["num_preemptions"] > 0
    assert outs == alone


def test_every_prompt_chunked_matches_alone(make_engine, workload, alone):
    outs, engine = batch_outputs(make_engine, workload, max_num_batched_tokens=7, block_size=4)
    assert outs == alone
    assert engine.num_steps > sum(len(p) for p in workload[0]) / 7


def test_everything_at_once_matches_alone(make_engine, workload, alone):
    outs, engine = batch_outputs(
        make_engine, workload, enable_prefix_caching=True, num_kv_blocks=24, block_size=8,
        max_num_batched_tokens=9, max_num_seqs=5, max_model_len=128,
    )  # fmt: skip
    assert outs == alone
    assert engine.get_stats().extra["num_preemptions"] > 0

"""Asynchronous scheduling (LLMEngine.step): a greedy decode step is launched before the previous
step's tokens are read, taking its input tokens on the device.

On the CPU the decode fast path runs without graphs (install_padded_decode), which exercises
the same launch / collect / placeholder bookkeeping; every test compares with the same engine
run synchronously (``async_scheduling=False``), token for token, and checks that the lookahead
really happened and that no KV block is lost.
"""

from __future__ import annotations

import random

import pytest

from atom import SamplingParams
from atom.engine.sequence import PLACEHOLDER_TOKEN

from .test_cuda_graph import install_padded_decode, prompts


def async_engine(make_engine, **kw):
    """An engine on the padded decode path that counts its launches: (engine, launches) where
    launches[i] says whether launch i took its tokens from the step before it."""
    engine = make_engine(**kw)
    install_padded_decode(engine)
    launches: list[bool] = []
    launch = engine.runner.launch_decode

    def counting(scheduled, after=None):
        launches.append(after is not None)
        return launch(scheduled, after)

    engine.runner.launch_decode = counting
    return engine, launches


def sync_tokens(make_engine, batch, params, **kw) -> list[list[int]]:
    engine = make_engine(async_scheduling=False, **kw)
    install_padded_decode(engine)
    return [o["token_ids"] for o in engine.generate(batch, params)]


def assert_all_blocks_free(engine):
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    assert not engine.has_unfinished_requests()


def test_staggered_lengths_give_the_synchronous_tokens(make_engine):
    """Requests of different lengths finish at different steps: each finish shrinks the next
    lookahead step (rows gathered from the step before), and the last one drains it."""
    rng = random.Random(0)
    batch = prompts(6, seed=10)
    params = [
        SamplingParams(temperature=0, max_tokens=rng.randint(1, 24), ignore_eos=True) for _ in batch
    ]
    want = sync_tokens(make_engine, batch, params, block_size=4)
    engine, launches = async_engine(make_engine, block_size=4)
    got = [o["token_ids"] for o in engine.generate(batch, params)]
    assert got == want
    assert sum(launches) > 10  # most decode steps were launched from the step before
    assert_all_blocks_free(engine)


def test_a_stop_token_met_in_flight_drops_the_extra_token(make_engine):
    """A request that stops on a token it learns only after the next step was launched: that
    step computed one token too many for it, which must not reach its output."""
    batch = prompts(3, seed=11)
    free = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    reference = sync_tokens(make_engine, batch, [free] * 3)
    stop_at = reference[1][6]  # request 1 stops at its 7th token (or earlier if it repeats)
    params = [free, SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop_at]), free]
    want = sync_tokens(make_engine, batch, params)
    engine, launches = async_engine(make_engine)
    outs = engine.generate(batch, params)
    assert [o["token_ids"] for o in outs] == want
    assert outs[1]["finish_reason"] == "stop" and len(want[1]) <= 7
    assert sum(launches) > 5
    assert_all_blocks_free(engine)


def test_stop_strings_and_streamed_text_match(make_engine):
    batch = prompts(2, seed=12)
    free = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    text = make_engine(async_scheduling=False).generate(batch, [free] * 2)[0]["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    params = [SamplingParams(temperature=0, max_tokens=16, stop_strings=[stop]), free]
    sync_engine = make_engine(async_scheduling=False)
    install_padded_decode(sync_engine)
    want = sync_engine.generate(batch, params)
    engine, _ = async_engine(make_engine)
    got = engine.generate(batch, params)
    assert [(o["text"], o["token_ids"], o["finish_reason"]) for o in got] == [
        (o["text"], o["token_ids"], o["finish_reason"]) for o in want
    ]
    assert_all_blocks_free(engine)


def test_abort_while_a_step_is_in_flight(make_engine):
    """Aborting between steps, while a launched step still holds the request's sequence: the
    others keep their tokens, the aborted request ends with only real tokens, blocks come back."""
    batch = prompts(3, seed=13)
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    want = sync_tokens(make_engine, batch, [sp] * 3)
    engine, launches = async_engine(make_engine)
    ids = engine.add_request(batch, sp)
    outputs = {}
    while engine._launched is None or not any(launches):
        for out in engine.step():
            outputs[out.request_id] = out
    engine.abort_request(ids[1])
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs[out.request_id] = out
    assert outputs[ids[0]].token_ids == want[0] and outputs[ids[2]].token_ids == want[2]
    aborted = engine.requests.get(ids[1])
    assert aborted is None  # gone from the engine
    assert_all_blocks_free(engine)


def test_aborted_output_has_no_placeholder(make_engine):
    batch = prompts(2, seed=14)
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    engine, launches = async_engine(make_engine)
    seen = []
    ids = engine.add_request(batch, sp, stream_callback=seen.append)
    while not any(launches):
        engine.step()
    engine.step()  # collects one launched step, launches the next
    engine.abort_request(ids[0])
    last = [o for o in seen if o.request_id == ids[0]][-1]
    assert last.finished and last.finish_reason == "abort"
    assert PLACEHOLDER_TOKEN not in last.token_ids
    while engine.has_unfinished_requests():
        engine.step()
    assert_all_blocks_free(engine)


def test_new_requests_are_admitted_between_lookahead_steps(make_engine):
    """A request that arrives while steps are in flight is admitted by the next normal step
    (lookahead pauses for it) and the running ones are unaffected."""
    first = prompts(2, seed=15)
    late = prompts(1, seed=16)
    sp = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    want_first = sync_tokens(make_engine, first, [sp] * 2)
    want_late = sync_tokens(make_engine, late, [sp])
    engine, launches = async_engine(make_engine)
    done = {}
    ids = engine.add_request(first, sp)
    for _ in range(4):
        for out in engine.step():
            done[out.request_id] = out
    assert any(launches)
    (late_id,) = engine.add_request(late, sp)
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out
    assert [done[i].token_ids for i in ids] == want_first
    assert done[late_id].token_ids == want_late[0]
    assert_all_blocks_free(engine)


@pytest.mark.parametrize("params_kind", ["sampling", "logprobs"])
def test_non_greedy_steps_stay_synchronous(make_engine, params_kind):
    """Seeded sampling and logprobs need the sampler on the host's schedule: no launches."""
    sp = (
        SamplingParams(temperature=0.8, seed=1, max_tokens=6, ignore_eos=True)
        if params_kind == "sampling"
        else SamplingParams(temperature=0, logprobs=2, max_tokens=6, ignore_eos=True)
    )
    batch = prompts(2, seed=17)
    want = sync_tokens(make_engine, batch, [sp] * 2)
    engine, launches = async_engine(make_engine)
    assert [o["token_ids"] for o in engine.generate(batch, sp)] == want
    assert launches == []


def test_lookahead_stops_short_of_a_block_shortage(make_engine):
    """With too few blocks the lookahead steps back and the normal step preempts as before."""
    batch = prompts(6, seed=18)
    sp = [SamplingParams(temperature=0, max_tokens=8 + 2 * i, ignore_eos=True) for i in range(6)]
    options = dict(num_kv_blocks=24, block_size=4, max_model_len=96)
    want = sync_tokens(make_engine, batch, sp, **options)
    engine, launches = async_engine(make_engine, **options)
    assert [o["token_ids"] for o in engine.generate(batch, sp)] == want
    assert any(launches) and engine.get_stats().extra["num_preemptions"] > 0
    assert_all_blocks_free(engine)

"""The scheduler without a model: budgets, ordering, chunked prefill, preemption, abort.

A stand-in "model" picks each next token as a function of the tokens so far, so every sequence's
final tokens are known in advance whatever the schedule; the driver also checks, every step, that
each scheduled chunk continues exactly where the sequence's computed tokens end.
"""

from __future__ import annotations

import random

import pytest

from atom.engine.block_manager import BlockManager
from atom.engine.scheduler import Scheduler
from atom.engine.sequence import Sequence, SequenceStatus
from atom.sampling_params import SamplingParams


def next_token(tokens: list[int]) -> int:
    return (sum(tokens) * 31 + len(tokens)) % 97


def expected_output(prompt: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(next_token(tokens))
    return tokens[len(prompt) :]


def make(prompt_len: int, max_tokens: int, rid: str = "r") -> Sequence:
    prompt = [random.randrange(97) for _ in range(prompt_len)]
    return Sequence(rid, 0, prompt, SamplingParams(max_tokens=max_tokens))


def run_to_completion(sched: Scheduler, seqs: list[Sequence], max_steps: int = 10_000):
    """Steps until every sequence finished; returns the per-step SchedulerOutputs."""
    for s in seqs:
        sched.add(s)
    history = []
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return history
        out = sched.schedule()
        assert out.num_tokens <= sched.max_num_batched_tokens
        assert len(sched.running) <= sched.max_num_seqs
        for s in out.scheduled:
            assert s.start == s.seq.num_computed_tokens
            assert 1 <= s.num_tokens <= s.seq.num_uncomputed_tokens
            capacity = len(s.seq.block_table) * sched.block_manager.block_size
            assert capacity >= s.start + s.num_tokens
        history.append(out)
        for seq in sched.postprocess(out):
            seq.append_token(next_token(seq.token_ids))
            if seq.num_output_tokens >= seq.params.max_tokens:
                sched.finish(seq, "length")
    raise AssertionError("the scheduler did not finish")


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)


def test_everything_finishes_and_nothing_leaks():
    bm = BlockManager(num_blocks=64, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=32)
    seqs = [make(random.randint(1, 40), random.randint(1, 12), str(i)) for i in range(10)]
    run_to_completion(sched, seqs)
    for s in seqs:
        assert s.status is SequenceStatus.FINISHED
        assert s.output_token_ids == expected_output(s.prompt_token_ids, s.params.max_tokens)
    assert bm.num_free_blocks == bm.num_blocks


def test_long_prompt_is_chunked_and_does_not_stall_decodes():
    bm = BlockManager(num_blocks=64, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=8)
    short = make(3, 20, "short")
    sched.add(short)
    sched.postprocess(sched.schedule())  # short's prompt
    short.append_token(1)
    long = make(50, 2, "long")
    sched.add(long)
    for _ in range(6):
        out = sched.schedule()
        by_id = {s.seq.request_id: s for s in out.scheduled}
        assert by_id["short"].num_tokens == 1  # the decode goes first, every step
        assert by_id["long"].num_tokens == 7  # the prompt takes what is left of the budget
        assert out.scheduled[0].seq is short  # batch in age order
        for seq in sched.postprocess(out):
            seq.append_token(1)
    assert long.num_computed_tokens == 42


def test_budgets_bound_each_step():
    bm = BlockManager(num_blocks=256, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=3, max_num_batched_tokens=10)
    seqs = [make(6, 3, str(i)) for i in range(7)]
    history = run_to_completion(sched, seqs)
    assert max(len(h.scheduled) for h in history) <= 3
    assert max(h.num_tokens for h in history) == 10


def test_preemption_recomputes_newest_and_output_is_unchanged():
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    seqs = [make(6, 14, str(i)) for i in range(4)]  # each needs 5 blocks at the end: 20 > 10
    history = run_to_completion(sched, seqs)
    preempted = [v for h in history for v in h.preempted]
    assert preempted, "the pool is too small for all four: someone must be preempted"
    assert sched.num_preemptions == len(preempted)
    for h in history:
        for victim in h.preempted:  # the victim was the newest running sequence
            assert all(s.seq.seq_id <= victim.seq_id for s in h.scheduled)
    for s in seqs:
        assert s.output_token_ids == expected_output(s.prompt_token_ids, 14)
    assert bm.num_free_blocks == bm.num_blocks


def test_preempted_sequence_goes_to_the_front_of_the_queue():
    bm = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    a, b = make(3, 10, "a"), make(3, 10, "b")
    sched.add(a)
    sched.add(b)
    sched.postprocess(sched.schedule())  # both prompts: 2 blocks each, all 4 used
    a.append_token(1)
    b.append_token(1)
    sched.postprocess(sched.schedule())  # both decode within their second block
    a.append_token(1)
    b.append_token(1)
    c = make(2, 1, "c")
    sched.add(c)
    out = sched.schedule()  # a needs a third block: b (newest) is preempted
    assert out.preempted == [b]
    assert [s.seq for s in out.scheduled] == [a]
    assert list(sched.waiting) == [b, c]
    assert b.status is SequenceStatus.WAITING and b.block_table == []


def test_abort_frees_blocks_in_any_state():
    bm = BlockManager(num_blocks=32, block_size=4, enable_prefix_caching=True)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=6)
    running, waiting = make(20, 5, "run"), make(4, 5, "wait")
    sched.add(running)
    sched.add(waiting)
    sched.postprocess(sched.schedule())  # running holds a partial prefill, waiting is queued
    assert running.status is SequenceStatus.RUNNING and bm.num_free_blocks < 32
    sched.finish(running, "abort")
    sched.finish(waiting, "abort")
    assert not sched.has_unfinished()
    assert bm.num_free_blocks == 32
    assert running.finish_reason == "abort"


def test_aborted_during_the_step_is_not_advanced():
    bm = BlockManager(num_blocks=32, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    s = make(5, 5)
    sched.add(s)
    out = sched.schedule()
    sched.finish(s, "abort")
    assert sched.postprocess(out) == []


def test_prefix_cache_hits_skip_computation():
    bm = BlockManager(num_blocks=32, block_size=4, enable_prefix_caching=True)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    prompt = list(range(13))
    first = Sequence("a", 0, prompt, SamplingParams(max_tokens=2))
    run_to_completion(sched, [first])
    second = Sequence("b", 0, prompt, SamplingParams(max_tokens=2))
    sched.add(second)
    out = sched.schedule()
    assert out.scheduled[0].start == 12 and out.scheduled[0].num_tokens == 1
    assert second.num_cached_tokens == 12


def test_scheduler_delay_factor_holds_new_prompts_while_others_run():
    bm = BlockManager(num_blocks=32, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64, scheduler_delay_factor=1e6)
    a = make(3, 50, "a")
    sched.add(a)
    sched.postprocess(sched.schedule())  # nothing running yet: admitted at once
    a.append_token(1)
    sched.schedule()
    b = make(3, 5, "b")
    sched.add(b)
    out = sched.schedule()
    assert [s.seq for s in out.scheduled] == [a]  # b waits (the delay is huge)
    sched.scheduler_delay_factor = 0.0
    out = sched.schedule()
    assert b in [s.seq for s in out.scheduled]

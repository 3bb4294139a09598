"""The decode fast path on the CPU: the padded persistent-buffer decode step that CUDA graphs
capture (run here without a graph), the pinned-staging input path, and the level table.

On a GPU the same DecodeGraphs object captures and replays graphs (tests/engine/
test_cuda_graph_gpu.py); here ``capture=False`` runs the identical padded step eagerly, so
padding, buffer filling and the greedy/sampler split are checked without a GPU.
"""

from __future__ import annotations

import random

import pytest
import torch

from atom import SamplingParams
from atom.engine.compile import LEVELS, FastPathPlan
from atom.engine.cuda_graph import DecodeBatch, DecodeGraphs, capture_sizes_for
from atom.engine.input_buffers import HostStaging


def install_padded_decode(engine, sizes=(1, 2, 4, 8), forward=None) -> DecodeGraphs:
    """Routes the engine's decode-only steps through DecodeGraphs without graphs (CPU)."""
    runner = engine.runner
    graphs = DecodeGraphs(
        forward or runner.decode_step_forward, sizes, runner.max_blocks_per_seq,
        runner.config.max_model_len, runner.device, runner.staging, capture=False,
    )  # fmt: skip
    graphs.capture()  # warm-up only
    runner.decode_graphs = graphs
    return graphs


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 40000) for _ in range(rng.randint(3, 30))] for _ in range(n)]


# --- sizes and levels -------------------------------------------------------------------------
def test_capture_sizes_are_capped_by_max_num_seqs():
    assert capture_sizes_for((1, 2, 4, 8, 16), 6) == (1, 2, 4)
    assert capture_sizes_for((8, 16), 5) == (5,)  # none small enough: max_num_seqs itself
    assert capture_sizes_for((4, 1, 4, 2), 512) == (1, 2, 4)


def test_size_for_pads_up_to_the_next_capture_size():
    graphs = DecodeGraphs(
        lambda *a: None, (1, 2, 4, 8), 4, 64, torch.device("cpu"), HostStaging(torch.device("cpu")),
        capture=False,
    )  # fmt: skip
    assert [graphs.size_for(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]
    with pytest.raises(ValueError, match="capture sizes"):
        DecodeGraphs(lambda *a: None, (), 4, 64, torch.device("cpu"), None)


@pytest.mark.parametrize(
    "level, enforce_eager, expected",
    [(0, False, (False, False)), (1, False, (False, True)), (2, False, (True, False)),
     (3, False, (True, True)), (3, True, (True, False)), (1, True, (False, False))],
)  # fmt: skip
def test_levels_on_a_gpu(level, enforce_eager, expected):
    plan = FastPathPlan.for_config(level, enforce_eager, on_gpu=True)
    assert (plan.compile, plan.graphs) == expected
    assert FastPathPlan.for_config(level, enforce_eager, on_gpu=False) == FastPathPlan(False, False)
    assert level in LEVELS


def test_unknown_level_is_rejected():
    with pytest.raises(ValueError, match="level=7"):
        FastPathPlan.for_config(7, False, on_gpu=True)


def test_cpu_engine_runs_eagerly_at_every_level(make_engine):
    engine = make_engine(level=3)
    assert engine.runner.fast_path == "eager" and engine.runner.decode_graphs is None


# --- host staging -----------------------------------------------------------------------------
def test_staging_pads_and_grows():
    st = HostStaging(torch.device("cpu"))
    st.begin()
    host = st.put("x", [5, 6, 7], torch.int64, pad_to=5, pad_value=-1)
    assert host.tolist() == [5, 6, 7, -1, -1]
    dev = st.to_device(host)
    big = st.put("x", list(range(1000)), torch.int64)  # grows past the first buffer
    assert big.tolist() == list(range(1000)) and dev.tolist() == [5, 6, 7, -1, -1]  # no alias
    rows = st.put_rows("t", [[1, 2], [3]], width=3)
    assert rows.shape == (2, 3) and rows[0, :2].tolist() == [1, 2] and rows[1, 0] == 3
    st.end()
    with pytest.raises(ValueError, match="pad_to=2"):
        st.put("x", [1, 2, 3], torch.int64, pad_to=2)
    with pytest.raises(ValueError, match="more than 2"):
        st.put_rows("t", [[1, 2, 3]], width=2)


# --- the padded decode step ---------------------------------------------------------------------
def test_padded_buffers_after_a_step(make_engine):
    # Synchronous steps: every input token comes from the host (test_async_scheduling.py covers
    # the tokens taken on the device).
    engine = make_engine(block_size=4, async_scheduling=False)
    graphs = install_padded_decode(engine)
    seen = []
    run = graphs.run

    def spy(batch: DecodeBatch):
        out = run(batch)
        size = graphs.size_for(batch.num_seqs)
        seen.append((batch, size, graphs.slot_mapping[:size].tolist(),
                     graphs.seq_lens[:size].tolist(), graphs.input_ids[:size].tolist()))  # fmt: skip
        return out

    graphs.run = spy
    engine.generate(prompts(3), SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert seen, "no decode step went through the padded path"
    for batch, size, slots, lens, ids in seen:
        n = batch.num_seqs
        assert size == 4 and n == 3
        assert slots == batch.slots + [-1] * (size - n)  # padding never writes the cache
        assert lens == batch.seq_lens + [0] * (size - n)  # and reads nothing
        assert ids[:n] == batch.input_ids
        for row, table in enumerate(batch.block_tables):
            assert graphs.block_tables[row, : len(table)].tolist() == table
    assert graphs.cu_seqlens_q[:9].tolist() == list(range(9))


def _generate(engine, batch, params):
    outs = engine.generate(batch, params)
    return [o["token_ids"] for o in outs], [o.get("logprobs") for o in outs]


def test_padded_decode_gives_the_eager_engines_tokens(make_engine):
    """Greedy, seeded-sampling, logprobs and penalty requests in one batch of 5 (padded to 8):
    the same tokens as the plain eager path; logprobs equal to fp32 rounding."""
    batch = prompts(5, seed=1)
    params = [
        SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
        SamplingParams(temperature=0.9, top_p=0.8, seed=3, max_tokens=8, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=6, logprobs=2, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=7, repetition_penalty=1.3, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=8, min_tokens=4),
    ]
    plain = make_engine()
    padded = make_engine()
    graphs = install_padded_decode(padded)
    run, sizes = graphs.run, []
    graphs.run = lambda batch, *prev: sizes.append(batch.num_seqs) or run(batch, *prev)
    want_tokens, want_lps = _generate(plain, batch, params)
    got_tokens, got_lps = _generate(padded, batch, params)
    assert got_tokens == want_tokens
    assert 5 in sizes  # the whole batch, padded to 8
    for got, want in zip(got_lps[2], want_lps[2]):
        assert got.keys() == want.keys()
        assert all(abs(got[t] - want[t]) < 1e-4 for t in got)
    # The caches hold the same K/V: padding rows wrote nothing (a stray write would differ).
    for (k1, v1), (k2, v2) in zip(plain.runner.kv_caches, padded.runner.kv_caches):
        torch.testing.assert_close(k2, k1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v2, v1, atol=1e-5, rtol=1e-5)


def test_batches_larger_than_the_largest_size_run_eagerly(make_engine):
    engine = make_engine()
    graphs = install_padded_decode(engine, sizes=(1, 2))
    calls = []
    run = graphs.run
    graphs.run = lambda batch, *prev: calls.append(batch.num_seqs) or run(batch, *prev)
    sp = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (3, 5, 7)]
    want = [o["token_ids"] for o in make_engine().generate(prompts(3, seed=2), sp)]
    assert [o["token_ids"] for o in engine.generate(prompts(3, seed=2), sp)] == want
    # Steps of 3 decodes took the eager path; those of 2 and 1 the padded one.
    assert sorted(set(calls)) == [1, 2]


def test_one_token_prefill_chunks_in_a_decode_only_step(make_engine):
    """A 1-token budget makes every step decode-shaped, prompts included: rows that do not
    sample (prompt chunks) are dropped before sampling."""
    sp = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    batch = prompts(2, seed=4)
    want = [o["token_ids"] for o in make_engine().generate(batch, sp)]
    engine = make_engine(max_num_batched_tokens=1)
    install_padded_decode(engine)
    assert [o["token_ids"] for o in engine.generate(batch, sp)] == want


def test_padded_decode_under_preemption_and_prefix_caching(make_engine):
    """Preempted sequences come back with new blocks and sequences change rows between steps:
    the block-table rows that the padded path keeps on the device must follow."""
    rng = random.Random(5)
    shared = [rng.randrange(100, 40000) for _ in range(20)]
    batch = [shared + p for p in prompts(8, seed=5)]
    sp = [SamplingParams(temperature=0, max_tokens=6 + 3 * i, ignore_eos=True) for i in range(8)]
    options = dict(num_kv_blocks=24, block_size=4, max_model_len=96, enable_prefix_caching=True)
    want = [o["token_ids"] for o in make_engine(**options).generate(batch, sp)]
    engine = make_engine(**options)
    install_padded_decode(engine)
    assert [o["token_ids"] for o in engine.generate(batch, sp)] == want
    assert engine.get_stats().extra["num_preemptions"] > 0


def test_rows_that_change_sequence_are_rewritten(make_engine):
    """Three prompts of equal length (equally long block tables): when the first finishes, the
    others move up a row, and each row must now hold the other sequence's blocks."""
    rng = random.Random(6)
    batch = [[rng.randrange(100, 40000) for _ in range(12)] for _ in range(3)]
    sp = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (2, 9, 9)]
    want = [o["token_ids"] for o in make_engine(block_size=4).generate(batch, sp)]
    engine = make_engine(block_size=4)
    install_padded_decode(engine)
    assert [o["token_ids"] for o in engine.generate(batch, sp)] == want

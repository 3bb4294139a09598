"""LLMEngine's request API: streaming callbacks, step/is_finished, abort, stats, bad input,
profiling."""

from __future__ import annotations

import gzip
import os

import pytest

from atom import SamplingParams
from atom.engine.outputs import RequestOutput
from atom.engine.startup_steps import profile_forward, warm_up_kernels, warm_up_shapes

PROMPT = [1500, 2300, 880, 41000, 77, 9000, 123]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from atom import LLMEngine

    return LLMEngine(model=str(tiny_model_dir), cpu_kv_cache_bytes=16 << 20)


def run(engine) -> list[RequestOutput]:
    finished = []
    while not engine.is_finished():
        finished += engine.step()
    return finished


def test_stream_callback_contract(engine):
    got: dict[tuple[str, int], list[RequestOutput]] = {}
    params = [
        SamplingParams(temperature=0, max_tokens=9, ignore_eos=True),
        SamplingParams(temperature=1.0, seed=3, max_tokens=5, ignore_eos=True, n=2),
    ]
    ids = engine.add_request(
        [PROMPT, "Hello there, 你好"], params, stream_callback=lambda o: got.setdefault(
            (o.request_id, o.index), []).append(o)
    )  # fmt: skip
    assert len(ids) == 2 and len(set(ids)) == 2
    finished = run(engine)
    assert sorted((o.request_id, o.index) for o in finished) == sorted(got)
    assert set(got) == {(ids[0], 0), (ids[1], 0), (ids[1], 1)}
    for outs in got.values():
        assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
        last = outs[-1]
        assert "".join(o.new_text for o in outs) == last.text
        assert [t for o in outs for t in o.new_token_ids] == last.token_ids
        assert last.finish_reason == "length"
        assert last.first_token_time is not None and last.finish_time >= last.first_token_time
    assert got[(ids[1], 0)][-1].prompt == "Hello there, 你好"
    assert got[(ids[0], 0)][-1].prompt_token_ids == PROMPT
    assert len(got[(ids[0], 0)][-1].token_ids) == 9


def test_abort_frees_everything_and_others_continue(engine):
    stats = engine.get_stats()
    total = stats.num_total_blocks
    seen = []
    a, b = engine.add_request(
        [PROMPT * 4, PROMPT], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
        stream_callback=seen.append,
    )  # fmt: skip
    engine.step()
    engine.step()
    assert engine.get_stats().num_free_blocks < total
    engine.abort_request(a)
    aborted = [o for o in seen if o.request_id == a and o.finished]
    assert len(aborted) == 1 and aborted[0].finish_reason == "abort"
    engine.abort_request(a)  # twice: ignored
    engine.abort_request("no-such-request")
    finished = run(engine)
    assert [o.request_id for o in finished] == [b]
    assert engine.get_stats().num_free_blocks == total


def test_abort_waiting_request(engine):
    (rid,) = engine.add_request([PROMPT], SamplingParams(max_tokens=3))
    assert engine.get_stats().num_waiting == 1
    engine.abort_request(rid)
    assert engine.is_finished()


def test_failing_callback_aborts_only_its_request(engine):
    def explode(out):
        raise RuntimeError("client went away")

    (bad,) = engine.add_request([PROMPT], SamplingParams(max_tokens=5), stream_callback=explode)
    (good,) = engine.add_request([PROMPT], SamplingParams(temperature=0, max_tokens=5))
    finished = run(engine)
    assert [o.request_id for o in finished] == [good]
    assert engine.get_stats().healthy


def test_stats(engine):
    stats = engine.get_stats()
    assert stats.healthy and stats.error is None
    assert stats.num_running == stats.num_waiting == 0
    assert stats.kv_usage == 0.0
    engine.add_request([PROMPT * 3], SamplingParams(max_tokens=2))
    engine.step()
    stats = engine.get_stats()
    assert stats.num_running == 1 and stats.kv_usage > 0
    run(engine)


@pytest.mark.parametrize(
    "prompt, params, match",
    [
        ([PROMPT], SamplingParams(), None),  # (valid, as a control)
        ([[5] * 200], SamplingParams(), "200 tokens"),
        ([[5, -1]], SamplingParams(), "-1"),
        ([[5, 10**9]], SamplingParams(), "1000000000"),
        ([[]], SamplingParams(), "empty"),
        ([PROMPT, PROMPT], [SamplingParams()], "1 SamplingParams for 2 prompts"),
        ([PROMPT], ["greedy"], "greedy"),
        ([3.5], SamplingParams(), "3.5"),
    ],
)
def test_bad_requests_raise_and_the_engine_keeps_serving(engine, prompt, params, match):
    (keep,) = engine.add_request([PROMPT], SamplingParams(temperature=0, max_tokens=4))
    engine.step()
    if match is None:
        engine.add_request(prompt, params)
    else:
        with pytest.raises(ValueError, match=match):
            engine.add_request(prompt, params)
    finished = run(engine)
    assert keep in [o.request_id for o in finished]
    assert engine.get_stats().healthy


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -0.5}, "temperature=-0.5"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"top_k": -2}, "top_k=-2"),
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"n": 0}, "n=0"),
        ({"min_p": 1.5}, "min_p=1.5"),
        ({"repetition_penalty": 0.0}, "repetition_penalty=0.0"),
        ({"presence_penalty": 3.0}, "presence_penalty=3.0"),
        ({"frequency_penalty": -2.5}, "frequency_penalty=-2.5"),
        ({"min_tokens": 10, "max_tokens": 5}, "min_tokens=10"),
        ({"logprobs": -1}, "logprobs=-1"),
        ({"prompt_logprobs": -1}, "prompt_logprobs=-1"),
        ({"stop_strings": [""]}, "stop_strings"),
        ({"stop_token_ids": [-3]}, "stop_token_ids=-3"),
        ({"seed": -1}, "seed=-1"),
        ({"temperature": "hot"}, "temperature='hot'"),
        ({"max_tokens": 2.5}, "max_tokens=2.5"),
    ],
)
def test_invalid_sampling_params_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_stop_strings_accepts_a_single_string():
    assert SamplingParams(stop_strings="END").stop_strings == ["END"]


def test_unknown_model_and_unknown_option(tmp_path):
    from atom import LLMEngine

    with pytest.raises(ValueError, match="no-such-model"):
        LLMEngine(model=str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match="max_model_length"):
        LLMEngine(max_model_length=10)


def test_profiler_writes_a_trace(make_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("ATOM_TORCH_PROFILER_DIR", str(tmp_path / "env"))
    engine = make_engine()
    assert engine.config.torch_profiler_dir == str(tmp_path / "env")
    monkeypatch.setenv("ATOM_PROFILER_MORE", "1")
    engine = make_engine(torch_profiler_dir=str(tmp_path / "traces"))
    assert engine.config.profiler_more
    engine.start_profile()
    with pytest.raises(RuntimeError, match="already running"):
        engine.start_profile()
    engine.generate([PROMPT], SamplingParams(max_tokens=2))
    trace_dir = engine.stop_profile()
    assert trace_dir == os.path.join(str(tmp_path / "traces"), "rank_0")
    files = os.listdir(trace_dir)
    assert files and all(f.endswith(".pt.trace.json.gz") for f in files)
    with gzip.open(os.path.join(trace_dir, files[0]), "rt") as f:
        trace = f.read()
    assert "Input Dims" in trace  # ATOM_PROFILER_MORE=1 records shapes


def test_profiler_without_a_directory_says_how_to_set_one(make_engine, monkeypatch):
    monkeypatch.delenv("ATOM_TORCH_PROFILER_DIR", raising=False)
    engine = make_engine()
    with pytest.raises(RuntimeError, match="ATOM_TORCH_PROFILER_DIR"):
        engine.start_profile()


def test_print_mtp_statistics(engine, capsys):
    engine.print_mtp_statistics()
    assert "not enabled" in capsys.readouterr().out


def test_profile_forward_of_the_gpu_sizing_runs_and_keeps_the_cache(make_engine):
    """The full-batch profile forward that sizes the KV cache on a GPU, exercised on the CPU."""
    engine = make_engine(max_num_batched_tokens=300, max_num_seqs=7, enable_prefix_caching=True,
                         block_size=4)  # fmt: skip
    sp = SamplingParams(temperature=0, max_tokens=5)
    before = engine.generate([PROMPT], sp)[0]["token_ids"]
    profile_forward(engine.runner)
    after = engine.generate([PROMPT], sp)[0]
    assert after["num_cached_tokens"] == 4 and after["token_ids"] == before  # the cache survived


def test_kernel_warm_up_shapes_and_run(make_engine):
    """The GPU warm-up's steps: one per tile height, alone and after a decode over a cached
    prefix; run here on the CPU, before any request, the engine then serves as usual."""
    assert warm_up_shapes(16384, 4096, group=2) == [
        [(256, 0)], [(8, 0)], [(16, 0)], [(32, 0)], [(1, 1), (256, 0)],
        [(1, 256), (256, 256)], [(1, 256), (8, 256)], [(1, 256), (16, 256)], [(1, 256), (32, 256)],
    ]  # fmt: skip
    assert warm_up_shapes(16384, 4096, group=128) == [
        [(256, 0)], [(1, 1), (256, 0)], [(1, 256), (256, 256)],
    ]  # fmt: skip
    assert warm_up_shapes(2, 4096, group=4) == []  # a 1-token budget has no prompt steps
    engine = make_engine(block_size=4)
    sp = SamplingParams(temperature=0, max_tokens=5)
    fresh = make_engine(block_size=4).generate([PROMPT], sp)[0]["token_ids"]
    warm_up_kernels(engine.runner)
    assert engine.generate([PROMPT], sp)[0]["token_ids"] == fresh

"""EngineConfig validation and the EngineArgs command line (both spellings of every flag)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from atom.config import EngineConfig
from atom.engine.arg_utils import EngineArgs


def parse(*argv: str) -> EngineArgs:
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    return EngineArgs.from_cli_args(parser.parse_args(list(argv)))


def test_defaults_match_the_user_guide():
    args = parse()
    assert args.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (args.tensor_parallel_size, args.data_parallel_size) == (1, 1)
    assert (args.kv_cache_dtype, args.block_size, args.port) == ("bf16", 16, 8006)
    assert (args.max_num_batched_tokens, args.max_num_seqs) == (16384, 512)
    assert args.gpu_memory_utilization == 0.9 and args.level == 3
    assert args.max_model_len is None and args.method is None
    assert args.num_speculative_tokens == 1 and args.scheduler_delay_factor == 0.0
    assert not (args.enforce_eager or args.enable_prefix_caching or args.load_dummy)


def test_engine_args_and_engine_config_have_the_same_fields_and_defaults():
    config_fields = {f.name: f for f in dataclasses.fields(EngineConfig)}
    for f in dataclasses.fields(EngineArgs):
        assert f.name in config_fields, f.name
        if f.name not in ("cudagraph_capture_sizes", "torch_profiler_dir"):
            assert f.default == config_fields[f.name].default, f.name
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    dests = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(EngineArgs)} <= dests


KEBAB_AND_SNAKE = [
    ("max-model-len", "max_model_len", "300", 300),
    ("kv-cache-dtype", "kv_cache_dtype", "fp8", "fp8"),
    ("block-size", "block_size", "32", 32),
    ("max-num-batched-tokens", "max_num_batched_tokens", "64", 64),
    ("max-num-seqs", "max_num_seqs", "8", 8),
    ("gpu-memory-utilization", "gpu_memory_utilization", "0.5", 0.5),
    ("scheduler-delay-factor", "scheduler_delay_factor", "0.25", 0.25),
    ("tensor-parallel-size", "tensor_parallel_size", "2", 2),
    ("data-parallel-size", "data_parallel_size", "2", 2),
    ("torch-profiler-dir", "torch_profiler_dir", "/tmp/x", "/tmp/x"),
    ("num-speculative-tokens", "num_speculative_tokens", "3", 3),
    ("level", "level", "0", 0),
    ("port", "port", "9000", 9000),
    ("cpu-kv-cache-bytes", "cpu_kv_cache_bytes", "4096", 4096),
]


@pytest.mark.parametrize("kebab, snake, text, value", KEBAB_AND_SNAKE)
def test_both_spellings(kebab, snake, text, value):
    assert getattr(parse(f"--{kebab}", text), snake) == value
    assert getattr(parse(f"--{snake}", text), snake) == value


@pytest.mark.parametrize(
    "name",
    ["trust_remote_code", "enforce_eager", "enable_prefix_caching", "load_dummy",
     "enable_expert_parallel", "enable_dp_attention"],
)  # fmt: skip
def test_boolean_flags_both_spellings(name):
    assert getattr(parse("--" + name), name) is True
    assert getattr(parse("--" + name.replace("_", "-")), name) is True


def test_short_flags_and_lists():
    args = parse("-tp", "1", "-dp", "1", "--cudagraph-capture-sizes", "1,2,8", "--method", "mtp")
    assert args.cudagraph_capture_sizes == [1, 2, 8] and args.method == "mtp"
    with pytest.raises(SystemExit):
        parse("--kv_cache_dtype", "int4")


def test_extra_namespace_attributes_are_ignored():
    ns = EngineArgs.add_cli_args(argparse.ArgumentParser()).parse_args([])
    ns.server_port = 8000
    assert EngineArgs.from_cli_args(ns).engine_kwargs()["model"] == ns.model


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tensor_parallel_size": 2}, "tensor parallelism"),
        ({"data_parallel_size": 4}, "data parallelism"),
        ({"enable_expert_parallel": True}, "expert parallelism"),
        ({"enable_dp_attention": True}, "data-parallel attention"),
        ({"method": "mtp"}, "speculative decoding"),
    ],
)
def test_features_not_built_yet_refuse_loudly(kwargs, match):
    with pytest.raises(NotImplementedError, match=match):
        EngineConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kv_cache_dtype": "int8"}, "kv_cache_dtype='int8'"),
        ({"block_size": 0}, "block_size=0"),
        ({"max_num_seqs": -1}, "max_num_seqs=-1"),
        ({"max_num_batched_tokens": 0}, "max_num_batched_tokens=0"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization=1.5"),
        ({"scheduler_delay_factor": -1.0}, "scheduler_delay_factor=-1.0"),
        ({"level": 4}, "level=4"),
        ({"cudagraph_capture_sizes": (0, 2)}, "cudagraph_capture_sizes"),
        ({"max_model_len": 0}, "max_model_len=0"),
        ({"method": "eagle"}, "method='eagle'"),
        ({"num_speculative_tokens": 0}, "num_speculative_tokens=0"),
    ],
)
def test_invalid_values_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**kwargs)


def test_unknown_keyword_lists_known_ones():
    with pytest.raises(ValueError, match="unknown engine option.*'bogus'.*max_model_len"):
        EngineConfig.create(bogus=1)


def test_create_resolves_model_and_max_model_len(tiny_model_dir):
    config = EngineConfig.create(str(tiny_model_dir))
    assert config.max_model_len == 128 == config.model_config.max_model_len
    config = EngineConfig.create(str(tiny_model_dir), max_model_len=64)
    assert config.model_config.max_model_len == 64
    with pytest.raises(ValueError, match="max_model_len"):
        EngineConfig.create(str(tiny_model_dir), max_model_len=1000)


def test_create_engine_from_the_command_line(tiny_model_dir):
    engine = parse("--model", str(tiny_model_dir), "--max_model_len", "64",
                   "--enable-prefix-caching", "--num-kv-blocks", "40").create_engine()  # fmt: skip
    assert engine.config.enable_prefix_caching and engine.block_manager.num_blocks == 40
    assert engine.config.max_model_len == 64


def test_kv_pool_smaller_than_max_model_len_is_refused(tiny_model_dir):
    from atom import LLMEngine

    with pytest.raises(ValueError, match="fewer than max_model_len=128"):
        LLMEngine(model=str(tiny_model_dir), num_kv_blocks=2, block_size=16)


def test_fp8_kv_cache_runs_on_the_cpu(tiny_model_dir):
    from atom import LLMEngine, SamplingParams

    engine = LLMEngine(model=str(tiny_model_dir), kv_cache_dtype="fp8", num_kv_blocks=16)
    assert engine.runner.kv_caches[0][0].dtype.itemsize == 1
    out = engine.generate([[5, 6, 7, 8]], SamplingParams(temperature=0, max_tokens=4))[0]
    assert len(out["token_ids"]) == 4

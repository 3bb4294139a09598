"""``EngineArgs``: the engine's command-line flags (seeds/003 §7.4) and the engine they build.

Every long flag is accepted in kebab-case and in snake_case (``--max-model-len`` and
``--max_model_len``); ``-tp`` and ``-dp`` are the short forms of the parallel sizes.

    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    engine = EngineArgs.from_cli_args(parser.parse_args()).create_engine()
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from atom.config import DEFAULT_CAPTURE_SIZES, EMBEDDED_MODEL_NAME, KV_CACHE_DTYPES, EngineConfig


def _spellings(name: str) -> list[str]:
    kebab, snake = "--" + name.replace("_", "-"), "--" + name
    return [kebab] if kebab == snake else [kebab, snake]


def _capture_sizes(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None


@dataclass
class EngineArgs:
    """The command-line view of ``EngineConfig``: the same field names and defaults."""

    model: str = EMBEDDED_MODEL_NAME
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enforce_eager: bool = False
    enable_prefix_caching: bool = False
    port: int = 8006
    kv_cache_dtype: str = "bf16"
    block_size: int = 16
    max_model_len: int | None = None
    max_num_batched_tokens: int = 16384
    max_num_seqs: int = 512
    gpu_memory_utilization: float = 0.9
    scheduler_delay_factor: float = 0.0
    cudagraph_capture_sizes: list[int] | None = None
    level: int = 3
    async_scheduling: bool = True
    load_dummy: bool = False
    enable_expert_parallel: bool = False
    enable_dp_attention: bool = False
    torch_profiler_dir: str | None = None  # None: $ATOM_TORCH_PROFILER_DIR
    method: str | None = None
    num_speculative_tokens: int = 1
    dtype: str = "auto"
    cpu_kv_cache_bytes: int = 1 << 30
    num_kv_blocks: int | None = None
    seed: int = 0

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        g = parser.add_argument_group("engine")

        def add(name: str, *short: str, **kw) -> None:
            g.add_argument(*short, *_spellings(name), dest=name, **kw)

        def flag(name: str, help: str) -> None:
            add(name, action="store_true", default=False, help=help)

        add(
            "model",
            type=str,
            default=EMBEDDED_MODEL_NAME,
            help="HF-format folder, .gguf file, or the embedded model's name (default)",
        )
        flag("trust_remote_code", "trust remote code of HF configs/tokenizers")
        add("tensor_parallel_size", "-tp", type=int, default=1, help="tensor parallel size")
        add("data_parallel_size", "-dp", type=int, default=1, help="data parallel size")
        flag("enforce_eager", "no CUDA graphs: run every step eagerly")
        flag("enable_prefix_caching", "reuse the KV cache of shared prompt prefixes")
        add("port", type=int, default=8006, help="internal engine communication port")
        add(
            "kv_cache_dtype",
            type=str,
            default="bf16",
            choices=KV_CACHE_DTYPES,
            help="bf16: unquantized (the model's dtype); fp8: fp8 K/V",
        )
        add("block_size", type=int, default=16, help="tokens per KV-cache block")
        add(
            "max_model_len",
            type=int,
            default=None,
            help="maximum context length (default: the model's)",
        )
        add("max_num_batched_tokens", type=int, default=16384, help="maximum tokens per step")
        add("max_num_seqs", type=int, default=512, help="maximum running sequences")
        add(
            "gpu_memory_utilization",
            type=float,
            default=0.9,
            help="share of GPU memory the engine may use (0, 1]",
        )
        add(
            "scheduler_delay_factor",
            type=float,
            default=0.0,
            help="delay new prompts by this many step durations, to batch them",
        )
        add(
            "cudagraph_capture_sizes",
            type=_capture_sizes,
            default=None,
            help=f"batch sizes captured in CUDA graphs, e.g. '1,2,4' (default {list(DEFAULT_CAPTURE_SIZES)})",
        )
        add(
            "level",
            type=int,
            default=3,
            choices=(0, 1, 2, 3),
            help="0 = eager, 1 = CUDA graphs of decode steps, 2 = torch.compile of the decode "
            "step, 3 = both (default)",
        )
        add(
            "async_scheduling",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="launch each greedy decode step before reading the previous step's tokens, so "
            "host work overlaps GPU work (default on)",
        )
        flag("load_dummy", "random weights instead of loading the checkpoint")
        flag("enable_expert_parallel", "expert parallelism for MoE (not implemented yet)")
        flag("enable_dp_attention", "data-parallel attention (not implemented yet)")
        add(
            "torch_profiler_dir",
            type=str,
            default=None,
            help="torch profiler trace directory (default: $ATOM_TORCH_PROFILER_DIR)",
        )
        add(
            "method",
            type=str,
            default=None,
            choices=("mtp",),
            help="speculative decoding method (not implemented yet)",
        )
        add("num_speculative_tokens", type=int, default=1, help="draft tokens per step")
        add(
            "dtype",
            type=str,
            default="auto",
            help="model dtype: auto (fp32 on the CPU, the checkpoint's on a GPU), bf16, fp16, fp32",
        )
        add(
            "cpu_kv_cache_bytes",
            type=int,
            default=1 << 30,
            help="KV-cache size in bytes when running on the CPU (default 1 GiB)",
        )
        add(
            "num_kv_blocks",
            type=int,
            default=None,
            help="exact number of KV-cache blocks (overrides the memory budgets)",
        )
        add("seed", type=int, default=0, help="seed of requests that bring none")
        return parser  # fmt: skip

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        """Picks this class's fields out of ``args`` (other attributes, e.g. a server's, are ignored)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})

    def engine_kwargs(self) -> dict:
        kw = dataclasses.asdict(self)
        if kw["cudagraph_capture_sizes"] is None:
            del kw["cudagraph_capture_sizes"]
        else:
            kw["cudagraph_capture_sizes"] = tuple(kw["cudagraph_capture_sizes"])
        if kw["torch_profiler_dir"] is None:
            del kw["torch_profiler_dir"]  # the config falls back to the environment
        return kw

    def create_config(self) -> EngineConfig:
        return EngineConfig.create(**self.engine_kwargs())

    def create_engine(self):
        from atom.engine.llm_engine import LLMEngine

        return LLMEngine(**self.engine_kwargs())

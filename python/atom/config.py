"""Engine settings: one frozen dataclass built from keywords or the command line (``EngineArgs``).

Environment variables come through atom.envs (ATOM_TORCH_PROFILER_DIR: default of
``torch_profiler_dir``; ATOM_PROFILER_MORE=1: record shapes, stacks and memory).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from atom import envs

if TYPE_CHECKING:
    from atom.model_config import ModelConfig

EMBEDDED_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_CAPTURE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
KV_CACHE_DTYPES = ("bf16", "fp8")


env_torch_profiler_dir = envs.torch_profiler_dir
env_profiler_more = envs.profiler_more
DEFAULT_SMALL_BATCH_TOKENS = 4  # see EngineConfig.small_batch_tokens


def env_small_batch_tokens() -> int:
    return envs.small_batch_tokens(DEFAULT_SMALL_BATCH_TOKENS)


@dataclass(frozen=True)
class EngineConfig:
    """Every engine setting. ``EngineConfig.create(model, **kw)`` also loads the ModelConfig.

    Not yet implemented (a non-default value raises NotImplementedError rather than being ignored):
    tensor/data/expert parallelism, DP attention, speculative decoding (``method="mtp"``).
    """

    model: str = EMBEDDED_MODEL_NAME  # HF-format folder, .gguf file, or the embedded model's name
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enforce_eager: bool = False  # GPU fast path: no CUDA graphs; the CPU always runs eagerly
    enable_prefix_caching: bool = False
    port: int = 8006  # internal engine port (multi-process engines); unused by the 1-process engine
    # "bf16": the KV cache stores K/V unquantized, in the model's dtype (bf16 for a bf16 model,
    # fp32 when the model runs in fp32 on the CPU); "fp8": per-tensor-scaled fp8 (scale 1.0).
    kv_cache_dtype: str = "bf16"
    block_size: int = 16  # tokens per KV-cache block
    max_model_len: int | None = None  # prompt + output limit; None = the model's context length
    max_num_batched_tokens: int = 16384  # tokens per forward (prefill chunks + decodes)
    max_num_seqs: int = 512  # running sequences at once
    gpu_memory_utilization: float = 0.9  # share of GPU memory for weights + activations + KV cache
    scheduler_delay_factor: float = 0.0  # wait this many step durations to batch new prompts
    cudagraph_capture_sizes: tuple[int, ...] = DEFAULT_CAPTURE_SIZES  # GPU fast path
    level: int = 3  # GPU fast path: 0 eager, 1 graphs, 2 compile, 3 both (atom/engine/compile.py)
    # Launch a greedy decode step before the previous one's tokens are read (LLMEngine.step).
    async_scheduling: bool = True
    # GPU steps of at most this many tokens run the fused small-batch decoder layers
    # (atom/layers/small_batch.py); 0 = off. Default 4, or $ATOM_SMALL_BATCH_TOKENS.
    small_batch_tokens: int = field(default_factory=env_small_batch_tokens)
    load_dummy: bool = False  # random weights instead of the checkpoint's
    enable_expert_parallel: bool = False
    enable_dp_attention: bool = False
    torch_profiler_dir: str | None = field(default_factory=env_torch_profiler_dir)
    profiler_more: bool = field(default_factory=env_profiler_more)
    method: str | None = None  # speculative decoding method ("mtp")
    num_speculative_tokens: int = 1
    # Beyond the seed's flags:
    dtype: str = "auto"  # model dtype: auto (fp32 on CPU, the checkpoint's on GPU) or a name
    # The KV cache's size on the CPU, in bytes (on a GPU it comes from gpu_memory_utilization).
    cpu_kv_cache_bytes: int = 1 << 30
    num_kv_blocks: int | None = None  # exact number of KV blocks (overrides both budgets)
    seed: int = 0  # seeds the sampling of requests that do not bring their own seed
    kernel_backends: tuple[str, ...] | None = None  # kernel backend preference, e.g. ("torch",)
    model_config: ModelConfig | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        not_yet = {
            "tensor_parallel_size": (self.tensor_parallel_size, 1, "tensor parallelism"),
            "data_parallel_size": (self.data_parallel_size, 1, "data parallelism"),
            "enable_expert_parallel": (self.enable_expert_parallel, False, "expert parallelism"),
            "enable_dp_attention": (self.enable_dp_attention, False, "data-parallel attention"),
        }
        for name, (value, default, what) in not_yet.items():
            if value != default:
                raise NotImplementedError(
                    f"{name}={value!r}: {what} is not implemented in ATOM yet; use the default {default!r}"
                )
        if self.method is not None:
            if self.method != "mtp":
                raise ValueError(f"method={self.method!r}: the only speculative method is 'mtp'")
            raise NotImplementedError("method='mtp': speculative decoding is not implemented yet")
        _positive_int(self, "num_speculative_tokens")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype={self.kv_cache_dtype!r}; choose one of {KV_CACHE_DTYPES}"
            )
        for name in ("block_size", "max_num_batched_tokens", "max_num_seqs", "cpu_kv_cache_bytes"):
            _positive_int(self, name)
        if self.max_model_len is not None:
            _positive_int(self, "max_model_len")
        if self.num_kv_blocks is not None:
            _positive_int(self, "num_kv_blocks")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization={self.gpu_memory_utilization!r} must be in (0, 1]"
            )
        if not self.scheduler_delay_factor >= 0.0:
            raise ValueError(f"scheduler_delay_factor={self.scheduler_delay_factor!r} must be >= 0")
        if isinstance(self.small_batch_tokens, bool) or not (
            isinstance(self.small_batch_tokens, int) and self.small_batch_tokens >= 0
        ):
            raise ValueError(f"small_batch_tokens={self.small_batch_tokens!r} must be an int >= 0")
        if self.level not in (0, 1, 2, 3):
            raise ValueError(f"level={self.level!r} must be 0, 1, 2 or 3")
        sizes = tuple(self.cudagraph_capture_sizes)
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"cudagraph_capture_sizes={sizes!r} must be positive integers")
        object.__setattr__(self, "cudagraph_capture_sizes", tuple(sorted(set(sizes))))
        if self.kernel_backends is not None:
            object.__setattr__(self, "kernel_backends", tuple(self.kernel_backends))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed={self.seed!r} must be an integer")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "model_config"]

    @classmethod
    def create(cls, model: str | None = None, **kwargs) -> EngineConfig:
        """Validates the keywords, resolves the model and reads its ModelConfig (the GGUF of the
        embedded model is converted on first use)."""
        unknown = sorted(set(kwargs) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"unknown engine option(s) {unknown}; known options: {', '.join(cls.field_names())}"
            )
        if model is not None:
            kwargs["model"] = str(model)
        config = cls(**kwargs)
        from atom.model_config import ModelConfig

        model_config = ModelConfig.from_pretrained(
            config.model,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            trust_remote_code=config.trust_remote_code,
        )
        return dataclasses.replace(
            config, model_config=model_config, max_model_len=model_config.max_model_len
        )


def _positive_int(config: EngineConfig, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")

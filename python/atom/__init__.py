"""ATOM: a lightweight, fast LLM inference engine for CUDA, ROCm and the CPU.

from atom import LLMEngine, SamplingParams
"""

__version__ = "0.1.0"
__all__ = ["LLMEngine", "SamplingParams", "EngineArgs"]


def __getattr__(name: str):
    # Lazy, so that `import atom.kernels` does not pull in the engine (and its tokenizer stack).
    if name == "LLMEngine":
        from atom.engine.llm_engine import LLMEngine

        return LLMEngine
    if name == "SamplingParams":
        from atom.sampling_params import SamplingParams

        return SamplingParams
    if name == "EngineArgs":
        from atom.engine.arg_utils import EngineArgs

        return EngineArgs
    raise AttributeError(f"module 'atom' has no attribute {name!r}")

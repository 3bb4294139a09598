"""Finding and loading weights: the model path (``resolve_model``, the embedded SmolLM2, GGUF
import), safetensors checkpoints (single file or sharded), and random dummy weights."""

from atom.loader.embedded import EMBEDDED_MODEL_NAME, cache_dir
from atom.loader.resolve import resolve_model

__all__ = ["EMBEDDED_MODEL_NAME", "cache_dir", "resolve_model"]

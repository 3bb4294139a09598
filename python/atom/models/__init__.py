"""Model registry: HF architecture name -> ATOM model class, imported lazily.

Every model class takes a ``ModelConfig`` and provides:
    forward(input_ids: [T] int64, positions: [T] int64, attn_metadata) -> hidden [T, hidden_size]
    compute_logits(hidden: [N, hidden_size]) -> logits [N, vocab_size] fp32
    attention_layers() -> list of atom.layers.attention.Attention, in layer order
and, as data for the loader, ``packed_modules_mapping`` (atom/loader/weights.py).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import torch
from torch import nn

from atom.model_config import ModelConfig

# HF architecture -> (module, class name)
_MODELS: dict[str, tuple[str, str]] = {}


def register_model(architecture: str, module: str, class_name: str) -> None:
    if architecture in _MODELS:
        raise ValueError(f"architecture {architecture!r} is already registered")
    _MODELS[architecture] = (module, class_name)


register_model("LlamaForCausalLM", "atom.models.llama", "LlamaForCausalLM")
register_model("Qwen3ForCausalLM", "atom.models.qwen3", "Qwen3ForCausalLM")
register_model("Qwen3MoeForCausalLM", "atom.models.qwen3_moe", "Qwen3MoeForCausalLM")
register_model("Glm4MoeForCausalLM", "atom.models.glm4_moe", "Glm4MoeForCausalLM")
register_model("GptOssForCausalLM", "atom.models.gpt_oss", "GptOssForCausalLM")
register_model("DeepseekV3ForCausalLM", "atom.models.deepseek_v3", "DeepseekV3ForCausalLM")


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(architecture: str) -> type[nn.Module]:
    if architecture not in _MODELS:
        raise ValueError(
            f"unsupported model architecture {architecture!r}; supported: {supported_architectures()}"
        )
    module, class_name = _MODELS[architecture]
    return getattr(importlib.import_module(module), class_name)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    model_config: ModelConfig,
    device: torch.device | str,
    load_dummy: bool = False,
    seed: int = 0,
) -> nn.Module:
    """The model of ``model_config.architecture`` on ``device`` in ``model_config.dtype``, with the
    checkpoint's weights (``model_config.model_path``) or, with load_dummy, seeded random ones."""
    from atom.loader.weights import iterate_safetensors, load_dummy_weights, load_weights

    cls = get_model_class(model_config.architecture)
    with torch.device(device), _default_dtype(model_config.dtype):
        model = cls(model_config)
    if load_dummy:
        load_dummy_weights(model, seed=seed)
    else:
        load_weights(model, iterate_safetensors(model_config.model_path))
    return model.eval()

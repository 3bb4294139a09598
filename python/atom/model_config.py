"""The model's shape and quirks, converted once from the Hugging Face config.

``ModelConfig.from_pretrained(path)`` reads ``config.json`` (and ``generation_config.json``) of an
HF-format folder and returns a frozen ``ModelConfig``. Every per-family quirk of the HF configs
(names that differ, values hidden in ``rope_parameters`` or ``text_config``, eos ids spread over two
files) is resolved here, so the layers and the engine read one set of plain fields.

dtype rule (``dtype=None`` or ``"auto"``): float32 on the CPU (fast fp32 GEMMs, exact comparisons
with transformers); on a GPU the checkpoint's own dtype (``dtype``/``torch_dtype`` of config.json),
falling back to bfloat16 when the checkpoint does not say. An explicit dtype always wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a dtype or its name ("bfloat16", "bf16", "torch.float16", ...)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_NAMES.values():
            raise ValueError(
                f"unsupported model dtype {dtype}; use one of float32/float16/bfloat16"
            )
        return dtype
    name = str(dtype).removeprefix("torch.").lower()
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(_DTYPE_NAMES)} or 'auto'")
    return _DTYPE_NAMES[name]


@dataclass(frozen=True)
class ModelConfig:
    """What the layers, the loader and the engine need to know about a model.

    ``rope_scaling`` is None for plain RoPE, else a dict with at least ``rope_type`` ("linear",
    "llama3", "yarn", ...) and that type's parameters, as in HF configs (``rope_theta`` excluded).
    ``max_model_len`` is the longest sequence (prompt + output) the engine accepts.
    """

    model_path: Path
    architecture: str  # the HF architecture name, e.g. "LlamaForCausalLM"
    model_type: str  # the HF model_type, e.g. "llama"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None = field(hash=False)  # a dict: kept out of the hash
    max_position_embeddings: int
    max_model_len: int
    tie_word_embeddings: bool
    dtype: torch.dtype
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    hidden_act: str = "silu"
    attention_bias: bool = False  # bias on q/k/v projections
    mlp_bias: bool = False
    partial_rotary_factor: float = 1.0  # fraction of head_dim that RoPE rotates
    # The raw HF config (the text part of a multimodal one), for model-specific quirks.
    hf_config: Any = field(default=None, compare=False, repr=False)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | None,
        dtype: str | torch.dtype | None = None,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
    ) -> ModelConfig:
        """Reads an HF-format folder. ``model`` goes through ``atom.loader.resolve_model`` first, so
        None or the embedded model's name give the embedded SmolLM2."""
        from transformers import AutoConfig

        from atom.loader import resolve_model

        path = resolve_model(None if model is None else str(model))
        try:
            full_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot read the HF config of {str(path)!r}: {e}") from e
        return cls.from_hf_config(full_config, path, dtype, max_model_len)

    @classmethod
    def from_hf_config(
        cls,
        full_config: Any,
        path: Path,
        dtype: str | torch.dtype | None = None,
        max_model_len: int | None = None,
    ) -> ModelConfig:
        architectures = getattr(full_config, "architectures", None) or []
        if not architectures:
            raise ValueError(f"config.json of {str(path)!r} names no 'architectures'")
        # Multimodal configs keep the language model's shape in text_config.
        hf = (
            full_config.get_text_config()
            if hasattr(full_config, "get_text_config")
            else full_config
        )

        num_heads = hf.num_attention_heads
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // num_heads
        rope_theta, rope_scaling, partial = _rope_settings(hf)
        max_positions = int(getattr(hf, "max_position_embeddings", 0) or 0)
        if max_model_len is None:
            if max_positions <= 0:
                raise ValueError(
                    f"{str(path)!r} has no max_position_embeddings; pass max_model_len"
                )
            max_model_len = max_positions
        elif max_model_len <= 0:
            raise ValueError(f"max_model_len must be positive, got {max_model_len}")
        elif max_positions and max_model_len > max_positions:
            raise ValueError(
                f"max_model_len={max_model_len} exceeds the model's max_position_embeddings="
                f"{max_positions} ({str(path)!r})"
            )

        return cls(
            model_path=Path(path),
            architecture=architectures[0],
            model_type=getattr(hf, "model_type", ""),
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=getattr(hf, "intermediate_size", 0),
            num_hidden_layers=hf.num_hidden_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=getattr(hf, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            rms_norm_eps=float(getattr(hf, "rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=max_positions or max_model_len,
            max_model_len=max_model_len,
            tie_word_embeddings=bool(
                getattr(hf, "tie_word_embeddings", False)
                or getattr(full_config, "tie_word_embeddings", False)
            ),
            dtype=_resolve_dtype(dtype, full_config),
            eos_token_ids=_eos_token_ids(full_config, hf, Path(path)),
            bos_token_id=getattr(hf, "bos_token_id", None),
            hidden_act=getattr(hf, "hidden_act", "silu"),
            attention_bias=bool(getattr(hf, "attention_bias", False)),
            mlp_bias=bool(getattr(hf, "mlp_bias", False)),
            partial_rotary_factor=partial,
            hf_config=hf,
        )


def _rope_settings(hf: Any) -> tuple[float, dict[str, Any] | None, float]:
    """(rope_theta, rope_scaling or None, partial_rotary_factor) from either config style:
    transformers >= 5 keeps everything in ``rope_parameters``; older files have ``rope_theta`` and
    ``rope_scaling`` (whose type key was once called ``type``)."""
    params = getattr(hf, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        params = dict(params)
    else:
        params = dict(getattr(hf, "rope_scaling", None) or {})
        params["rope_theta"] = getattr(hf, "rope_theta", 10000.0)
    theta = float(params.pop("rope_theta"))
    partial = float(
        params.pop("partial_rotary_factor", None)
        or getattr(hf, "partial_rotary_factor", 1.0)
        or 1.0
    )
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    scaling = None if rope_type == "default" else {"rope_type": rope_type, **params}
    return theta, scaling, partial


def _resolve_dtype(dtype: str | torch.dtype | None, hf: Any) -> torch.dtype:
    if dtype is not None and str(dtype) != "auto":
        return parse_dtype(dtype)
    from atom.platforms import current_platform

    if not current_platform().is_gpu:
        return torch.float32
    checkpoint = getattr(hf, "dtype", None) or getattr(hf, "torch_dtype", None)
    return parse_dtype(checkpoint) if checkpoint is not None else torch.bfloat16


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _eos_token_ids(full_config: Any, hf: Any, path: Path) -> tuple[int, ...]:
    """eos ids of config.json and generation_config.json together, in order, without repeats
    (chat models often list their end-of-turn token only in generation_config.json)."""
    ids = _as_ids(getattr(hf, "eos_token_id", None)) or _as_ids(
        getattr(full_config, "eos_token_id", None)
    )
    gen_file = path / "generation_config.json"
    if gen_file.is_file():
        ids += _as_ids(json.loads(gen_file.read_text()).get("eos_token_id"))
    return tuple(dict.fromkeys(ids))

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
    # Attention per layer: layer_types[i] is HF's "full_attention" | "sliding_attention" | ...;
    # sliding layers attend to the last ``sliding_window`` positions (see sliding_window_of).
    use_qk_norm: bool = False  # GLM-4-MoE's flag (Qwen3 models always norm q and k)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    # Mixture of experts; num_experts == 0 is a dense model. ``moe_layers``: the indices of the
    # layers whose MLP is routed (the rest are dense MLPs of intermediate_size).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0  # each routed (and shared) expert's intermediate size
    n_shared_experts: int = 0
    norm_topk_prob: bool = False  # renormalise the top-k routing weights to sum to 1
    n_group: int = 1  # grouped routing (DeepSeek / GLM): groups, and groups kept per token
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    moe_layers: tuple[int, ...] = ()
    # The raw HF config (the text part of a multimodal one), for model-specific quirks.
    hf_config: Any = field(default=None, compare=False, repr=False)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def sliding_window_of(self, layer: int) -> int | None:
        """The attention window of ``layer``, or None for full attention."""
        if self.sliding_window is None or not self.layer_types:
            return None
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

    def is_moe_layer(self, layer: int) -> bool:
        return layer in self.moe_layers

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
            **_attention_layout(hf),
            **_moe_settings(hf),
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


def _attention_layout(hf: Any) -> dict[str, Any]:
    """use_qk_norm, sliding_window and layer_types. Configs without ``layer_types`` (Mistral,
    Qwen3-MoE) apply their sliding window, if any, to every layer, as transformers does."""
    window = getattr(hf, "sliding_window", None)
    if window is not None and int(window) <= 0:
        raise ValueError(f"sliding_window must be positive or null, got {window}")
    num_layers = hf.num_hidden_layers
    types = getattr(hf, "layer_types", None)
    if types is None:
        types = ["sliding_attention" if window else "full_attention"] * num_layers
    if len(types) != num_layers:
        raise ValueError(f"layer_types has {len(types)} entries for num_hidden_layers={num_layers}")
    return {
        "use_qk_norm": bool(getattr(hf, "use_qk_norm", False)),
        "sliding_window": None if window is None else int(window),
        "layer_types": tuple(str(t) for t in types),
    }


def _moe_settings(hf: Any) -> dict[str, Any]:
    """The MoE fields under their various HF names, and which layers are routed:
    - Qwen-MoE (decoder_sparse_step, mlp_only_layers): layer i unless i is in mlp_only_layers
      or (i + 1) % decoder_sparse_step != 0;
    - DeepSeek / GLM (first_k_dense_replace, moe_layer_freq): i >= first_k_dense_replace and
      i % moe_layer_freq == 0;
    - otherwise (GPT-OSS, Mixtral) every layer."""
    num_experts = 0
    for name in ("n_routed_experts", "num_experts", "num_local_experts"):
        value = getattr(hf, name, None)
        if value:
            num_experts = int(value)
            break
    if num_experts == 0:
        return {}
    num_layers = hf.num_hidden_layers
    if hasattr(hf, "decoder_sparse_step") or hasattr(hf, "mlp_only_layers"):
        step = int(getattr(hf, "decoder_sparse_step", 1) or 1)
        dense = set(getattr(hf, "mlp_only_layers", None) or [])
        moe_layers = [i for i in range(num_layers) if i not in dense and (i + 1) % step == 0]
    else:
        first = int(getattr(hf, "first_k_dense_replace", 0) or 0)
        freq = int(getattr(hf, "moe_layer_freq", 1) or 1)
        moe_layers = [i for i in range(num_layers) if i >= first and i % freq == 0]
    return {
        "num_experts": num_experts,
        "num_experts_per_tok": int(getattr(hf, "num_experts_per_tok", 0) or 0),
        "moe_intermediate_size": int(
            getattr(hf, "moe_intermediate_size", None) or getattr(hf, "intermediate_size", 0)
        ),
        "n_shared_experts": int(getattr(hf, "n_shared_experts", 0) or 0),
        "norm_topk_prob": bool(getattr(hf, "norm_topk_prob", False)),
        "n_group": int(getattr(hf, "n_group", 1) or 1),
        "topk_group": int(getattr(hf, "topk_group", 1) or 1),
        "routed_scaling_factor": float(getattr(hf, "routed_scaling_factor", 1.0) or 1.0),
        "moe_layers": tuple(moe_layers),
    }


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

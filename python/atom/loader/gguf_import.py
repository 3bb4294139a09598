"""Converting a llama-architecture GGUF file into an HF-format folder (fp32 safetensors).

What goes where:
- config.json: transformers' own reading of the GGUF metadata (``AutoConfig(gguf_file=...)``), with
  ``architectures`` and the fp32 dtype filled in;
- tokenizer files with the chat template: transformers' own GGUF tokenizer conversion;
- generation_config.json: bos/eos/pad ids of the config;
- model.safetensors: every tensor dequantized by the ``gguf`` package (numpy), renamed to HF names.

llama.cpp's converter permutes the rows of q_proj and k_proj: HF's RoPE pairs feature i with
i + d/2 inside each head ("rotate_half"), GGML's pairs 2i with 2i+1, so it reorders each head's
rows from [half 0 | half 1] to interleaved. With w viewed as [n_heads, 2, d/2, in], it stored
w.transpose(1, 2); we undo that by viewing the GGUF rows as [n_heads, d/2, 2, in] and swapping back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

# GGUF tensor name -> HF name; "{i}" is the layer index. Data, not code: a new family adds a table.
LLAMA_TENSOR_NAMES: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
SUPPORTED_GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM"}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def hf_tensor_name(gguf_name: str) -> str:
    """The HF name of a GGUF tensor, e.g. blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight."""
    match = _LAYER.match(gguf_name)
    key = _LAYER.sub("blk.{i}.", gguf_name) if match else gguf_name
    if key not in LLAMA_TENSOR_NAMES:
        raise ValueError(f"unknown GGUF tensor {gguf_name!r}: not a llama tensor name")
    name = LLAMA_TENSOR_NAMES[key]
    return name.format(i=match.group(1)) if match else name


def unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's RoPE row permutation of a q_proj/k_proj weight [num_heads * d, in]."""
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise ValueError(f"{rows} rows do not split into {num_heads} heads of even size")
    half = rows // num_heads // 2
    return (
        weight.reshape(num_heads, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)
    )


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path, progress: bool = True) -> None:
    """Writes the HF-format folder of ``gguf_path`` into the existing directory ``out_dir``."""
    import gguf
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    reader = gguf.GGUFReader(str(gguf_path))
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} of {str(gguf_path)!r} is not supported; "
            f"supported: {sorted(SUPPORTED_GGUF_ARCHITECTURES)}"
        )
    num_heads = int(_field(reader, f"{arch}.attention.head_count"))
    num_kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv", num_heads))

    tensors: dict[str, torch.Tensor] = {}
    for t in tqdm(reader.tensors, desc="Converting the GGUF weights", disable=not progress):
        # gguf.dequantize returns float32 numpy in HF orientation [out, in] (GGUF lists dims reversed).
        weight = torch.from_numpy(gguf.dequantize(t.data, t.tensor_type).copy()).float()
        name = hf_tensor_name(t.name)
        if name.endswith("self_attn.q_proj.weight"):
            weight = unpermute_rope_rows(weight, num_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            weight = unpermute_rope_rows(weight, num_kv_heads)
        tensors[name] = weight.contiguous()
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})

    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config.architectures = [SUPPORTED_GGUF_ARCHITECTURES[arch]]
    config.tie_word_embeddings = "lm_head.weight" not in tensors
    config.dtype = torch.float32
    config.save_pretrained(out_dir)
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=getattr(config, "pad_token_id", None),
    ).save_pretrained(out_dir)

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.save_pretrained(out_dir)
    _keep_chat_template_in_tokenizer_config(out_dir, _field(reader, "tokenizer.chat_template"))


def _keep_chat_template_in_tokenizer_config(out_dir: Path, template: str | None) -> None:
    """transformers 5 saves the template as chat_template.jinja; readers of the older layout
    (and other engines) look in tokenizer_config.json, so it goes there too."""
    if not template:
        return
    path = out_dir / "tokenizer_config.json"
    data = json.loads(path.read_text())
    data["chat_template"] = template
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")

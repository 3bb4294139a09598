"""Qwen3 (dense): Llama plus a per-head RMSNorm of q and k before RoPE (``q_norm``/``k_norm``
weights [head_dim]), attention bias on q/k/v/o when ``attention_bias``, and an optional sliding
window on the layers that ``layer_types`` marks "sliding_attention". Assembled from the blocks of
atom/models/decoder.py. Matches transformers' models/qwen3/modeling_qwen3.py.
"""

from __future__ import annotations

from atom.layers.rotary import RotaryEmbedding
from atom.model_config import ModelConfig
from atom.models.decoder import DecoderAttention, DecoderForCausalLM, DecoderLayer, dense_mlp


def qwen3_attention(config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
    """Qwen3 and Qwen3-MoE attention: qk-norm always, one bias flag for q/k/v/o."""
    bias = config.attention_bias
    return DecoderAttention(config, rotary_emb, layer_idx, qk_norm=True, qkv_bias=bias, o_bias=bias)


class Qwen3ForCausalLM(DecoderForCausalLM):
    def make_layer(self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
        return DecoderLayer(
            config, qwen3_attention(config, rotary_emb, layer_idx), dense_mlp(config)
        )

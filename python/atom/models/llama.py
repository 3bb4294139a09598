"""Llama (and the models that share its shape: SmolLM2, Llama 2/3, Mistral without sliding window).

Pre-norm decoder: h = h + Attn(RMSNorm(h)); h = h + MLP(RMSNorm(h)); final RMSNorm; LM head.
Attention uses GQA and RoPE (neox pairing), one bias flag (``attention_bias``) for q/k/v/o; the
MLP is SwiGLU, down(silu(gate(x)) * up(x)), with bias when ``mlp_bias``. Assembled from the
blocks of atom/models/decoder.py. Matches transformers' models/llama/modeling_llama.py.
"""

from __future__ import annotations

from atom.layers.rotary import RotaryEmbedding
from atom.model_config import ModelConfig
from atom.models.decoder import DecoderAttention, DecoderForCausalLM, DecoderLayer, dense_mlp


class LlamaForCausalLM(DecoderForCausalLM):
    def make_layer(self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
        bias = config.attention_bias
        # transformers' Llama attends to every position whatever sliding_window the config holds.
        attention = DecoderAttention(
            config, rotary_emb, layer_idx, qkv_bias=bias, o_bias=bias, use_sliding_window=False
        )
        return DecoderLayer(config, attention, dense_mlp(config, bias=config.mlp_bias))

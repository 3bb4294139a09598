"""Qwen3 (dense), and the pre-norm decoder blocks that Qwen3-MoE, GLM-4-MoE and GPT-OSS reuse.

Qwen3 is Llama plus a per-head RMSNorm of q and k before RoPE (``q_norm``/``k_norm`` weights
[head_dim]), attention bias on q/k/v/o when ``attention_bias``, and an optional sliding window on
the layers that ``layer_types`` marks "sliding_attention". Matches transformers'
models/qwen3/modeling_qwen3.py.

Shared blocks, each configured by flags rather than subclassed per model:
- DecoderAttention: qkv_proj -> Attention (qk-norm, RoPE, window, sinks) -> o_proj.
- GatedMLP: down(act(gate(x)) * up(x)) of any intermediate size (dense MLPs, shared experts).
- DecoderLayer(self_attn, mlp): h = h + attn(norm(h)); h = h + mlp(norm(h)), every residual add
  fused into the norm that follows it.
- DecoderModel: embeddings, one RoPE table shared by the layers, the layers, the final norm.
- DecoderForCausalLM: the LM head (tied or not) and the loader's name mapping; a model defines
  ``make_layer(config, rotary_emb, layer_idx)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from atom.forward_context import AttentionMetadata
from atom.layers.activation import gated_activation
from atom.layers.attention import Attention
from atom.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from atom.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from atom.layers.norm import RMSNorm
from atom.layers.rotary import RotaryEmbedding, get_rope
from atom.model_config import ModelConfig


class DecoderAttention(nn.Module):
    """Self-attention of layer ``layer_idx``; its sliding window comes from the config."""

    def __init__(
        self,
        config: ModelConfig,
        rotary_emb: RotaryEmbedding,
        layer_idx: int,
        *,
        qk_norm: bool = False,
        qkv_bias: bool = False,
        o_bias: bool = False,
        sinks: bool = False,
    ):
        super().__init__()
        heads, kv_heads, head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.qkv_proj = QKVParallelLinear(config.hidden_size, head_dim, heads, kv_heads, qkv_bias)
        self.q_size = self.qkv_proj.num_heads * head_dim
        self.kv_size = self.qkv_proj.num_kv_heads * head_dim
        self.o_proj = RowParallelLinear(heads * head_dim, config.hidden_size, bias=o_bias)
        self.attn = Attention(
            self.qkv_proj.num_heads,
            self.qkv_proj.num_kv_heads,
            head_dim,
            scale=head_dim**-0.5,
            rotary_emb=rotary_emb,
            qk_norm=qk_norm,
            qk_norm_eps=config.rms_norm_eps,
            sliding_window=config.sliding_window_of(layer_idx),
            sinks=sinks,
            layer_idx=layer_idx,
        )

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata):
        """hidden [T, hidden_size] -> [T, hidden_size]."""
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return self.o_proj(self.attn(q, k, v, positions, meta))


class GatedMLP(nn.Module):
    """x [T, hidden] -> down(act(gate(x)) * up(x)) [T, hidden]; gate and up stored as one matrix."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, bias=False):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, [intermediate_size, intermediate_size], bias=bias
        )
        self.act_fn = gated_activation(hidden_act)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, self_attn: DecoderAttention, mlp: nn.Module):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp  # dense or MoE: [T, hidden] -> [T, hidden]
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, hidden, residual, meta):
        """Carries (hidden, residual) so each norm fuses the residual add before it."""
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


LayerFactory = Callable[[ModelConfig, RotaryEmbedding, int], nn.Module]


class DecoderModel(nn.Module):
    def __init__(self, config: ModelConfig, make_layer: LayerFactory):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        rotary_emb = get_rope(
            config.head_dim,
            config.rotary_dim,  # partial rotary: only the first rotary_dim features turn
            config.max_model_len,
            config.rope_theta,
            is_neox=True,  # all of this family pair (i, i + rotary_dim / 2) (rotate_half)
            scaling=config.rope_scaling,
            device=self.embed_tokens.weight.device,
        )
        self.layers = nn.ModuleList(
            make_layer(config, rotary_emb, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, positions, meta):
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class DecoderForCausalLM(nn.Module):
    """A decoder-only LM built from ``make_layer``; the model-registry contract (atom.models)."""

    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    # The checkpoints keep these on the attention block; here they belong to the inner Attention.
    checkpoint_renames = {"q_norm": "attn.q_norm", "k_norm": "attn.k_norm", "sinks": "attn.sinks"}

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tie_word_embeddings = config.tie_word_embeddings
        self.model = DecoderModel(config, self.make_layer)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)

    def make_layer(self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
        raise NotImplementedError

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions: [T] int64 -> hidden [T, hidden_size] (final-normed)."""
        return self.model(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] -> logits [N, vocab_size] fp32."""
        return self.lm_head(hidden)

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn.attn for layer in self.model.layers]


def dense_mlp(config: ModelConfig) -> GatedMLP:
    return GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)


def qwen3_attention(config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
    """Qwen3 and Qwen3-MoE attention: qk-norm always, one bias flag for q/k/v/o."""
    bias = config.attention_bias
    return DecoderAttention(config, rotary_emb, layer_idx, qk_norm=True, qkv_bias=bias, o_bias=bias)


class Qwen3ForCausalLM(DecoderForCausalLM):
    def make_layer(self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
        return DecoderLayer(
            config, qwen3_attention(config, rotary_emb, layer_idx), dense_mlp(config)
        )

"""The generic pre-norm decoder-only LM that every model file assembles from a ``make_layer``.

h = h + Attn(RMSNorm(h)); h = h + MLP(RMSNorm(h)) per layer; final RMSNorm; LM head. Each block is
configured by flags rather than subclassed per model:
- DecoderAttention: qkv_proj -> Attention (qk-norm, RoPE, sliding window, sinks) -> o_proj.
- GatedMLP: down(act(gate(x)) * up(x)) of any intermediate size (dense MLPs, shared experts).
- DecoderLayer(self_attn, mlp): h = h + attn(norm(h)); h = h + mlp(norm(h)), every residual add
  fused into the norm that follows it. Any attention taking (positions, hidden, meta) fits
  (DeepSeek's MLA too), and any MLP [T, hidden] -> [T, hidden] (dense or MoE).
- DecoderModel: embeddings, one RoPE table shared by the layers, the layers, the final norm.
- DecoderForCausalLM: the LM head (tied or not) and the loader's name mapping; a model defines
  ``make_layer(config, rotary_emb, layer_idx)`` and, if its RoPE differs, ``make_rope``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from atom.forward_context import AttentionMetadata
from atom.layers import small_batch
from atom.layers.activation import gated_activation
from atom.layers.attention import Attention
from atom.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from atom.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from atom.layers.norm import RMSNorm
from atom.layers.rotary import RotaryEmbedding, get_rope
from atom.model_config import ModelConfig


class DecoderAttention(nn.Module):
    """Self-attention of layer ``layer_idx``; its sliding window comes from the config unless
    ``use_sliding_window`` is off (Llama ignores a window in its config, as transformers does)."""

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
        use_sliding_window: bool = True,
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
        window = config.sliding_window_of(layer_idx) if use_sliding_window else None
        self.attn = Attention(
            self.qkv_proj.num_heads,
            self.qkv_proj.num_kv_heads,
            head_dim,
            scale=head_dim**-0.5,
            rotary_emb=rotary_emb,
            qk_norm=qk_norm,
            qk_norm_eps=config.rms_norm_eps,
            sliding_window=window,
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


def dense_mlp(config: ModelConfig, bias: bool = False) -> GatedMLP:
    """The dense MLP of intermediate_size (no bias unless the model has ``mlp_bias``)."""
    return GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, bias=bias)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, self_attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.self_attn = self_attn  # (positions, hidden [T, hidden], meta) -> [T, hidden]
        self.mlp = mlp  # dense or MoE: [T, hidden] -> [T, hidden]
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Steps of at most this many tokens run the fused small-batch form (layers/small_batch.py);
        # 0 = never. Set by DecoderForCausalLM.enable_small_batch.
        self.small_batch_max_tokens = 0

    def forward(self, positions, hidden, residual, meta):
        """Carries (hidden, residual) so each norm fuses the residual add before it; residual None
        means hidden is the whole residual stream."""
        if hidden.shape[0] <= self.small_batch_max_tokens:
            return small_batch.forward(self, positions, hidden, residual, meta)
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


LayerFactory = Callable[[ModelConfig, RotaryEmbedding, int], nn.Module]
RopeFactory = Callable[[ModelConfig, torch.device], RotaryEmbedding]


def default_rope(config: ModelConfig, device: torch.device) -> RotaryEmbedding:
    """RoPE over the first rotary_dim features of each head_dim head (partial rotary), pairing
    (i, i + rotary_dim / 2) (rotate_half), as Llama, Qwen3, GLM-4-MoE and GPT-OSS do."""
    return get_rope(
        config.head_dim,
        config.rotary_dim,
        config.max_model_len,
        config.rope_theta,
        is_neox=True,
        scaling=config.rope_scaling,
        device=device,
    )


class DecoderModel(nn.Module):
    def __init__(
        self, config: ModelConfig, make_layer: LayerFactory, make_rope: RopeFactory = default_rope
    ):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        rotary_emb = make_rope(config, self.embed_tokens.weight.device)
        self.layers = nn.ModuleList(
            make_layer(config, rotary_emb, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, positions, meta):
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        return self.norm(hidden) if residual is None else self.norm(hidden, residual)[0]


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
        self.model = DecoderModel(config, self.make_layer, self.make_rope)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)

    def make_layer(self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
        raise NotImplementedError(f"{type(self).__name__} must define make_layer")

    def make_rope(self, config: ModelConfig, device: torch.device) -> RotaryEmbedding:
        return default_rope(config, device)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions: [T] int64 -> hidden [T, hidden_size] (final-normed)."""
        return self.model(input_ids, positions, attn_metadata)

    def enable_small_batch(self, max_tokens: int) -> int:
        """Runs steps of at most ``max_tokens`` tokens through the fused small-batch form of every
        layer that supports it (atom/layers/small_batch.py); returns how many do."""
        count = 0
        for layer in self.model.layers:
            if isinstance(layer, DecoderLayer) and small_batch.supports(layer):
                layer.small_batch_max_tokens = small_batch.max_tokens_for(layer, max_tokens)
                count += 1
        return count

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] -> logits [N, vocab_size] fp32."""
        return self.lm_head(hidden)

    def attention_layers(self) -> list[nn.Module]:
        """The modules that own each layer's KV cache, in layer order."""
        return [layer.self_attn.attn for layer in self.model.layers]

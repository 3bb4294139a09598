"""DeepSeek-V3 (and Kimi-K2, the same architecture with other sizes: one expert group, more
experts, fewer heads). Matches transformers' models/deepseek_v3/modeling_deepseek_v3.py.

Pre-norm decoder: h = h + MLA(RMSNorm(h)); h = h + FFN(RMSNorm(h)); final RMSNorm; LM head. The
FFN of the first ``first_k_dense_replace`` layers is a dense SwiGLU MLP; the others are MoE: the
grouped-sigmoid router (correction bias, routed scaling), the routed experts (FusedMoE) and
``n_shared_experts`` shared experts as one SwiGLU MLP added to the routed output.
"""

from __future__ import annotations

import torch
from torch import nn

from atom.forward_context import AttentionMetadata
from atom.layers.activation import gated_activation
from atom.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from atom.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from atom.layers.mla import MultiHeadLatentAttention
from atom.layers.moe import FusedMoE, MoeRouter
from atom.layers.norm import RMSNorm
from atom.layers.rotary import RotaryEmbedding, get_rope
from atom.layers.rotary_yarn import softmax_scale_multiplier
from atom.model_config import ModelConfig


class DeepseekV3MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        size = intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [size, size], bias=False)
        self.act_fn = gated_activation(hidden_act)
        self.down_proj = RowParallelLinear(size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class DeepseekV3MoE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c, hf = config, config.hf_config
        # DeepSeek-V2's softmax / greedy routing is another architecture (DeepseekV2ForCausalLM).
        for name, expected in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc")):
            value = getattr(hf, name, expected)
            if value != expected:
                raise ValueError(f"DeepseekV3 routing needs {name}={expected!r}, got {value!r}")
        # The gate stays fp32 whatever the model dtype (transformers: _keep_in_fp32_modules_strict).
        self.gate = MoeRouter(
            c.hidden_size, c.num_experts, c.num_experts_per_tok, scoring="sigmoid_grouped",
            renormalize=c.norm_topk_prob, n_group=c.n_group, topk_group=c.topk_group,
            routed_scaling_factor=c.routed_scaling_factor,
        ).to(torch.float32)  # fmt: skip
        self.experts = FusedMoE(
            c.num_experts, c.num_experts_per_tok, c.hidden_size, c.moe_intermediate_size
        )
        shared = c.moe_intermediate_size * c.n_shared_experts
        self.shared_experts = (
            DeepseekV3MLP(config.hidden_size, shared, config.hidden_act) if shared else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = self.gate(x)
        out = self.experts(x, weights, ids)
        return out if self.shared_experts is None else out + self.shared_experts(x)


def make_attention(config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
    hf = config.hf_config
    qk_head_dim = hf.qk_nope_head_dim + hf.qk_rope_head_dim
    return MultiHeadLatentAttention(
        config.hidden_size, config.num_attention_heads, hf.q_lora_rank, hf.kv_lora_rank,
        hf.qk_nope_head_dim, hf.qk_rope_head_dim, hf.v_head_dim, rotary_emb,
        scale=qk_head_dim**-0.5 * softmax_scale_multiplier(config.rope_scaling),
        attention_bias=config.attention_bias, layer_idx=layer_idx,
    )  # fmt: skip


class DeepseekV3DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
        super().__init__()
        self.self_attn = make_attention(config, rotary_emb, layer_idx)
        if config.is_moe_layer(layer_idx):  # from first_k_dense_replace (and moe_layer_freq)
            self.mlp = DeepseekV3MoE(config)
        else:
            self.mlp = DeepseekV3MLP(
                config.hidden_size, config.intermediate_size, config.hidden_act
            )
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


class DeepseekV3Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hf = config.hf_config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        rotary_emb = get_rope(
            hf.qk_rope_head_dim, hf.qk_rope_head_dim, config.max_model_len, config.rope_theta,
            # Interleaved pairs unless the config says otherwise (remote-code configs predate it).
            is_neox=not getattr(hf, "rope_interleave", True), scaling=config.rope_scaling,
            device=self.embed_tokens.weight.device,
        )  # fmt: skip
        self.layers = nn.ModuleList(
            DeepseekV3DecoderLayer(config, rotary_emb, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, positions, meta):
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class DeepseekV3ForCausalLM(nn.Module):
    packed_modules_mapping = {
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig):
        super().__init__()
        hf = config.hf_config
        self.config = config
        self.tie_word_embeddings = config.tie_word_embeddings
        # DeepSeek-V3 checkpoints carry the MTP module(s) as layers N.. (speculative decoding).
        num_mtp = getattr(hf, "num_nextn_predict_layers", None) or getattr(hf, "num_mtp_layers", 0)
        first = config.num_hidden_layers
        skips = [rf"^model\.layers\.{i}\." for i in range(first, first + num_mtp)]
        if not config.n_shared_experts:  # transformers still saves empty shared-expert tensors
            skips.append(r"\.mlp\.shared_experts\.")
        self.skip_checkpoint_weights = tuple(skips)
        self.model = DeepseekV3Model(config)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions: [T] int64 -> hidden [T, hidden_size] (final-normed)."""
        return self.model(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] -> logits [N, vocab_size] fp32."""
        return self.lm_head(hidden)

    def attention_layers(self) -> list[MultiHeadLatentAttention]:
        return [layer.self_attn for layer in self.model.layers]

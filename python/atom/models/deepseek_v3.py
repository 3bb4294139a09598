"""DeepSeek-V3 (and Kimi-K2, the same architecture with other sizes: one expert group, more
experts, fewer heads). Matches transformers' models/deepseek_v3/modeling_deepseek_v3.py.

Pre-norm decoder: h = h + MLA(RMSNorm(h)); h = h + FFN(RMSNorm(h)); final RMSNorm; LM head. The
FFN of the first ``first_k_dense_replace`` layers is a dense SwiGLU MLP; the others are MoE: the
grouped-sigmoid router (correction bias, routed scaling), the routed experts (FusedMoE) and
``n_shared_experts`` shared experts as one SwiGLU MLP added to the routed output. Assembled
from the blocks of atom/models/decoder.py with MLA as the attention and its own RoPE table.
"""

from __future__ import annotations

import torch
from torch import nn

from atom.layers.mla import MultiHeadLatentAttention
from atom.layers.moe import FusedMoE, MoeRouter
from atom.layers.rotary import RotaryEmbedding, get_rope
from atom.layers.rotary_yarn import softmax_scale_multiplier
from atom.model_config import ModelConfig
from atom.models.decoder import DecoderForCausalLM, DecoderLayer, GatedMLP, dense_mlp


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
            GatedMLP(config.hidden_size, shared, config.hidden_act) if shared else None
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


class DeepseekV3ForCausalLM(DecoderForCausalLM):
    # MLA's projections are separate matrices (q_proj / q_a_proj, kv_a_proj_with_mqa, ...).
    packed_modules_mapping = {
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    checkpoint_renames = {}

    def __init__(self, config: ModelConfig):
        hf = config.hf_config
        # DeepSeek-V3 checkpoints carry the MTP module(s) as layers N.. (speculative decoding).
        num_mtp = getattr(hf, "num_nextn_predict_layers", None) or getattr(hf, "num_mtp_layers", 0)
        first = config.num_hidden_layers
        skips = [rf"^model\.layers\.{i}\." for i in range(first, first + num_mtp)]
        if not config.n_shared_experts:  # transformers still saves empty shared-expert tensors
            skips.append(r"\.mlp\.shared_experts\.")
        super().__init__(config)
        self.skip_checkpoint_weights = tuple(skips)

    def make_rope(self, config: ModelConfig, device: torch.device) -> RotaryEmbedding:
        """RoPE over the qk_rope_head_dim part of each head only (the nope part never turns)."""
        hf = config.hf_config
        return get_rope(
            hf.qk_rope_head_dim, hf.qk_rope_head_dim, config.max_model_len, config.rope_theta,
            # Interleaved pairs unless the config says otherwise (remote-code configs predate it).
            is_neox=not getattr(hf, "rope_interleave", True), scaling=config.rope_scaling,
            device=device,
        )  # fmt: skip

    def make_layer(self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
        attention = make_attention(config, rotary_emb, layer_idx)
        # MoE from first_k_dense_replace (and moe_layer_freq) on, dense SwiGLU before.
        mlp = DeepseekV3MoE(config) if config.is_moe_layer(layer_idx) else dense_mlp(config)
        return DecoderLayer(config, attention, mlp)

    def attention_layers(self) -> list[MultiHeadLatentAttention]:
        return [layer.self_attn for layer in self.model.layers]

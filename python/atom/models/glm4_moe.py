"""GLM-4-MoE (GLM-4.5 / 4.6): Llama-shaped decoder with
- attention: bias on q/k/v only (``attention_bias``; o_proj never has one), optional per-head
  q/k RMSNorm (``use_qk_norm``), partial rotary: RoPE turns only the first
  head_dim * partial_rotary_factor (0.5) features of each head, pairing (i, i + rotary_dim / 2)
  within them (rotate_half on q[..., :rotary_dim]), the rest pass through;
- the first ``first_k_dense_replace`` layers dense (intermediate_size), the others MoE: a
  DeepSeek-style sigmoid router with grouped top-k, the score-correction bias used only for the
  choice, renormalised weights (norm_topk_prob) times routed_scaling_factor; routed SwiGLU
  experts of moe_intermediate_size plus ``n_shared_experts`` always-on experts as one SwiGLU MLP
  of moe_intermediate_size * n_shared_experts, added to the routed sum.
The checkpoints also hold ``num_nextn_predict_layers`` multi-token-prediction layers after the
last decoder layer (model.layers.{num_hidden_layers + i}); they are not used here and skipped.
Matches transformers' models/glm4_moe/modeling_glm4_moe.py.
"""

from __future__ import annotations

import torch
from torch import nn

from atom.layers.moe import FusedMoE, MoeRouter
from atom.layers.rotary import RotaryEmbedding
from atom.model_config import ModelConfig
from atom.models.decoder import (
    DecoderAttention,
    DecoderForCausalLM,
    DecoderLayer,
    GatedMLP,
    dense_mlp,
)


class Glm4MoeBlock(nn.Module):
    """x [T, hidden] -> routed experts(x) + shared_experts(x). Checkpoint names: ``gate.weight``
    [E, hidden] and ``gate.e_score_correction_bias`` [E] (both fp32),
    ``experts.{e}.{gate,up,down}_proj.weight``, ``shared_experts.{gate,up,down}_proj.weight``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = MoeRouter(
            config.hidden_size,
            config.num_experts,
            config.num_experts_per_tok,
            scoring="sigmoid_grouped",
            renormalize=config.norm_topk_prob,
            n_group=config.n_group,
            topk_group=config.topk_group,
            routed_scaling_factor=config.routed_scaling_factor,
        )
        self.experts = FusedMoE(
            config.num_experts,
            config.num_experts_per_tok,
            config.hidden_size,
            config.moe_intermediate_size,
            activation=config.hidden_act,
        )
        self.shared_experts = (
            GatedMLP(
                config.hidden_size,
                config.moe_intermediate_size * config.n_shared_experts,
                config.hidden_act,
            )
            if config.n_shared_experts
            else None
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = self.gate(hidden)
        out = self.experts(hidden, topk_weights, topk_ids)
        if self.shared_experts is not None:
            out = out + self.shared_experts(hidden)
        return out


class Glm4MoeForCausalLM(DecoderForCausalLM):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        first_mtp = config.num_hidden_layers
        num_mtp = int(getattr(config.hf_config, "num_nextn_predict_layers", 0) or 0)
        self.skip_checkpoint_weights = tuple(
            rf"^model\.layers\.{i}\." for i in range(first_mtp, first_mtp + num_mtp)
        )

    def make_layer(self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
        attention = DecoderAttention(
            config,
            rotary_emb,
            layer_idx,
            qk_norm=config.use_qk_norm,
            qkv_bias=config.attention_bias,
            o_bias=False,
        )
        mlp = Glm4MoeBlock(config) if config.is_moe_layer(layer_idx) else dense_mlp(config)
        return DecoderLayer(config, attention, mlp)

"""Qwen3-MoE: Qwen3's attention, and a routed MLP on the layers that ``config.moe_layers`` lists
(all but ``mlp_only_layers``, every ``decoder_sparse_step``-th); the others keep a dense MLP.

Routing (Qwen3MoeTopKRouter): p = softmax(x W_gate^T) in fp32, top-k of p, renormalised to sum
to 1 when norm_topk_prob. Each expert is a SwiGLU MLP of moe_intermediate_size. No shared experts.
Matches transformers' models/qwen3_moe/modeling_qwen3_moe.py.
"""

from __future__ import annotations

import torch
from torch import nn

from atom.layers.moe import FusedMoE, MoeRouter
from atom.layers.rotary import RotaryEmbedding
from atom.model_config import ModelConfig
from atom.models.decoder import DecoderForCausalLM, DecoderLayer, dense_mlp
from atom.models.qwen3 import qwen3_attention


class Qwen3MoeSparseBlock(nn.Module):
    """x [T, hidden] -> sum over the top-k experts of weight * expert(x). Checkpoint names:
    ``gate.weight`` [E, hidden], ``experts.{e}.{gate,up,down}_proj.weight``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = MoeRouter(
            config.hidden_size,
            config.num_experts,
            config.num_experts_per_tok,
            scoring="softmax",
            renormalize=config.norm_topk_prob,
        )
        self.experts = FusedMoE(
            config.num_experts,
            config.num_experts_per_tok,
            config.hidden_size,
            config.moe_intermediate_size,
            activation=config.hidden_act,
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = self.gate(hidden)
        return self.experts(hidden, topk_weights, topk_ids)


class Qwen3MoeForCausalLM(DecoderForCausalLM):
    def make_layer(self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
        mlp = Qwen3MoeSparseBlock(config) if config.is_moe_layer(layer_idx) else dense_mlp(config)
        return DecoderLayer(config, qwen3_attention(config, rotary_emb, layer_idx), mlp)

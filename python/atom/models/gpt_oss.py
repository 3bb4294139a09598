"""GPT-OSS (gpt-oss-20b / 120b): a pre-norm MoE decoder with
- attention: bias on q/k/v/o, a learned per-head sink logit (``sinks`` [num_heads]) that joins
  every softmax denominator without a value, and ``layer_types`` alternating a sliding window
  (``sliding_window`` positions, the query's own included) with full attention; YaRN RoPE
  (rope_type "yarn", applied to the whole head in rotate_half pairing);
- MoE on every layer: router logits = x W^T + b, softmax over the top-k logits only; experts
  are clamped SwiGLU MLPs with biases: gate, up = x W_gu + b_gu (gate = even, up = odd columns),
  gate = min(gate, limit), up = clamp(up, -limit, limit),
  out = ((up + 1) * gate * sigmoid(alpha * gate)) W_d + b_d, alpha = 1.702, limit = 7.
No shared experts, no dense layers. Expert weights load from the bf16 layout transformers saves
(``experts.gate_up_proj`` [E, hidden, 2I] interleaved, ``experts.down_proj`` [E, I, hidden] and
their biases) or from the MXFP4-packed originals (``*_blocks`` / ``*_scales``), which the loader
dequantises to that layout (atom/loader/mxfp4.py); the experts then run in the model's dtype.
Matches transformers' models/gpt_oss/modeling_gpt_oss.py.
"""

from __future__ import annotations

import torch
from torch import nn

from atom.kernels.reference.moe import GPTOSS_ALPHA, GPTOSS_LIMIT
from atom.layers.moe import FusedMoE, MoeRouter
from atom.layers.rotary import RotaryEmbedding
from atom.model_config import ModelConfig
from atom.models.decoder import DecoderAttention, DecoderForCausalLM, DecoderLayer


class GptOssMoeBlock(nn.Module):
    """x [T, hidden] -> routed clamped-SwiGLU experts. Checkpoint names: ``router.weight``
    [E, hidden], ``router.bias`` [E], ``experts.{gate_up_proj,down_proj}[_bias]``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        hf = config.hf_config
        self.router = MoeRouter(
            config.hidden_size,
            config.num_experts,
            config.num_experts_per_tok,
            scoring="topk_softmax",
            bias=True,
        )
        self.experts = FusedMoE(
            config.num_experts,
            config.num_experts_per_tok,
            config.hidden_size,
            config.moe_intermediate_size,
            activation="gptoss_swiglu",
            has_bias=True,
            fused_layout="gptoss",
            swiglu_alpha=getattr(hf, "swiglu_alpha", GPTOSS_ALPHA),
            swiglu_limit=getattr(hf, "swiglu_limit", GPTOSS_LIMIT),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = self.router(hidden)
        return self.experts(hidden, topk_weights, topk_ids)


class GptOssForCausalLM(DecoderForCausalLM):
    def make_layer(self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer_idx: int):
        bias = config.attention_bias
        attention = DecoderAttention(
            config, rotary_emb, layer_idx, qkv_bias=bias, o_bias=bias, sinks=True
        )
        return DecoderLayer(config, attention, GptOssMoeBlock(config))

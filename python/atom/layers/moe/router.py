"""MoE routers: hidden states -> (topk_weights [T, k] fp32, topk_ids [T, k] int32).

Three scoring rules, each matching its transformers implementation:
- "softmax" (Qwen3-MoE, Qwen3MoeTopKRouter): p = softmax(x W^T) in fp32, top-k of p, optionally
  renormalised to sum to 1 (config.norm_topk_prob).
- "sigmoid_grouped" (DeepSeek-V3 / Kimi-K2 / GLM-4-MoE, DeepseekV3TopkRouter): s = sigmoid(x W^T)
  in fp32 (the gate weight is kept in fp32). The choice uses s + e_score_correction_bias: experts
  are split into n_group groups, a group scores the sum of its two best biased scores, only the
  topk_group best groups stay eligible, and the top-k eligible experts are picked. The weights are
  the UN-biased s of the picked experts, renormalised (norm_topk_prob, with +1e-20 in the
  denominator as transformers does) and multiplied by routed_scaling_factor.
- "topk_softmax" (GPT-OSS, GptOssTopKRouter): logits = x W^T + b, top-k of the logits, softmax
  over the k picked logits only.

The order of the k slots is not part of the contract (DeepSeek picks with sorted=False); the fused
MoE sums over slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCORINGS = ("softmax", "sigmoid_grouped", "topk_softmax")


def softmax_topk(
    logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [T, E] -> (weights [T, k] fp32, ids [T, k] int32)."""
    probs = torch.softmax(logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def grouped_sigmoid_topk(
    logits: torch.Tensor,
    top_k: int,
    correction_bias: torch.Tensor | None,
    n_group: int,
    topk_group: int,
    renormalize: bool,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [T, E]; correction_bias: [E] or None -> (weights [T, k] fp32, ids [T, k] int32)."""
    num_tokens, num_experts = logits.shape
    scores = torch.sigmoid(logits.float())
    choice = scores if correction_bias is None else scores + correction_bias.float()
    per_group = num_experts // n_group
    # A group's score: the sum of its two best (biased) expert scores.
    group_scores = choice.view(num_tokens, n_group, per_group).topk(2, dim=-1)[0].sum(dim=-1)
    best_groups = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores, dtype=torch.bool)
    group_mask.scatter_(1, best_groups, True)
    expert_mask = group_mask.unsqueeze(-1).expand(-1, -1, per_group).reshape(num_tokens, -1)
    choice = choice.masked_fill(~expert_mask, float("-inf"))
    ids = torch.topk(choice, k=top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * routed_scaling_factor, ids.to(torch.int32)


def topk_softmax(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [T, E] -> softmax over the top-k logits: (weights [T, k] fp32, ids [T, k] int32)."""
    top_logits, ids = torch.topk(logits, top_k, dim=-1)
    return torch.softmax(top_logits.float(), dim=-1), ids.to(torch.int32)


class MoeRouter(nn.Module):
    """The gate: ``weight`` [E, H] (+ ``bias`` [E] for GPT-OSS, + ``e_score_correction_bias`` [E]
    fp32 for sigmoid_grouped). Parameter names match the checkpoints' ``mlp.gate.*`` /
    ``mlp.router.*`` tensors. Replicated on every rank (it is tiny)."""

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        scoring: str = "softmax",
        renormalize: bool = False,
        bias: bool = False,
        n_group: int = 1,
        topk_group: int = 1,
        routed_scaling_factor: float = 1.0,
    ):
        super().__init__()
        if scoring not in SCORINGS:
            raise ValueError(f"unknown router scoring {scoring!r}; known: {SCORINGS}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
        if scoring == "sigmoid_grouped":
            if n_group < 1 or num_experts % n_group:
                raise ValueError(f"num_experts={num_experts} is not divisible by n_group={n_group}")
            if num_experts // n_group < 2:
                raise ValueError(f"n_group={n_group} leaves fewer than 2 experts per group")
            if not 1 <= topk_group <= n_group:
                raise ValueError(f"topk_group={topk_group} must be in [1, n_group={n_group}]")
            if top_k > topk_group * (num_experts // n_group):
                raise ValueError(f"top_k={top_k} exceeds the experts of topk_group={topk_group}")
        self.num_experts, self.top_k, self.scoring = num_experts, top_k, scoring
        self.renormalize, self.n_group, self.topk_group = renormalize, n_group, topk_group
        self.routed_scaling_factor = routed_scaling_factor
        # DeepSeek keeps the gate in fp32 (transformers: _keep_in_fp32_modules_strict); the
        # others compute the logits in the model's dtype. ``keep_fp32`` tells the model not to
        # cast these parameters down.
        self.keep_fp32 = scoring == "sigmoid_grouped"
        # (Built in fp32 even under a bf16 default dtype, so the checkpoint's fp32 gate is not
        # rounded on the way in.)
        gate_dtype = torch.float32 if self.keep_fp32 else None
        self.weight = nn.Parameter(
            torch.empty(num_experts, hidden_size, dtype=gate_dtype), requires_grad=False
        )
        self.bias = nn.Parameter(torch.zeros(num_experts), requires_grad=False) if bias else None
        if scoring == "sigmoid_grouped":
            self.e_score_correction_bias = nn.Parameter(
                torch.zeros(num_experts, dtype=torch.float32), requires_grad=False
            )
        else:
            self.e_score_correction_bias = None

    def _apply(self, fn, recurse=True):
        """``model.to(bf16)`` must not round a fp32-kept gate: re-create such parameters from
        their fp32 values on the new device (what transformers' _keep_in_fp32_modules does)."""
        if not self.keep_fp32:
            return super()._apply(fn, recurse)
        fp32 = {name: p.data for name, p in self._parameters.items() if p is not None}
        super()._apply(fn, recurse)
        for name, p in self._parameters.items():
            if p is not None and p.dtype != torch.float32:
                p.data = fp32[name].to(device=p.device, dtype=torch.float32)
        return self

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [T, H] -> [T, E] (fp32 for sigmoid_grouped, else hidden's dtype)."""
        if self.keep_fp32:
            return F.linear(hidden.float(), self.weight.float())
        bias = None if self.bias is None else self.bias.to(hidden.dtype)
        return F.linear(hidden, self.weight.to(hidden.dtype), bias)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: [T, H] -> (topk_weights [T, k] fp32, topk_ids [T, k] int32)."""
        logits = self.logits(hidden)
        if self.scoring == "softmax":
            return softmax_topk(logits, self.top_k, self.renormalize)
        if self.scoring == "topk_softmax":
            return topk_softmax(logits, self.top_k)
        return grouped_sigmoid_topk(
            logits,
            self.top_k,
            self.e_score_correction_bias,
            self.n_group,
            self.topk_group,
            self.renormalize,
            self.routed_scaling_factor,
        )

    def extra_repr(self) -> str:
        return (
            f"experts={self.num_experts}, top_k={self.top_k}, scoring={self.scoring}, "
            f"renormalize={self.renormalize}, groups={self.topk_group}/{self.n_group}, "
            f"scale={self.routed_scaling_factor}"
        )

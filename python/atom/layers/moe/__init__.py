"""Mixture-of-experts layers: routers (softmax / DeepSeek grouped sigmoid / GPT-OSS) and FusedMoE.

A model's MoE block composes them: ``weights, ids = router(x)``; ``y = experts(x, weights, ids)``;
plus shared experts (an ordinary MLP added to y) where the architecture has them.
"""

from atom.layers.moe.fused_moe import FusedMoE
from atom.layers.moe.router import (
    SCORINGS,
    MoeRouter,
    grouped_sigmoid_topk,
    softmax_topk,
    topk_softmax,
)

__all__ = [
    "SCORINGS",
    "FusedMoE",
    "MoeRouter",
    "grouped_sigmoid_topk",
    "softmax_topk",
    "topk_softmax",
]

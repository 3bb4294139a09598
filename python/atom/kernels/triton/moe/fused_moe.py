"""Launcher of the Triton fused MoE: align -> gate-up GEMM + activation -> down GEMM -> k-sum.

Same function and precision contract as atom.kernels.reference.moe.fused_moe_ref. No host syncs:
every buffer's size depends only on (T, k, E, H, I) and the block config, so a decode step is
capturable in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton

from atom.kernels.reference.moe import check_moe_args
from atom.kernels.registry import register
from atom.kernels.triton.moe.align import moe_align_block_size
from atom.kernels.triton.moe.config import MoeBlockConfig, pick_config
from atom.kernels.triton.moe.kernels import (
    ACTIVATION_CODES,
    moe_down_kernel,
    moe_gate_up_kernel,
    moe_sum_kernel,
)


def _check_layout(name: str, t: torch.Tensor) -> None:
    # The kernels step along the last dim with unit stride (pointer += BLOCK_K).
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim, got strides {t.stride()}")


def fused_moe_triton(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
    b13: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    config: MoeBlockConfig | None = None,
) -> torch.Tensor:
    """hidden [T, H]; w13 [E, 2I, H]; w2 [E, H, I]; topk_* [T, k]; b13 [E, 2I]; b2 [E, H].
    Returns [T, H] in hidden's dtype. ``config`` overrides the block sizes (benchmarks)."""
    check_moe_args(hidden, w13, w2, topk_weights, topk_ids, activation, b13, b2)
    for name, t in (("hidden", hidden), ("w13", w13), ("w2", w2), ("b13", b13), ("b2", b2)):
        if t is not None:
            _check_layout(name, t)
            if t.device != hidden.device:
                raise ValueError(f"{name} is on {t.device}, hidden on {hidden.device}")
    num_tokens, hidden_size = hidden.shape
    num_experts, two_i, _ = w13.shape
    inter = two_i // 2
    top_k = topk_ids.shape[1]
    num_pairs = num_tokens * top_k
    out = torch.empty_like(hidden)
    if num_tokens == 0:
        return out
    cfg = config or pick_config(num_pairs, num_experts)
    kw = cfg.kernel_kwargs()
    # CPU tensors mean the Triton interpreter: turn on its workarounds (kernels.py).
    interpreter = hidden.device.type == "cpu"

    ids = topk_ids.reshape(-1).contiguous()
    weights = topk_weights.reshape(-1).contiguous().float()
    sorted_pairs, block_experts, _ = moe_align_block_size(ids, num_experts, cfg.block_m)
    num_m_blocks = block_experts.numel()

    act = torch.empty(num_pairs, inter, dtype=hidden.dtype, device=hidden.device)
    grid1 = (num_m_blocks * triton.cdiv(inter, cfg.block_n),)
    moe_gate_up_kernel[grid1](
        hidden, w13, b13 if b13 is not None else w13, act, sorted_pairs, block_experts,
        num_pairs, top_k, hidden_size, inter,
        hidden.stride(0), w13.stride(0), w13.stride(1), w13.stride(2),
        b13.stride(0) if b13 is not None else 0, act.stride(0),
        num_m_blocks,
        ACTIVATION=ACTIVATION_CODES[activation], HAS_BIAS=b13 is not None,
        INTERPRETER=interpreter, **kw,
    )  # fmt: skip

    pair_out = torch.empty(num_pairs, hidden_size, dtype=hidden.dtype, device=hidden.device)
    grid2 = (num_m_blocks * triton.cdiv(hidden_size, cfg.block_n),)
    moe_down_kernel[grid2](
        act, w2, b2 if b2 is not None else w2, weights, pair_out, sorted_pairs, block_experts,
        num_pairs, hidden_size, inter,
        act.stride(0), w2.stride(0), w2.stride(1), w2.stride(2),
        b2.stride(0) if b2 is not None else 0, pair_out.stride(0),
        num_m_blocks,
        HAS_BIAS=b2 is not None, INTERPRETER=interpreter, **kw,
    )  # fmt: skip

    block_h = min(1024, triton.next_power_of_2(hidden_size))
    moe_sum_kernel[(num_tokens, triton.cdiv(hidden_size, block_h))](
        pair_out, ids, out, hidden_size, num_experts, pair_out.stride(0), out.stride(0),
        TOP_K=top_k, BLOCK_H=block_h, INTERPRETER=interpreter,
    )  # fmt: skip
    return out


@register("fused_moe", "triton", devices=("cuda",))
def fused_moe(hidden, w13, w2, topk_weights, topk_ids, activation="silu", b13=None, b2=None):
    return fused_moe_triton(hidden, w13, w2, topk_weights, topk_ids, activation, b13, b2)

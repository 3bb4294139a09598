"""The small-batch (decode) form of a dense pre-norm decoder layer: four fused GEMVs.

At decode batch sizes a decoder layer's linear layers only stream their weights, and for small
models a step's cost is the number of kernels, not bytes. The layer's usual sequence

    x = rms_norm(h + r); qkv = x W_qkv; attn; o = a W_o;
    x, h = fused_add_rms_norm(o, h); gu = x W_gu; y = silu_and_mul(gu); d = y W_down

(7 kernels around the attention, the residual carried separately) becomes, with the residual
stream h updated by the GEMV epilogues (atom.kernels.fused_gemv):

    qkv = gemv(h, W_qkv, norm_weight=w_in)          RMSNorm prologue
    h   = gemv(attn, W_o, residual=h)                + h epilogue
    gu  = gemv(h, W_gu, norm_weight=w_post)          RMSNorm prologue
    h   = gemv(gu, W_down, act="silu_and_mul", residual=h)

4 kernels, and the attention asks L2 for the start of a large W_o while it runs (HBM is otherwise
idle then; atom/kernels/triton/l2_prefetch.py). The layer then hands on (h, None): the next layer
(fused or not) and the final norm take a residual of None as "h is the whole stream". The fused
results differ from the unfused ones only by rounding (the GEMM result is not rounded before the
residual add; see atom/kernels/triton/gemv.py).

Which layers qualify (``supports``): a DecoderAttention (fused QKV, RoPE/QK-norm attention) and a
GatedMLP with SiLU, unsharded (one tensor-parallel rank) and unquantized, with weights of the
activations' dtype. MoE and MLA layers keep their usual path. Whether a model uses this form at all
is the runner's choice (``DecoderForCausalLM.enable_small_batch``): on a GPU, for steps of at most
``small_batch_tokens`` tokens (4 by default), or of one token for layers with large weights
(``max_tokens_for``).
"""

from __future__ import annotations

import torch
from torch import nn

from atom import kernels


def _plain_linear(layer: nn.Module) -> bool:
    """An unsharded linear layer that computes F.linear of its own weight (no quantized form)."""
    from atom.layers.linear import LinearBase, RowParallelLinear

    return (
        isinstance(layer, LinearBase)
        and type(layer).forward in (LinearBase.forward, RowParallelLinear.forward)
        and layer.tp_size == 1
        and layer.weight.dim() == 2
        and layer.weight.dtype in (torch.bfloat16, torch.float16, torch.float32)
    )


def supports(layer: nn.Module) -> bool:
    """Whether a DecoderLayer can run its small-batch form (see the module docstring)."""
    from atom.layers.activation import SiluAndMul
    from atom.models.decoder import DecoderAttention, GatedMLP

    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if not (isinstance(attn, DecoderAttention) and isinstance(mlp, GatedMLP)):
        return False
    if not isinstance(mlp.act_fn, SiluAndMul):
        return False
    linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
    dtypes = {lin.weight.dtype for lin in linears}
    return all(_plain_linear(lin) for lin in linears) and len(dtypes) == 1


def max_tokens_for(layer: nn.Module, max_tokens: int) -> int:
    """The step size up to which ``layer`` runs its fused form: ``max_tokens``, but 1 for a layer
    with a large weight, whose fused GEMV is faster only at one row (above, fused_gemv would run
    the unfused sequence anyway, in more kernels than the usual layer form)."""
    from atom.kernels.triton.gemv import SMALL_WEIGHT

    linears = (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
               layer.mlp.down_proj)  # fmt: skip
    return max_tokens if all(lin.weight.numel() <= SMALL_WEIGHT for lin in linears) else 1


def _l2_hint(weight: torch.Tensor) -> torch.Tensor | None:
    """The o-projection weight for the attention's L2 prefetch, if it is large: a small weight's
    GEMV loads its first tile before its PDL wait itself (gemv.SMALL_WEIGHT), and on the H100 the
    prefetch slowed SmolLM2's step (0.510 vs 0.500 ms) while it sped up Llama-3-8B's (5.516 vs
    5.562 ms)."""
    from atom.kernels.triton.gemv import SMALL_WEIGHT

    return weight if weight.numel() > SMALL_WEIGHT else None


def forward(layer: nn.Module, positions, hidden, residual, meta):
    """The DecoderLayer forward in small-batch form: (hidden, residual) -> (h, None)."""
    attn, mlp = layer.self_attn, layer.mlp
    h = hidden if residual is None else hidden + residual
    qkv = kernels.fused_gemv(
        h, attn.qkv_proj.weight, attn.qkv_proj.bias,
        norm_weight=layer.input_layernorm.weight, eps=layer.input_layernorm.eps,
    )  # fmt: skip
    q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
    a = attn.attn(q, k, v, positions, meta, l2_prefetch=_l2_hint(attn.o_proj.weight))
    h = kernels.fused_gemv(a, attn.o_proj.weight, attn.o_proj.bias, residual=h)
    post = layer.post_attention_layernorm
    gate_up = kernels.fused_gemv(
        h, mlp.gate_up_proj.weight, mlp.gate_up_proj.bias, norm_weight=post.weight, eps=post.eps
    )
    h = kernels.fused_gemv(
        gate_up, mlp.down_proj.weight, mlp.down_proj.bias, act="silu_and_mul", residual=h
    )
    return h, None

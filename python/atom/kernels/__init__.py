"""The ops the layers call. Shapes and dtypes are documented on the torch references
(atom/kernels/reference); every implementation computes the same function.

Each call dispatches on the input's device type through ``registry.pick``: aiter (ROCm, when
installed) -> native ``atom._C`` -> triton -> torch reference, skipping backends that are not
registered for that op and device. Functions that mutate say so; callers use the return values.
"""

from __future__ import annotations

import torch

from atom.forward_context import AttentionMetadata
from atom.kernels import backends as _backends  # noqa: F401  (registers every usable backend)
from atom.kernels import opaque
from atom.kernels.registry import pick, register


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., hidden]; weight: [hidden]. Returns a new tensor in x's dtype."""
    return pick("rms_norm", x.device.type)(x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual). May reuse x and residual's storage."""
    return pick("fused_add_rms_norm", x.device.type)(x, residual, weight, eps)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2 * d] = [gate | up]; returns silu(gate) * up: [..., d]."""
    return pick("silu_and_mul", x.device.type)(x)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (query, key) rotated; may rotate them in place."""
    return pick("rotary_embedding", query.device.type)(
        positions, query, key, head_size, cos_sin_cache, is_neox
    )


def reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, k_scale=None, v_scale=None):
    """Writes key/value [T, Hkv, D] into the paged caches at slot_mapping (in place)."""
    pick("reshape_and_cache", key.device.type)(
        key, value, key_cache, value_cache, slot_mapping, k_scale, v_scale
    )


def fused_qk_norm_rope_cache(
    q, k, v, q_norm_weight, k_norm_weight, eps, positions, cos_sin_cache, is_neox,
    key_cache, value_cache, slot_mapping, k_scale=None, v_scale=None,
):  # fmt: skip
    """Optional per-head RMSNorm of q and k, RoPE on both, and the cache write of (k, v), in one
    pass. Returns (q, k) as normed and rotated (possibly in place)."""
    return pick("fused_qk_norm_rope_cache", q.device.type)(
        q, k, v, q_norm_weight, k_norm_weight, eps, positions, cos_sin_cache, is_neox,
        key_cache, value_cache, slot_mapping, k_scale, v_scale,
    )  # fmt: skip


def paged_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of q [T, Hq, D] over the paged cache (this step's K/V already written).
    k_new, v_new [T, Hkv, D] (optional): this step's K/V exactly as written to the cache, rows
    aligned with q's; a backend may read the new tokens' K/V from them (same result) or ignore
    them, as the torch.compile'd decode step does."""
    if torch.compiler.is_compiling():  # one opaque node for torch.compile (kernels/opaque.py)
        return opaque.paged_attention(
            q, key_cache, value_cache, meta, scale, sliding_window, sinks, k_scale, v_scale, out
        )
    return pick("paged_attention", q.device.type)(
        q, key_cache, value_cache, meta, scale, sliding_window, sinks, k_scale, v_scale, out,
        k_new=k_new, v_new=v_new,
    )  # fmt: skip


def fused_moe(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
    b13: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Routed experts: out[t] = sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(hidden[t]).
    hidden [T, H]; w13 [E, 2I, H] = [gate | up]; w2 [E, H, I]; topk_* [T, k] (fp32, int32; ids
    outside [0, E) are skipped); activation "silu" | "gptoss_swiglu"; optional b13 [E, 2I],
    b2 [E, H]. Returns [T, H] in hidden's dtype (atom/kernels/reference/moe.py)."""
    if torch.compiler.is_compiling():
        return opaque.fused_moe(hidden, w13, w2, topk_weights, topk_ids, activation, b13, b2)
    return pick("fused_moe", hidden.device.type)(
        hidden, w13, w2, topk_weights, topk_ids, activation, b13, b2
    )


def mla_decode(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    kv_lora_rank: int,
    k_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weight-absorbed MLA over the latent cache: q [T, H, L + R] = [W_UK^T q_nope | q_pe],
    kv_cache [num_blocks, block_size, 1, L + R] = [c | k_pe]; returns [T, H, L] =
    sum_j softmax_j(scale * q . kv_j) c_j (atom/kernels/reference/mla.py). Fast kernels take
    decode batches (q_len 0 or 1 per sequence)."""
    if torch.compiler.is_compiling():
        return opaque.mla_decode(q, kv_cache, meta, scale, kv_lora_rank, k_scale, out)
    return pick("mla_decode", q.device.type)(q, kv_cache, meta, scale, kv_lora_rank, k_scale, out)


def concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping, k_scale=None) -> None:
    """Writes [kv_c [T, L] | k_pe [T, R]] into the latent cache at slot_mapping (in place)."""
    if torch.compiler.is_compiling():
        return opaque.concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping, k_scale)
    pick("concat_and_cache_mla", kv_c.device.type)(kv_c, k_pe, kv_cache, slot_mapping, k_scale)


def fused_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    act: str | None = None,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Small-batch linear layer with a fused prologue / epilogue: out [M, N] =
    prologue(x) @ weight^T (+ bias) (+ residual), prologue = rms_norm(., norm_weight, eps) or
    act="silu_and_mul" (x [M, 2K]) or none; weight [N, K]; ``out`` may be ``residual`` (in place).
    ``out_dtype``: None (x's dtype) or torch.float32 (the kernel stores its fp32 sum unrounded;
    the unfused fallback casts its result). The Triton kernel takes M <= 32 (decode); larger M
    runs the unfused ops (atom/kernels/reference/gemv.py, atom/kernels/triton/gemv.py). Under
    torch.compile: one opaque node that returns a fresh tensor (use the return value, pass no
    ``out``)."""
    if torch.compiler.is_compiling():
        return opaque.fused_gemv(x, weight, bias, norm_weight, eps, act, residual, out, out_dtype)
    return pick("fused_gemv", x.device.type)(
        x, weight, bias, norm_weight=norm_weight, eps=eps, act=act, residual=residual, out=out,
        out_dtype=out_dtype,
    )  # fmt: skip


def greedy_argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] (any float dtype, last dim contiguous) -> [B] int64 = torch.argmax(logits,
    dim=-1): ties to the lowest index, a NaN above everything (the first NaN's index). The Triton
    kernel (atom/kernels/triton/argmax.py) spreads a long row over many programs; torch.compile
    traces torch's argmax instead (inductor generates and fuses its own reduction)."""
    if torch.compiler.is_compiling():
        return logits.argmax(dim=-1)
    return pick("greedy_argmax", logits.device.type)(logits)


@register("greedy_argmax", "torch")
def greedy_argmax_reference(logits: torch.Tensor) -> torch.Tensor:
    """The torch reference of greedy_argmax (and its implementation on the CPU)."""
    return logits.argmax(dim=-1)


try:  # the Triton greedy_argmax (CUDA); backends.py registers the other Triton kernels
    from atom.kernels.triton import argmax as _triton_argmax  # noqa: F401, E402
except ImportError:  # pragma: no cover - triton not installed
    _triton_argmax = None

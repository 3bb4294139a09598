"""RoPE, QK-norm and the cache write of a decode step's new token, inside the decode kernel.

In a GPU decode step the attention layer hands the split kernel (attention_decode) the raw q, k and
v with a ``DecodeRope``; the kernel norms and rotates q (rope_tile.normed_rotated_rows) and the new
key, writes the key and value into the cache slot, and folds that key into its softmax state
(``attend_new_key``, run by the last split before its cache tiles) - the work of
fused_qk_norm_rope_cache, one kernel less per layer. This module holds that part: the parameter
bundle, the Triton step for the new key, and the launcher's argument/constexpr lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from atom.kernels.triton.rope_tile import normed_rotated_rows, round_to_dtype


@dataclass(frozen=True)
class DecodeRope:
    """What the decode kernel needs to do fused_qk_norm_rope_cache's work itself (ROPE): this
    step's raw keys/values and the norm/RoPE parameters. q is then passed raw too; the kernel
    writes the normed, rotated key and the value into the cache slots and attends to them."""

    k: torch.Tensor  # [T, Hkv, D] raw keys (before norm and RoPE), q's dtype
    v: torch.Tensor  # [T, Hkv, D]
    positions: torch.Tensor  # [T] integer
    cos_sin_cache: torch.Tensor  # [max_position, rot_dim] fp32 (atom/kernels/reference/rotary.py)
    is_neox: bool
    slot_mapping: torch.Tensor  # [T] integer, -1 = no cache write
    q_norm_weight: torch.Tensor | None = None  # [D] per-head RMSNorm (Qwen3), with k's
    k_norm_weight: torch.Tensor | None = None
    eps: float = 1e-6


@triton.jit
def attend_new_key(
    acc, m_i, l_i, q, q_tok, kv_head, qk_scale, k_new_ptr, v_new_ptr, cos_sin_row, k_norm_w_ptr,
    norm_eps, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, slot_mapping_ptr,
    stride_kn_tok, stride_kn_head, stride_vn_tok, stride_vn_head, stride_k_block, stride_k_tok,
    stride_k_head, stride_v_block, stride_v_tok, stride_v_head, dtype: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    ROT_DIM: tl.constexpr, IS_NEOX: tl.constexpr, QK_NORM: tl.constexpr,
    HAS_K_SCALE: tl.constexpr, HAS_V_SCALE: tl.constexpr, FP8_MAX: tl.constexpr,
    CPU_BF16: tl.constexpr,
):  # fmt: skip
    """ROPE: the new token's own key, in one program per (sequence, KV head). Norms and rotates
    the raw key, writes key and value into the cache slot (quantized for an fp8 cache, as
    reshape_and_cache does), and folds the key into the running state with the value the cache
    now holds, so the result equals attention over the updated cache."""
    offs_d = tl.arange(0, D_PAD)
    one = tl.arange(0, 1)
    in_head = offs_d[None, :] < HEAD_DIM
    k_row = k_new_ptr + q_tok.to(tl.int64) * stride_kn_tok + kv_head * stride_kn_head
    k = normed_rotated_rows(
        k_row + one[:, None] * 0, one == 0, cos_sin_row, k_norm_w_ptr, norm_eps, dtype, HEAD_DIM,
        D_PAD, ROT_DIM, IS_NEOX, QK_NORM, CPU_BF16,
    )  # [1, D_PAD]  # fmt: skip
    v_row = v_new_ptr + q_tok.to(tl.int64) * stride_vn_tok + kv_head * stride_vn_head
    v = tl.load(v_row + one[:, None] * 0 + offs_d[None, :], mask=in_head, other=0.0)
    v = v.to(tl.float32)
    cache_type = k_cache_ptr.dtype.element_ty
    if cache_type.is_fp8():  # the cache stores x / scale; the kernel reads it back scaled
        k_s = tl.load(k_scale_ptr).to(tl.float32) if HAS_K_SCALE else 1.0
        v_s = tl.load(v_scale_ptr).to(tl.float32) if HAS_V_SCALE else 1.0
        k_cached = tl.clamp(k / k_s, -FP8_MAX, FP8_MAX).to(cache_type)
        v_cached = tl.clamp(v / v_s, -FP8_MAX, FP8_MAX).to(cache_type)
    else:
        k_cached = k.to(cache_type)
        v_cached = v.to(cache_type)
    slot = tl.load(slot_mapping_ptr + q_tok).to(tl.int64)
    if slot >= 0:
        block, in_block = slot // BLOCK_SIZE, slot % BLOCK_SIZE
        k_dst = k_cache_ptr + block * stride_k_block + in_block * stride_k_tok
        v_dst = v_cache_ptr + block * stride_v_block + in_block * stride_v_tok
        k_dst += kv_head * stride_k_head + one[:, None] * 0 + offs_d[None, :]
        v_dst += kv_head * stride_v_head + one[:, None] * 0 + offs_d[None, :]
        tl.store(k_dst, k_cached, mask=in_head)
        tl.store(v_dst, v_cached, mask=in_head)
    # The same products as a tile step (attention_tile): q . k in fp32, p rounded to q's dtype
    # for the P.V product, l summed from the unrounded p.
    score = tl.sum(q.to(tl.float32) * k_cached.to(tl.float32), 1) * qk_scale
    m_new = tl.maximum(m_i, score)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(score - m_new)
    l_i = l_i * alpha + p
    p_rounded = round_to_dtype(p, dtype, CPU_BF16)
    acc = acc * alpha[:, None] + p_rounded[:, None] * v_cached.to(tl.float32)
    return acc, m_new, l_i


def rope_arguments(rope: DecodeRope | None, dummy: torch.Tensor) -> tuple:
    """The split kernel's ROPE arguments, from k_new_ptr to stride_cs_pos (dummies without)."""
    if rope is None:
        return (dummy,) * 7 + (0.0,) + (0,) * 5
    q_w = rope.q_norm_weight if rope.q_norm_weight is not None else dummy
    k_w = rope.k_norm_weight if rope.k_norm_weight is not None else dummy
    return (
        rope.k, rope.v, rope.positions, rope.cos_sin_cache, q_w, k_w, rope.slot_mapping,
        float(rope.eps), rope.k.stride(0), rope.k.stride(1), rope.v.stride(0), rope.v.stride(1),
        rope.cos_sin_cache.stride(0),
    )  # fmt: skip


def rope_constexprs(rope: DecodeRope | None, key_cache: torch.Tensor) -> dict:
    if rope is None:
        return {}
    fp8_max = torch.finfo(key_cache.dtype).max if key_cache.element_size() == 1 else 448.0
    return dict(
        ROPE=True, QK_NORM=rope.q_norm_weight is not None, ROT_DIM=rope.cos_sin_cache.shape[1],
        IS_NEOX=rope.is_neox, FP8_MAX=float(fp8_max),
    )  # fmt: skip

"""Writing new K/V into the paged cache, and the fused QK-norm + RoPE + cache-write op.

Layout: see atom.forward_context. An fp8 cache stores x / scale (per-tensor scale); readers
multiply by the same scale.
"""

from __future__ import annotations

import torch

from atom.kernels.reference.norm import rms_norm_ref
from atom.kernels.reference.rotary import apply_rope_ref
from atom.kernels.registry import register


def quantize_for_cache(x: torch.Tensor, cache_dtype: torch.dtype, scale) -> torch.Tensor:
    if cache_dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
        finfo = torch.finfo(cache_dtype)
        s = 1.0 if scale is None else scale
        return (x.float() / s).clamp(finfo.min, finfo.max).to(cache_dtype)
    return x.to(cache_dtype)


@register("reshape_and_cache", "torch")
def reshape_and_cache(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [T] int64, -1 = skip
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    num_tokens = slot_mapping.shape[0]
    valid = slot_mapping[:num_tokens] >= 0
    slots = slot_mapping[valid].long()
    kc = key_cache.view(-1, *key_cache.shape[2:])
    vc = value_cache.view(-1, *value_cache.shape[2:])
    kc[slots] = quantize_for_cache(key[:num_tokens][valid], key_cache.dtype, k_scale)
    vc[slots] = quantize_for_cache(value[:num_tokens][valid], value_cache.dtype, v_scale)


@register("fused_qk_norm_rope_cache", "torch")
def fused_qk_norm_rope_cache(
    q: torch.Tensor,  # [T, Hq, D]
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    q_norm_weight: torch.Tensor | None,  # [D] per-head RMSNorm weight (Qwen3), or None
    k_norm_weight: torch.Tensor | None,
    eps: float,
    positions: torch.Tensor,  # [T]
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (q, k) after norm and RoPE; k (roped) and v are also written to the cache."""
    if q_norm_weight is not None:
        q = rms_norm_ref(q, q_norm_weight, eps)
    if k_norm_weight is not None:
        k = rms_norm_ref(k, k_norm_weight, eps)
    q = apply_rope_ref(q, positions, cos_sin_cache, is_neox)
    k = apply_rope_ref(k, positions, cos_sin_cache, is_neox)
    reshape_and_cache(k, v, key_cache, value_cache, slot_mapping, k_scale, v_scale)
    return q, k

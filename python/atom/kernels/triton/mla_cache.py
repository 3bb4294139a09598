"""Writing MLA latents into the paged cache (the Triton backend of ``concat_and_cache_mla``).

One program per token t: row slot_mapping[t] of the cache (viewed as [num_slots, L + R]) gets
[kv_c[t] | k_pe[t]], divided by k_scale and saturated for an fp8 cache. slot -1 (padding) is
skipped, so the launch is CUDA-graph safe (no host reads). See atom/kernels/reference/mla.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from atom.kernels.registry import register

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e4m3fnuz: 240.0}


@triton.jit
def _concat_and_cache_kernel(
    kv_c_ptr,  # [T, L]
    k_pe_ptr,  # [T, R]
    cache_ptr,  # [num_blocks, BLOCK_SIZE, 1, L + R]
    slot_ptr,  # [>= T] int64
    k_scale_ptr,
    stride_c_tok,
    stride_pe_tok,
    stride_cache_block,
    stride_cache_tok,
    KV_LORA: tl.constexpr,
    L_PAD: tl.constexpr,
    ROPE: tl.constexpr,
    R_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HAS_K_SCALE: tl.constexpr,
    FP8_LIMIT: tl.constexpr,  # 0.0 for an unquantized cache
):
    tok = tl.program_id(0)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    row = (
        cache_ptr
        + (slot // BLOCK_SIZE) * stride_cache_block
        + (slot % BLOCK_SIZE) * stride_cache_tok
    )
    offs_l = tl.arange(0, L_PAD)
    offs_r = tl.arange(0, R_PAD)
    c = tl.load(kv_c_ptr + tok.to(tl.int64) * stride_c_tok + offs_l, mask=offs_l < KV_LORA)
    pe = tl.load(k_pe_ptr + tok.to(tl.int64) * stride_pe_tok + offs_r, mask=offs_r < ROPE)
    if FP8_LIMIT > 0.0:
        c = c.to(tl.float32)
        pe = pe.to(tl.float32)
        if HAS_K_SCALE:  # divide (not multiply by 1/scale): the reference's rounding
            scale = tl.load(k_scale_ptr).to(tl.float32)
            c = c / scale
            pe = pe / scale
        c = tl.clamp(c, -FP8_LIMIT, FP8_LIMIT)
        pe = tl.clamp(pe, -FP8_LIMIT, FP8_LIMIT)
    dtype = cache_ptr.dtype.element_ty
    tl.store(row + offs_l, c.to(dtype), mask=offs_l < KV_LORA)
    tl.store(row + KV_LORA + offs_r, pe.to(dtype), mask=offs_r < ROPE)


@register("concat_and_cache_mla", "triton", devices=("cuda",))
def concat_and_cache_mla(
    kv_c: torch.Tensor,  # [T, L], last dim contiguous
    k_pe: torch.Tensor,  # [T, R], last dim contiguous
    kv_cache: torch.Tensor,  # [num_blocks, block_size, 1, L + R] activations' dtype or fp8 e4m3
    slot_mapping: torch.Tensor,  # [>= T] int64 (-1 = skip)
    k_scale: torch.Tensor | None = None,  # one-element fp32 (fp8 cache)
) -> None:
    num_tokens, kv_lora_rank = kv_c.shape
    rope = k_pe.shape[-1]
    if k_pe.dim() != 2 or k_pe.shape[0] != num_tokens:
        raise ValueError(f"k_pe {tuple(k_pe.shape)} must be [{num_tokens}, R] like kv_c")
    if kv_cache.dim() != 4 or kv_cache.shape[2:] != (1, kv_lora_rank + rope):
        raise ValueError(
            f"kv_cache {tuple(kv_cache.shape)} must be [num_blocks, block_size, 1, "
            f"{kv_lora_rank + rope}]"
        )
    if kv_c.stride(-1) != 1 or k_pe.stride(-1) != 1 or kv_cache.stride(-1) != 1:
        raise ValueError("kv_c, k_pe and kv_cache must be contiguous in their last dim")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] < num_tokens:
        raise ValueError(f"slot_mapping {tuple(slot_mapping.shape)} has fewer than {num_tokens}")
    if kv_cache.dtype in (torch.float16, torch.bfloat16, torch.float32):
        if kv_cache.dtype != kv_c.dtype:
            raise ValueError(f"kv_cache dtype {kv_cache.dtype} != kv_c dtype {kv_c.dtype}")
        limit = 0.0
    elif kv_cache.dtype in FP8_MAX:
        limit = FP8_MAX[kv_cache.dtype]
    else:
        raise ValueError(f"unsupported kv_cache dtype {kv_cache.dtype}")
    if num_tokens == 0:
        return
    _concat_and_cache_kernel[(num_tokens,)](
        kv_c, k_pe, kv_cache, slot_mapping,
        slot_mapping if k_scale is None else k_scale.reshape(1),
        kv_c.stride(0), k_pe.stride(0), kv_cache.stride(0), kv_cache.stride(1),
        KV_LORA=kv_lora_rank, L_PAD=triton.next_power_of_2(kv_lora_rank),
        ROPE=rope, R_PAD=triton.next_power_of_2(rope), BLOCK_SIZE=kv_cache.shape[1],
        HAS_K_SCALE=k_scale is not None, FP8_LIMIT=limit,
    )  # fmt: skip

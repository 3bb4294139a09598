"""Per-head RMSNorm and RoPE of a tile of head rows, inside an attention kernel.

The decode kernel can take this step's raw q/k (straight from the QKV projection) and do what
``fused_qk_norm_rope_cache`` does (atom/kernels/reference/cache.py) on the rows it loads, so a
decode layer needs no separate norm/RoPE/cache-write kernel. The math is the reference's, with
its roundings (x's dtype after the norm and after the rotation):
    norm:  y_i = round(x_i * rsqrt(sum_j x_j^2 / D + eps) * w_i)
    rope:  out_i = round(y_i cos(p f_i) + sign_i y_partner(i) sin(p f_i))   for i < ROT_DIM
           out_i = y_i                                                         otherwise
with the cos/sin row of position p read from cos_sin_cache [max_position, ROT_DIM] (cos in the
first ROT_DIM / 2 columns, sin in the rest). Pairs:
    neox   (i, i + ROT_DIM/2): partner(i) = i +- ROT_DIM/2, f_i = i mod ROT_DIM/2, sign -1 below
    gpt-j  (2j, 2j + 1):       partner(i) = i xor 1,        f_i = i // 2,          sign -1 on even i
A rotation mixes two columns of a row; a register tile cannot swap its columns, so the partner
columns are loaded a second time (the same bytes, from L1) at permuted addresses.
"""

from __future__ import annotations

import triton
import triton.language as tl

from atom.kernels.triton.attention_tile import round_to_bf16_in_fp32


@triton.jit
def round_to_dtype(x, dtype: tl.constexpr, CPU_BF16: tl.constexpr):
    """fp32 x rounded to dtype's precision, kept in fp32 (the interpreter rounds bf16 by hand)."""
    if CPU_BF16:
        return round_to_bf16_in_fp32(x)
    return x.to(dtype).to(tl.float32)


@triton.jit
def normed_rotated_rows(
    row_ptrs,  # [R, 1] pointers to each row's element 0
    row_valid,  # [R] rows to load (others come back as zeros)
    cos_sin_ptr,  # the cos/sin cache row of this token's position
    norm_w_ptr,  # [HEAD_DIM] RMSNorm weight (HAS_NORM)
    eps,
    dtype: tl.constexpr,  # the rounding dtype (the activations')
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    ROT_DIM: tl.constexpr,
    IS_NEOX: tl.constexpr,
    HAS_NORM: tl.constexpr,
    CPU_BF16: tl.constexpr,
):
    """[R, D_PAD] fp32 holding dtype values: the rows normed (optionally) and rotated; columns
    past HEAD_DIM and invalid rows are 0 (module docstring)."""
    offs_d = tl.arange(0, D_PAD)
    half: tl.constexpr = ROT_DIM // 2
    rotating = offs_d < ROT_DIM
    if IS_NEOX:
        partner = tl.where(offs_d < half, offs_d + half, tl.where(rotating, offs_d - half, offs_d))
        freq = tl.where(offs_d < half, offs_d, offs_d - half)
        sign = tl.where(offs_d < half, -1.0, 1.0)
    else:
        partner = tl.where(rotating, offs_d ^ 1, offs_d)
        freq = offs_d // 2
        sign = tl.where(offs_d % 2 == 0, -1.0, 1.0)
    mask = row_valid[:, None] & (offs_d[None, :] < HEAD_DIM)
    x = tl.load(row_ptrs + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    x_partner = tl.load(row_ptrs + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        inv_rms = tl.rsqrt(tl.sum(x * x, 1) / HEAD_DIM + eps)
        in_head = offs_d < HEAD_DIM
        w = tl.load(norm_w_ptr + offs_d, mask=in_head, other=0.0).to(tl.float32)
        w_partner = tl.load(norm_w_ptr + partner, mask=in_head, other=0.0).to(tl.float32)
        x = round_to_dtype(x * inv_rms[:, None] * w[None, :], dtype, CPU_BF16)
        x_partner = round_to_dtype(
            x_partner * inv_rms[:, None] * w_partner[None, :], dtype, CPU_BF16
        )
    cos = tl.load(cos_sin_ptr + freq, mask=rotating, other=1.0)
    sin = tl.load(cos_sin_ptr + half + freq, mask=rotating, other=0.0)
    rotated = x * cos[None, :] + sign[None, :] * x_partner * sin[None, :]
    return round_to_dtype(rotated, dtype, CPU_BF16)


def rope_dims_supported(head_dim: int, rot_dim: int) -> bool:
    """What normed_rotated_rows handles: an even rotary dim within the head."""
    return 0 < rot_dim <= head_dim and rot_dim % 2 == 0 and triton.next_power_of_2(head_dim) <= 256

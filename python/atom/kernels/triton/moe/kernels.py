"""The fused MoE's Triton kernels: two grouped GEMMs over expert-sorted rows, and the k-reduction.

Rows are the T*k (token, slot) pairs, laid out by ``moe_align_block_size`` so that every BLOCK_M
rows belong to one expert. A program computes one [BLOCK_M, BLOCK_N] output tile:

    gate-up:  act[p, n]  = act( x[p // k] . w13[e, n],  x[p // k] . w13[e, I + n] )   n < I
              (the gate and up tiles of the same n are accumulated side by side, so the
              activation is applied in registers and [*, 2I] never reaches memory)
    down:     out2[p, h] = w[p] * ( act[p] . w2[e, h] + b2[e, h] )                 h < H
    reduce:   out[t, h]  = sum_j out2[t * k + j, h]    (fp32, skipping pairs with an invalid id)

Accumulation is fp32; act and out2 are stored in the input dtype (the reference's contract).
Program order: GROUP_M consecutive m-blocks sweep the same n-block before moving on, so a weight
tile is reused from L2 by all the m-blocks of its expert that run together (the usual swizzle).
"""

from __future__ import annotations

import triton
import triton.language as tl

ACTIVATION_CODES = {"silu": 0, "gptoss_swiglu": 1}


@triton.jit
def _tile_coords(num_m_blocks, num_n_blocks, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    blocks_per_group = GROUP_M * num_n_blocks
    group = pid // blocks_per_group
    first_m = group * GROUP_M
    group_rows = tl.minimum(num_m_blocks - first_m, GROUP_M)
    pid_m = first_m + (pid % blocks_per_group) % group_rows
    pid_n = (pid % blocks_per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def _cast_for_store(x, dtype: tl.constexpr, EMULATE: tl.constexpr):
    """fp32 -> dtype with round-to-nearest-even. The CPU interpreter truncates fp32 -> bf16
    (numpy has no bf16), doubling the rounding error; under EMULATE round the bits ourselves so
    the interpreter computes what the GPU does."""
    if EMULATE and dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # keep the top 16 bits, rounded
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _activation(gate, up, ACTIVATION: tl.constexpr):
    if ACTIVATION == 0:  # silu(gate) * up
        return gate * tl.sigmoid(gate) * up
    else:  # GPT-OSS clamped SwiGLU: alpha = 1.702, limit = 7
        gate = tl.minimum(gate, 7.0)
        up = tl.minimum(tl.maximum(up, -7.0), 7.0)
        return (up + 1.0) * gate * tl.sigmoid(1.702 * gate)


@triton.jit
def moe_gate_up_kernel(
    x_ptr,  # [T, H]
    w13_ptr,  # [E, 2I, H]
    b13_ptr,  # [E, 2I] (unused unless HAS_BIAS)
    act_ptr,  # [N, I] out, N = T * k
    sorted_pairs_ptr,  # [max_padded] int32
    block_experts_ptr,  # [max_padded // BLOCK_M] int32
    num_pairs,
    top_k,
    H,
    INTER,
    stride_xt,
    stride_we,
    stride_wn,
    stride_wk,
    stride_be,
    stride_at,
    num_m_blocks,
    ACTIVATION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    # CPU interpreter workarounds: its tl.dot mishandles bf16 operands (multiply in fp32 there,
    # an exact upcast) and its bf16 cast truncates (see _cast_for_store).
    INTERPRETER: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_coords(num_m_blocks, tl.cdiv(INTER, BLOCK_N), GROUP_M)
    expert = tl.load(block_experts_ptr + pid_m).to(tl.int64)
    if expert < 0:  # past the last padded run: no work
        return
    pairs = tl.load(sorted_pairs_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = pairs < num_pairs
    tokens = (pairs // top_k).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < INTER
    offs_k = tl.arange(0, BLOCK_K)

    x_ptrs = x_ptr + tokens[:, None] * stride_xt + offs_k[None, :]
    # [BLOCK_K, BLOCK_N] views of the gate rows n and the up rows I + n of w13[expert]
    wg_ptrs = (
        w13_ptr + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
    )
    wu_ptrs = wg_ptrs + INTER * stride_wn
    acc_gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, tl.cdiv(H, BLOCK_K)):
        k_ok = offs_k < H - k0 * BLOCK_K
        x = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wg = tl.load(wg_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        wu = tl.load(wu_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if INTERPRETER:
            x, wg, wu = x.to(tl.float32), wg.to(tl.float32), wu.to(tl.float32)
        acc_gate = tl.dot(x, wg, acc_gate, input_precision="ieee")
        acc_up = tl.dot(x, wu, acc_up, input_precision="ieee")
        x_ptrs += BLOCK_K
        wg_ptrs += BLOCK_K * stride_wk
        wu_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        b_ptrs = b13_ptr + expert * stride_be + offs_n
        acc_gate += tl.load(b_ptrs, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc_up += tl.load(b_ptrs + INTER, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    act = _activation(acc_gate, acc_up, ACTIVATION)
    out_ptrs = act_ptr + pairs.to(tl.int64)[:, None] * stride_at + offs_n[None, :]
    tl.store(
        out_ptrs,
        _cast_for_store(act, act_ptr.dtype.element_ty, INTERPRETER),
        mask=row_ok[:, None] & n_ok[None, :],
    )


@triton.jit
def moe_down_kernel(
    act_ptr,  # [N, I]
    w2_ptr,  # [E, H, I]
    b2_ptr,  # [E, H] (unused unless HAS_BIAS)
    weights_ptr,  # [N] fp32 routing weight of each pair
    out_ptr,  # [N, H] out
    sorted_pairs_ptr,
    block_experts_ptr,
    num_pairs,
    H,
    INTER,
    stride_at,
    stride_we,
    stride_wn,
    stride_wk,
    stride_be,
    stride_ot,
    num_m_blocks,
    HAS_BIAS: tl.constexpr,
    INTERPRETER: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_coords(num_m_blocks, tl.cdiv(H, BLOCK_N), GROUP_M)
    expert = tl.load(block_experts_ptr + pid_m).to(tl.int64)
    if expert < 0:
        return
    pairs = tl.load(sorted_pairs_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = pairs < num_pairs
    rows = pairs.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < H
    offs_k = tl.arange(0, BLOCK_K)

    a_ptrs = act_ptr + rows[:, None] * stride_at + offs_k[None, :]
    w_ptrs = w2_ptr + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, tl.cdiv(INTER, BLOCK_K)):
        k_ok = offs_k < INTER - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if INTERPRETER:
            a, w = a.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision="ieee")
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        bias = tl.load(b2_ptr + expert * stride_be + offs_n, mask=n_ok, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    routing = tl.load(weights_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    acc = acc * routing[:, None]
    out_ptrs = out_ptr + rows[:, None] * stride_ot + offs_n[None, :]
    tl.store(
        out_ptrs,
        _cast_for_store(acc, out_ptr.dtype.element_ty, INTERPRETER),
        mask=row_ok[:, None] & n_ok[None, :],
    )


@triton.jit
def moe_sum_kernel(
    pair_out_ptr,  # [T * k, H]
    ids_ptr,  # [T * k] expert ids: pairs with an id outside [0, E) were not computed
    out_ptr,  # [T, H]
    H,
    num_experts,
    stride_pt,
    stride_ot,
    TOP_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
    INTERPRETER: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = offs_h < H
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        pair = token * TOP_K + j
        eid = tl.load(ids_ptr + pair)
        if (eid >= 0) & (eid < num_experts):
            acc += tl.load(pair_out_ptr + pair * stride_pt + offs_h, mask=h_ok).to(tl.float32)
    out = _cast_for_store(acc, out_ptr.dtype.element_ty, INTERPRETER)
    tl.store(out_ptr + token * stride_ot + offs_h, out, mask=h_ok)

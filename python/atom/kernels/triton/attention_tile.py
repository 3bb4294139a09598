"""One step of online-softmax attention over a tile of keys gathered from the paged KV cache.

Shared by the unified (prefill / mixed) kernel and the split-K decode kernel. The running state of
a block of M query rows is (acc, m, l) in the log2 domain (FlashAttention-2, Dao 2023):
    s_j   = (q . k_j) * softmax_scale * k_scale * log2(e)
    m'    = max(m, max_j s_j)
    l'    = l * 2^(m - m') + sum_j 2^(s_j - m')
    acc'  = acc * 2^(m - m') + sum_j 2^(s_j - m') v_j
and at the end out = acc / l * v_scale. The per-tensor k_scale/v_scale of an fp8 cache are folded
into the score scale and the final normalisation, so K and V tiles are converted from fp8 to the
query's dtype exactly (every e4m3 value is representable in bf16, fp16 and fp32) and the dots run
on the tensor cores in that dtype.

Gathering: key position j of a sequence lives in cache row block_table[j // BLOCK_SIZE], column
j % BLOCK_SIZE. A tile of BLOCK_N keys is gathered token by token, so BLOCK_N and the cache block
size are independent (each token's row of HEAD_DIM values is contiguous, so loads stay coalesced).
Block ids are widened to int64 before multiplying by the block stride: a large cache has more than
2^31 elements.

Contiguous source (attend_contiguous_kv_tile): in a prefill the new tokens' keys/values are also
the rows of the k/v tensors the layer has just written into the cache, key j at row j. Their tile
addresses are affine in the tile start (one 64-bit scalar base per tile plus 32-bit in-tile
offsets, no block-table load), so the loads do not wait on another load and Triton's software
pipeliner can prefetch them. Both share the online-softmax step (_softmax_step). On Hopper the
same rows can come through TMA tensor descriptors (attend_described_kv_tile): the copy engine
fills shared memory, so the kernel holds no address registers for them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def round_to_bf16_in_fp32(x):
    """Round-to-nearest-even of fp32 x to bf16 precision, kept in fp32: add half an ulp of the
    16 dropped bits (plus the tie-breaking lowest kept bit) and clear them."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def to_output_dtype(x, dtype: tl.constexpr, CPU_BF16: tl.constexpr):
    """fp32 -> dtype. The interpreter truncates fp32 -> bf16; GPUs round to nearest even."""
    if CPU_BF16:
        x = round_to_bf16_in_fp32(x)
    return x.to(dtype)


@triton.jit
def _dot_operand(x, dtype: tl.constexpr, CPU_BF16: tl.constexpr):
    """x rounded to the compute dtype; under CPU_BF16 the bf16 values are kept in fp32."""
    if CPU_BF16:
        if x.dtype == tl.float32:
            x = round_to_bf16_in_fp32(x)
        else:
            x = x.to(tl.float32)
    else:
        x = x.to(dtype)
    return x


@triton.jit
def attend_kv_tile(
    acc,  # [M, D_PAD] fp32 running numerator
    m_i,  # [M] fp32 running max of the scores (log2 domain)
    l_i,  # [M] fp32 running denominator
    q,  # [M, D_PAD] query rows in the compute dtype
    q_pos,  # [M] int32 position of each query row in its sequence (for POS_MASK)
    k_head_ptr,  # key cache pointer advanced to this KV head
    v_head_ptr,  # value cache pointer advanced to this KV head
    block_table_ptr,  # this sequence's row of the block table
    tile_start,  # position of the tile's first key
    kv_lo,  # keys outside [kv_lo, kv_hi) are never loaded (RANGE_MASK)
    kv_hi,
    window,  # sliding window W: row p sees keys j with p - j < W (POS_MASK and USE_WINDOW)
    qk_scale,  # softmax_scale * k_scale * log2(e), > 0
    stride_k_block,
    stride_k_tok,
    stride_v_block,
    stride_v_tok,
    offs_d,  # [D_PAD] arange
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,  # HEAD_DIM rounded up to a power of two (columns past HEAD_DIM are masked)
    RANGE_MASK: tl.constexpr,  # the tile may reach outside [kv_lo, kv_hi)
    POS_MASK: tl.constexpr,  # apply the causal (and window) mask per query row
    USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no tf32), ignored for 16-bit inputs
    CPU_BF16: tl.constexpr,  # bf16 under the CPU interpreter (see dot_settings)
):
    kv_pos = tile_start + tl.arange(0, BLOCK_N)
    in_range = (kv_pos >= kv_lo) & (kv_pos < kv_hi)
    if RANGE_MASK:
        block_ids = tl.load(block_table_ptr + kv_pos // BLOCK_SIZE, mask=in_range, other=0)
    else:
        block_ids = tl.load(block_table_ptr + kv_pos // BLOCK_SIZE)
    block_ids = block_ids.to(tl.int64)
    in_block = kv_pos % BLOCK_SIZE
    k_offs = block_ids[:, None] * stride_k_block + in_block[:, None] * stride_k_tok
    v_offs = block_ids[:, None] * stride_v_block + in_block[:, None] * stride_v_tok
    return _softmax_step(
        acc, m_i, l_i, q, q_pos, kv_pos, in_range, k_head_ptr + k_offs + offs_d[None, :],
        v_head_ptr + v_offs + offs_d[None, :], window, qk_scale, offs_d, HEAD_DIM, D_PAD,
        RANGE_MASK, POS_MASK, USE_WINDOW, DOT_PRECISION, CPU_BF16,
    )  # fmt: skip


@triton.jit
def attend_contiguous_kv_tile(
    acc,
    m_i,
    l_i,
    q,
    q_pos,  # [M] int32 query positions, in the same coordinates as the key rows below
    k_base_ptr,  # key j of this source is the row at k_base_ptr + j * stride_k_tok
    v_base_ptr,
    tile_start,
    kv_lo,
    kv_hi,
    window,
    qk_scale,
    stride_k_tok,
    stride_v_tok,
    offs_d,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    RANGE_MASK: tl.constexpr,
    POS_MASK: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    CPU_BF16: tl.constexpr,
):
    """attend_kv_tile for keys stored as consecutive rows (the step's own k/v tensors): the same
    arguments and result, without the block table. The tile's base address is one int64 scalar,
    the offsets inside it (< BLOCK_N * stride) stay 32-bit."""
    offs_n = tl.arange(0, BLOCK_N)
    kv_pos = tile_start + offs_n
    in_range = (kv_pos >= kv_lo) & (kv_pos < kv_hi)
    k_ptrs = k_base_ptr + tl.cast(tile_start, tl.int64) * stride_k_tok
    v_ptrs = v_base_ptr + tl.cast(tile_start, tl.int64) * stride_v_tok
    return _softmax_step(
        acc, m_i, l_i, q, q_pos, kv_pos, in_range,
        k_ptrs + (offs_n[:, None] * stride_k_tok + offs_d[None, :]),
        v_ptrs + (offs_n[:, None] * stride_v_tok + offs_d[None, :]),
        window, qk_scale, offs_d, HEAD_DIM, D_PAD, RANGE_MASK, POS_MASK, USE_WINDOW,
        DOT_PRECISION, CPU_BF16,
    )  # fmt: skip


@triton.jit
def attend_described_kv_tile(
    acc,
    m_i,
    l_i,
    q,
    q_pos,
    k_desc,  # tensor descriptors of the [rows, Hkv * HEAD_DIM] K/V, blocks [BLOCK_N, HEAD_DIM]
    v_desc,
    row0,  # key j of this source is descriptor row row0 + j
    col,  # the KV head's first column, kv_head * HEAD_DIM
    tile_start,
    kv_lo,
    kv_hi,
    window,
    qk_scale,
    BLOCK_N: tl.constexpr,
    RANGE_MASK: tl.constexpr,
    POS_MASK: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    CPU_BF16: tl.constexpr,
):
    """attend_contiguous_kv_tile through tensor descriptors (TMA on Hopper+): the copy engine
    moves each tile into shared memory, so no address registers and no per-thread loads. Rows
    past the tensor's end arrive as zeros; rows of other sequences inside it are real keys,
    masked like any key outside [kv_lo, kv_hi). Padding rows of a step may hold anything
    (NaN included), so under RANGE_MASK the values outside the range are zeroed: p = 0 there,
    and 0 * NaN would poison the P.V dot."""
    kv_pos = tile_start + tl.arange(0, BLOCK_N)
    in_range = (kv_pos >= kv_lo) & (kv_pos < kv_hi)
    k = k_desc.load([row0 + tile_start, col])
    p, alpha, m_i, l_i = _scores(
        m_i, l_i, q, k, q_pos, kv_pos, in_range, window, qk_scale, RANGE_MASK, POS_MASK,
        USE_WINDOW, DOT_PRECISION, CPU_BF16,
    )  # fmt: skip
    v = v_desc.load([row0 + tile_start, col])
    if RANGE_MASK:
        v = tl.where(in_range[:, None], v, 0.0)
    return _accumulate(acc, alpha, p, v, q.dtype, DOT_PRECISION, CPU_BF16), m_i, l_i


@triton.jit
def _load_rows(ptrs, in_range, offs_d, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
               RANGE_MASK: tl.constexpr):  # fmt: skip
    """A [N, D_PAD] tile of K or V. Masked-off lanes are never dereferenced, so unread slots may
    hold NaN or junk block ids."""
    if RANGE_MASK:
        if D_PAD != HEAD_DIM:
            return tl.load(ptrs, mask=in_range[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        return tl.load(ptrs, mask=in_range[:, None], other=0.0)
    elif D_PAD != HEAD_DIM:
        return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _scores(
    m_i,
    l_i,
    q,
    k,  # [N, D_PAD] the tile's keys
    q_pos,
    kv_pos,  # [N] key positions of the tile
    in_range,  # [N] kv_lo <= kv_pos < kv_hi (used under RANGE_MASK)
    window,
    qk_scale,
    RANGE_MASK: tl.constexpr,
    POS_MASK: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    CPU_BF16: tl.constexpr,
):
    """The softmax half of a step (module docstring): p = 2^(s - m'), alpha = 2^(m - m'), m', l'."""
    k = _dot_operand(k, q.dtype, CPU_BF16)
    qk = tl.dot(_dot_operand(q, q.dtype, CPU_BF16), tl.trans(k), input_precision=DOT_PRECISION)
    if RANGE_MASK:
        qk = tl.where(in_range[None, :], qk, float("-inf"))
    if POS_MASK:
        visible = kv_pos[None, :] <= q_pos[:, None]
        if USE_WINDOW:
            visible = visible & (q_pos[:, None] - kv_pos[None, :] < window)
        qk = tl.where(visible, qk, float("-inf"))

    # The scale is applied inside the exponent, s_j - m' = qk_j * qk_scale - m', one FMA per score
    # (qk_scale > 0, so the row max commutes with it). m_i starts finite (see the kernels), so a
    # fully masked row gives 2^(-inf - m) = 0, never NaN.
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    return p, alpha, m_new, l_i


@triton.jit
def _accumulate(acc, alpha, p, v, dtype: tl.constexpr, DOT_PRECISION: tl.constexpr,
                CPU_BF16: tl.constexpr):  # fmt: skip
    """acc * alpha + P.V (the end of _softmax_step, for the descriptor source)."""
    p = _dot_operand(p, dtype, CPU_BF16)
    v = _dot_operand(v, dtype, CPU_BF16)
    return acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)


@triton.jit
def _softmax_step(
    acc,
    m_i,
    l_i,
    q,
    q_pos,
    kv_pos,  # [N] key positions of the tile
    in_range,  # [N] kv_lo <= kv_pos < kv_hi (used under RANGE_MASK)
    k_ptrs,  # [N, D_PAD] addresses of the tile's keys and values
    v_ptrs,
    window,
    qk_scale,
    offs_d,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    RANGE_MASK: tl.constexpr,
    POS_MASK: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    CPU_BF16: tl.constexpr,
):
    """Loads the K/V tile at k_ptrs/v_ptrs and folds it into (acc, m_i, l_i) (module docstring).
    The pointer sources' step in one piece: the same statements split into _load_rows / _scores /
    _accumulate (as the descriptor source needs them) compiled to 7 more registers in the decode
    kernel and read 10% slower on the H100 (batch 64, context 4096: 2594 vs 2894 GB/s)."""
    # Masked-off lanes are never dereferenced, so unread slots may hold NaN or junk block ids.
    if RANGE_MASK:
        if D_PAD != HEAD_DIM:
            load_mask = in_range[:, None] & (offs_d[None, :] < HEAD_DIM)
        else:
            load_mask = in_range[:, None]
        k = tl.load(k_ptrs, mask=load_mask, other=0.0)
    elif D_PAD != HEAD_DIM:
        k = tl.load(k_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        k = tl.load(k_ptrs)

    k = _dot_operand(k, q.dtype, CPU_BF16)
    qk = tl.dot(_dot_operand(q, q.dtype, CPU_BF16), tl.trans(k), input_precision=DOT_PRECISION)
    if RANGE_MASK:
        qk = tl.where(in_range[None, :], qk, float("-inf"))
    if POS_MASK:
        visible = kv_pos[None, :] <= q_pos[:, None]
        if USE_WINDOW:
            visible = visible & (q_pos[:, None] - kv_pos[None, :] < window)
        qk = tl.where(visible, qk, float("-inf"))

    # The scale is applied inside the exponent, s_j - m' = qk_j * qk_scale - m', one FMA per score
    # (qk_scale > 0, so the row max commutes with it). m_i starts finite (see the kernels), so a
    # fully masked row gives 2^(-inf - m) = 0, never NaN.
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)

    if RANGE_MASK:
        v = tl.load(v_ptrs, mask=load_mask, other=0.0)
    elif D_PAD != HEAD_DIM:
        v = tl.load(v_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        v = tl.load(v_ptrs)
    p = _dot_operand(p, q.dtype, CPU_BF16)
    v = _dot_operand(v, q.dtype, CPU_BF16)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


# A finite "minus infinity" for the initial running max: max(NEG_BIG, -inf) stays finite, so the
# rescale factor 2^(m_old - m_new) is never 2^(-inf + inf).
NEG_BIG = tl.constexpr(-1.0e30)


def dot_settings(q) -> tuple[str, bool]:
    """(DOT_PRECISION, CPU_BF16) for a query tensor.

    fp32 inputs get full fp32 dots ("ieee": tf32 would miss the fp32 tolerance); 16-bit inputs
    ignore the precision. Triton's CPU interpreter (the only way these kernels see CPU tensors)
    computes bf16 dots wrongly and truncates fp32 -> bf16 (triton 3.9). So under it (CPU_BF16)
    bf16 operands are rounded to nearest even explicitly and kept in fp32: the same products,
    accumulated in fp32 as the tensor cores do, and the same rounding as on a GPU.
    """
    upcast = q.device.type == "cpu" and q.dtype == torch.bfloat16
    return ("ieee" if q.dtype == torch.float32 or upcast else "tf32"), upcast

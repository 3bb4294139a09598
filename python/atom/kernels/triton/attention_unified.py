"""Unified paged attention: any mix of prefill chunks and decodes in one launch.

Work split: one program per (query tile, KV head), the heads of a tile adjacent in launch order
(see the kernel). A query tile holds BLOCK_Q consecutive new tokens of one sequence times the
GROUP = Hq / Hkv query heads that share a KV head, stacked as the
BLOCK_M = BLOCK_Q * GROUP rows of the dot (row r = token r // GROUP, head r % GROUP). So each K/V
tile is read once for the whole GQA group, and a decode row (one token) still fills a 16-row dot
when GROUP is small.

Tile numbering without a host sync: with c_b = cu_q[b] - cu_q[0], sequence b owns tiles
[c_b // BLOCK_Q + b, c_{b+1} // BLOCK_Q + b + 1), which covers its ceil(q_len / BLOCK_Q) tiles and
is increasing in b. A program finds its sequence by binary search over cu_seqlens_q; surplus tiles
exit at once. The tile count, num_tokens // BLOCK_Q + num_seqs, comes from shapes only.
(cu_q[0] may be nonzero: the dispatcher can hand a tail of the batch's sequences to this kernel.)

Per tile the keys [lo, p1] are visited in three phases so that only boundary tiles pay for masks
(p0/p1 = first/last query position of the tile, W = sliding window):
    A  [lo_tile, a_end)  keys some row of the tile has already slid past   masked (window only)
    B  [a_end, diag)     keys every row sees: j <= p0 and j > p1 - W        unmasked
    C  [diag, p1 + 1)    the causal diagonal                                masked
with lo = max(0, p0 - W + 1), diag = floor((p0 + 1) / BLOCK_N) * BLOCK_N and a_end the first tile
start >= p1 - W + 1 (clamped into [lo_tile, diag]). Keys outside [lo, p1] are never loaded.

New keys read contiguously (k_new/v_new given: USE_NEW_KV): with
c = context_before = seq_len - q_len, the keys split into two sources, each visited in the phases
above (_attend_key_range):
    prefix  [lo, c)       from the paged cache; every row is past them, so only the window and the
                          end c mask (diag = floor(c / BLOCK_N) * BLOCK_N, one range-masked tile)
    new     [max(lo, c), p1]  key j = row q_start + (j - c) of k_new/v_new, no block table; tiles
                          are aligned to c (positions relative to c), so the query tiles, also
                          aligned to c, see the diagonal exactly as in a prefill without prefix
A prefill without prefix (c = 0) reads only the new source: the same tiles and masks as the
paged kernel, with affine addresses. When the host knows that no sequence has a prefix
(CACHE_KEYS=False) the cache loops are left out: with them, 128-key steps spill on sm90.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from atom import envs
from atom.kernels.triton.attention_tile import (
    NEG_BIG,
    attend_contiguous_kv_tile,
    attend_described_kv_tile,
    attend_kv_tile,
    dot_settings,
    to_output_dtype,
)

LOG2E = tl.constexpr(1.4426950408889634)
# Where a key source's tiles come from (_attend_tile): the paged cache through the block table,
# consecutive rows of k_new/v_new through pointers, or the same rows through tensor descriptors.
PAGED = tl.constexpr(0)
ROWS = tl.constexpr(1)
DESCRIBED = tl.constexpr(2)


@dataclass(frozen=True)
class UnifiedConfig:
    block_m: int  # rows per program = tokens per tile * GROUP (a power of two >= 16)
    block_n: int  # keys per inner step
    num_warps: int
    num_stages: int


def default_unified_config(
    max_seqlen_q: int,
    group: int,
    head_dim_pad: int,
    dtype: torch.dtype,
    fp8_cache: bool = False,
    window_or_sinks: bool = False,
    two_sources: bool = False,
    new_kv: bool = False,
    descriptors: bool = False,
) -> UnifiedConfig:
    """Smaller row tiles for short queries (decode rows, spec-decode chunks) so fewer rows are
    padding; 128-row tiles (two warpgroups of wgmma on Hopper) for real prefill, with 128-key
    steps where they fit the registers (the best measured on the H100: 310 TFLOP/s vs 284 with 64
    keys, 4096 causal tokens, d128). Every default is spill-free on sm90 (compile_check). fp32
    (a correctness path: no tensor-core dot) uses small tiles. two_sources: the new-KV kernel
    with a cached prefix (paged and contiguous loops in one kernel), where 128-key steps spill.
    new_kv: k_new/v_new are read (at head dim 256 its 32-key steps spill: 16-key steps, 8 warps
    from 64 rows; spill-free, not yet timed). descriptors: they are read through TMA."""
    rows = max_seqlen_q * group
    if dtype == torch.float32:
        block_m = max(16 if rows <= 16 else 32, triton.next_power_of_2(group))
        return UnifiedConfig(block_m, 16 if block_m == 16 else 32, 4 if block_m == 16 else 8, 1)
    block_m = 16
    while block_m < min(rows, 128):
        block_m *= 2
    block_m = max(block_m, triton.next_power_of_2(group))
    if head_dim_pad >= 256 and new_kv:
        return UnifiedConfig(block_m, 16, 8 if block_m >= 64 else 4, 2)
    if head_dim_pad >= 256:
        return UnifiedConfig(block_m, 32, 8 if block_m >= 128 else 4, 2)
    plain = not (fp8_cache or window_or_sinks or two_sources)
    if descriptors and plain and block_m >= 64 and head_dim_pad == 128:
        # TMA-fed K/V: 64-row tiles, 4 warps (H100, 4096 causal tokens, d128: 458 TFLOP/s vs 419
        # at m128 n128 w8 s3, the best of the pointer loads' configs)
        return UnifiedConfig(64, 64, 4, 3)
    wide = block_m >= 128 and plain
    return UnifiedConfig(block_m, 128 if wide else 64, 8 if block_m >= 128 else 4, 3)


@triton.jit
def _find_sequence(cu_seqlens_q_ptr, first_token, num_seqs, tile_id, BLOCK_Q: tl.constexpr):
    """The largest b < num_seqs whose first tile (cu_q[b] - cu_q[0]) // BLOCK_Q + b is <= tile_id."""
    lo = tl.program_id(0) * 0
    hi = lo + num_seqs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        first_tile = (tl.load(cu_seqlens_q_ptr + mid) - first_token) // BLOCK_Q + mid
        if first_tile <= tile_id:
            lo = mid
        else:
            hi = mid
    return lo


@triton.jit
def _attend_key_range(
    acc,
    m_i,
    l_i,
    q,
    q_pos,  # [M] positions of the tile's rows, in the source's coordinates
    lo,  # keys [lo, hi) of the source are visited; none outside is loaded
    hi,
    diag,  # a multiple of BLOCK_N: every row sees (causally) the keys below it
    p1,  # the tile's last row position
    window,
    qk_scale,
    k_ptr,  # PAGED: the caches at this KV head; ROWS: the source's key 0; DESCRIBED: descriptors
    v_ptr,
    bt_ptr,  # PAGED: the sequence's block-table row
    desc_row,  # DESCRIBED: key j is descriptor row desc_row + j, columns from desc_col
    desc_col,
    stride_k_block,
    stride_k_tok,
    stride_v_block,
    stride_v_tok,
    offs_d,
    SOURCE: tl.constexpr,  # PAGED, ROWS or DESCRIBED
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    CPU_BF16: tl.constexpr,
):
    """The A/B/C phases of the module docstring over one key source."""
    lo_tile = (lo // BLOCK_N) * BLOCK_N
    a_end = lo_tile
    if USE_WINDOW:
        all_rows_from = tl.cdiv(tl.maximum(p1 - window + 1, 0), BLOCK_N) * BLOCK_N
        a_end = tl.minimum(tl.maximum(all_rows_from, lo_tile), diag)
        for start in range(lo_tile, a_end, BLOCK_N):
            acc, m_i, l_i = _attend_tile(
                acc, m_i, l_i, q, q_pos, k_ptr, v_ptr, bt_ptr, desc_row, desc_col, start, lo, hi, window,
                qk_scale, stride_k_block, stride_k_tok, stride_v_block, stride_v_tok, offs_d, SOURCE,
                BLOCK_N, BLOCK_SIZE, HEAD_DIM, D_PAD, True, True, USE_WINDOW, DOT_PRECISION,
                CPU_BF16,
            )  # fmt: skip
    for start in range(a_end, diag, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, q_pos, k_ptr, v_ptr, bt_ptr, desc_row, desc_col, start, lo, hi, window,
            qk_scale, stride_k_block, stride_k_tok, stride_v_block, stride_v_tok, offs_d, SOURCE,
            BLOCK_N, BLOCK_SIZE, HEAD_DIM, D_PAD, False, False, USE_WINDOW, DOT_PRECISION,
            CPU_BF16,
        )  # fmt: skip
    for start in range(diag, hi, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, q_pos, k_ptr, v_ptr, bt_ptr, desc_row, desc_col, start, lo, hi, window,
            qk_scale, stride_k_block, stride_k_tok, stride_v_block, stride_v_tok, offs_d, SOURCE,
            BLOCK_N, BLOCK_SIZE, HEAD_DIM, D_PAD, True, True, USE_WINDOW, DOT_PRECISION,
            CPU_BF16,
        )  # fmt: skip
    return acc, m_i, l_i


@triton.jit
def _attend_tile(
    acc, m_i, l_i, q, q_pos, k_ptr, v_ptr, bt_ptr, desc_row, desc_col, start, lo, hi, window,
    qk_scale, stride_k_block, stride_k_tok, stride_v_block, stride_v_tok, offs_d,
    SOURCE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, RANGE_MASK: tl.constexpr,
    POS_MASK: tl.constexpr, USE_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
    CPU_BF16: tl.constexpr,
):  # fmt: skip
    if SOURCE == DESCRIBED:
        return attend_described_kv_tile(
            acc, m_i, l_i, q, q_pos, k_ptr, v_ptr, desc_row, desc_col, start, lo, hi, window,
            qk_scale, BLOCK_N, RANGE_MASK, POS_MASK, USE_WINDOW, DOT_PRECISION, CPU_BF16,
        )  # fmt: skip
    elif SOURCE == ROWS:
        return attend_contiguous_kv_tile(
            acc, m_i, l_i, q, q_pos, k_ptr, v_ptr, start, lo, hi, window, qk_scale,
            stride_k_tok, stride_v_tok, offs_d, BLOCK_N, HEAD_DIM, D_PAD, RANGE_MASK, POS_MASK,
            USE_WINDOW, DOT_PRECISION, CPU_BF16,
        )  # fmt: skip
    else:
        return attend_kv_tile(
            acc, m_i, l_i, q, q_pos, k_ptr, v_ptr, bt_ptr, start, lo, hi, window, qk_scale,
            stride_k_block, stride_k_tok, stride_v_block, stride_v_tok, offs_d, BLOCK_N,
            BLOCK_SIZE, HEAD_DIM, D_PAD, RANGE_MASK, POS_MASK, USE_WINDOW, DOT_PRECISION,
            CPU_BF16,
        )  # fmt: skip


@triton.jit(do_not_specialize=["num_seqs", "first_seq", "window", "stride_bt_seq"])
def _unified_attention_kernel(
    q_ptr,  # [T, Hq, D]
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, Hkv, D]
    v_cache_ptr,
    out_ptr,  # [T, Hq, D]
    block_tables_ptr,  # [num_seqs, max_blocks] int32
    seq_lens_ptr,  # [num_seqs] int32
    cu_seqlens_q_ptr,  # [num_seqs + 1] int32
    sinks_ptr,  # [Hq] or unused
    k_scale_ptr,  # [1] fp32 or unused
    v_scale_ptr,
    softmax_scale,
    window,
    num_seqs,
    first_seq,  # sequences before it in the three metadata tensors belong to another launch
    stride_q_tok,
    stride_q_head,
    stride_o_tok,
    stride_o_head,
    stride_k_block,
    stride_k_tok,
    stride_k_head,
    stride_v_block,
    stride_v_tok,
    stride_v_head,
    stride_bt_seq,
    k_new_ptr,  # [T, Hkv, D] this step's keys, rows aligned with q (USE_NEW_KV)
    v_new_ptr,
    stride_kn_tok,
    stride_kn_head,
    stride_vn_tok,
    stride_vn_head,
    k_new_desc,  # NEW_KV_DESCRIPTORS: descriptors of k_new/v_new as [T, Hkv * D], [BLOCK_N, D] blocks
    v_new_desc,
    GROUP: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    HAS_K_SCALE: tl.constexpr,
    HAS_V_SCALE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    CPU_BF16: tl.constexpr,
    USE_NEW_KV: tl.constexpr,  # read keys >= context_before from k_new/v_new
    CACHE_KEYS: tl.constexpr,  # read keys from the cache (USE_NEW_KV: some sequence has a prefix)
    NEW_KV_DESCRIPTORS: tl.constexpr,  # read k_new/v_new through k_new_desc/v_new_desc (TMA)
):
    """One query tile of one KV head (module docstring)."""
    # Offsetting here rather than slicing on the host: Triton specializes on pointer alignment.
    block_tables_ptr += first_seq * stride_bt_seq
    seq_lens_ptr += first_seq
    cu_seqlens_q_ptr += first_seq
    # Highest tiles first, every KV head of a tile together: under the causal mask the last tiles
    # of a sequence see the most keys, so launching them first leaves the light ones for the tail
    # of the grid (a 2-D grid would run all tiles of head 0 before any of head 1, the heavy tiles
    # of the last head at the end).
    tile_id = tl.num_programs(0) // NUM_KV_HEADS - 1 - tl.program_id(0) // NUM_KV_HEADS
    kv_head = tl.program_id(0) % NUM_KV_HEADS
    first_token = tl.load(cu_seqlens_q_ptr)
    seq = _find_sequence(cu_seqlens_q_ptr, first_token, num_seqs, tile_id, BLOCK_Q)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    t0 = (tile_id - ((q_start - first_token) // BLOCK_Q + seq)) * BLOCK_Q  # first token in the tile
    if t0 >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_before = seq_len - q_len  # position of the sequence's first new token

    rows = tl.arange(0, BLOCK_M)
    tok = rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_valid = (tok < BLOCK_Q) & (t0 + tok < q_len)
    q_pos = context_before + t0 + tok
    offs_d = tl.arange(0, D_PAD)
    row_mask = row_valid[:, None] & (offs_d[None, :] < HEAD_DIM)
    q_rows = (q_start + t0 + tok).to(tl.int64)
    q_ptrs = q_ptr + q_rows[:, None] * stride_q_tok + head[:, None] * stride_q_head
    q = tl.load(q_ptrs + offs_d[None, :], mask=row_mask, other=0.0)

    qk_scale = softmax_scale * LOG2E
    if HAS_K_SCALE:
        qk_scale = qk_scale * tl.load(k_scale_ptr).to(tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    if HAS_SINKS:
        # The sink is a key with logit s_h and no value: start the running state at it.
        m_i = tl.load(sinks_ptr + head, mask=row_valid, other=0.0).to(tl.float32) * LOG2E
        l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    else:
        m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    p0 = context_before + t0
    p1 = context_before + tl.minimum(t0 + BLOCK_Q, q_len) - 1
    kv_lo = 0
    if USE_WINDOW:
        kv_lo = tl.maximum(p0 - window + 1, 0)
    if CACHE_KEYS:
        if USE_NEW_KV:  # the cache holds the prefix [kv_lo, context_before); all rows are past it
            cache_hi = tl.where(kv_lo < context_before, context_before, 0)  # 0: slid out, no tile
            cache_diag = (context_before // BLOCK_N) * BLOCK_N
        else:
            cache_hi = p1 + 1
            cache_diag = ((p0 + 1) // BLOCK_N) * BLOCK_N
        acc, m_i, l_i = _attend_key_range(
            acc, m_i, l_i, q, q_pos, kv_lo, cache_hi, cache_diag, p1, window, qk_scale,
            k_cache_ptr + kv_head * stride_k_head, v_cache_ptr + kv_head * stride_v_head,
            block_tables_ptr + seq.to(tl.int64) * stride_bt_seq, 0, 0, stride_k_block,
            stride_k_tok, stride_v_block, stride_v_tok, offs_d, PAGED, BLOCK_N, BLOCK_SIZE,
            HEAD_DIM, D_PAD, USE_WINDOW, DOT_PRECISION, CPU_BF16,
        )  # fmt: skip
    if USE_NEW_KV:  # the new keys, positions relative to context_before (key j = row q_start + j)
        new_lo = tl.maximum(kv_lo - context_before, 0)
        new_diag = ((t0 + 1) // BLOCK_N) * BLOCK_N
        if NEW_KV_DESCRIPTORS:
            acc, m_i, l_i = _attend_key_range(
                acc, m_i, l_i, q, t0 + tok, new_lo, p1 - context_before + 1, new_diag,
                p1 - context_before, window, qk_scale, k_new_desc, v_new_desc, block_tables_ptr,
                q_start, kv_head * HEAD_DIM, 0, 0, 0, 0, offs_d, DESCRIBED, BLOCK_N, BLOCK_SIZE,
                HEAD_DIM, D_PAD, USE_WINDOW, DOT_PRECISION, CPU_BF16,
            )  # fmt: skip
        else:
            new_rows = q_start.to(tl.int64)
            acc, m_i, l_i = _attend_key_range(
                acc, m_i, l_i, q, t0 + tok, new_lo, p1 - context_before + 1, new_diag,
                p1 - context_before, window, qk_scale,
                k_new_ptr + new_rows * stride_kn_tok + kv_head * stride_kn_head,
                v_new_ptr + new_rows * stride_vn_tok + kv_head * stride_vn_head, block_tables_ptr,
                0, 0, 0, stride_kn_tok, 0, stride_vn_tok, offs_d, ROWS, BLOCK_N, BLOCK_SIZE,
                HEAD_DIM, D_PAD, USE_WINDOW, DOT_PRECISION, CPU_BF16,
            )  # fmt: skip

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # padding rows of the tile have l = 0
    if HAS_V_SCALE:
        out = out * tl.load(v_scale_ptr).to(tl.float32)
    o_ptrs = out_ptr + q_rows[:, None] * stride_o_tok + head[:, None] * stride_o_head
    tl.store(
        o_ptrs + offs_d[None, :],
        to_output_dtype(out, out_ptr.dtype.element_ty, CPU_BF16),
        mask=row_mask,
    )


def descriptors_usable(k_new: torch.Tensor, v_new: torch.Tensor, d_pad: int) -> bool:
    """Whether k_new/v_new can be read through TMA tensor descriptors: a device with TMA
    (_tma_device), a 16-bit dtype, and the layout a descriptor of [T, Hkv * D] describes: heads
    adjacent (head stride D), D a power of two (no padded columns), base address and row stride
    multiples of 16 bytes."""
    if not _tma_device(k_new.device) or k_new.element_size() != 2:
        return False
    return all(
        t.stride(2) == 1 and t.stride(1) == d_pad == t.shape[2] and t.data_ptr() % 16 == 0
        and (t.stride(0) * t.element_size()) % 16 == 0
        for t in (k_new, v_new)
    )  # fmt: skip


def _tma_device(device: torch.device) -> bool:
    """An NVIDIA GPU of compute capability 9.0+, not under the interpreter, ATOM_ATTN_TMA not 0."""
    if device.type != "cuda" or torch.version.hip is not None or not envs.attn_tma():
        return False
    if envs.triton_interpreter():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def _rows_descriptor(t: torch.Tensor, block_n: int):
    """A tensor descriptor of t [T, Hkv, D] seen as [T, Hkv * D] (row stride t.stride(0)), in
    [block_n, D] blocks: block (row, h * D) is key rows row.. of head h."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    rows, heads, dim = t.shape
    return TensorDescriptor(t, [rows, heads * dim], [t.stride(0), 1], [block_n, dim])


def unified_attention(
    q: torch.Tensor,  # [T, Hq, D] fp16 / bf16 / fp32, last dim contiguous
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D] q's dtype or fp8 e4m3
    value_cache: torch.Tensor,
    out: torch.Tensor,  # [T, Hq, D] q's dtype; rows past cu_seqlens_q[-1] are not written
    cu_seqlens_q: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    max_seqlen_q: int,
    scale: float,
    sliding_window: int | None,
    sinks: torch.Tensor | None,  # [Hq]
    k_scale: torch.Tensor | None,  # [1] fp32
    v_scale: torch.Tensor | None,
    config: UnifiedConfig | None = None,
    num_tokens: int | None = None,
    k_new: torch.Tensor | None = None,  # [T, Hkv, D] q's dtype, rows aligned with q's
    v_new: torch.Tensor | None = None,
    cached_prefix: bool = True,
    first_seq: int = 0,
    descriptors: bool | None = None,
) -> torch.Tensor:
    """Launches the unified kernel. Inputs are assumed checked (paged_attention.check_inputs).
    num_tokens: an upper bound of cu_seqlens_q[-1] - cu_seqlens_q[0] (default: q's rows).
    k_new/v_new: this step's keys/values exactly as the cache holds them (so not with an fp8
    cache); when given, each sequence's new keys are read from them instead of the cache, and
    cached_prefix=False (no sequence has keys before its new ones) skips the cache entirely.
    first_seq: the sequences from first_seq on are this launch's (the earlier ones of the
    metadata went to the decode kernel). The kernel offsets the pointers itself rather than
    taking sliced tensors: Triton specializes a kernel on its pointers' 16-byte alignment, so
    slices at varying offsets would compile a variant per alignment, at run time.
    descriptors: read k_new/v_new through tensor descriptors (TMA); None = where
    descriptors_usable says so."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_tokens = q.shape[0] if num_tokens is None else num_tokens
    _, block_size, num_kv_heads, _ = key_cache.shape
    num_seqs = seq_lens.shape[0] - first_seq
    group = num_heads // num_kv_heads
    d_pad = max(16, triton.next_power_of_2(head_dim))
    if descriptors is None:
        descriptors = k_new is not None and descriptors_usable(k_new, v_new, d_pad)
    cfg = config or default_unified_config(
        max_seqlen_q, group, d_pad, q.dtype, key_cache.element_size() == 1,
        sliding_window is not None or sinks is not None, k_new is not None and cached_prefix,
        k_new is not None, descriptors,
    )  # fmt: skip
    if cfg.block_m < group or cfg.block_m & (cfg.block_m - 1) or cfg.block_m < 16:
        raise ValueError(f"block_m={cfg.block_m} must be a power of two >= max(16, GROUP={group})")
    block_q = cfg.block_m // group
    if num_seqs == 0 or num_tokens == 0:
        return out
    grid = ((num_tokens // block_q + num_seqs) * num_kv_heads,)
    dot_precision, cpu_bf16 = dot_settings(q)
    dummy = seq_lens  # any device tensor, for pointer arguments that a constexpr flag disables
    if k_new is None:
        new_kv = (key_cache, value_cache, 0, 0, 0, 0)  # not read
    else:
        new_kv = (k_new, v_new, k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1))
    descs = (None, None)
    if descriptors:
        descs = tuple(_rows_descriptor(t, cfg.block_n) for t in (k_new, v_new))
    _unified_attention_kernel[grid](
        q, key_cache, value_cache, out, block_tables, seq_lens, cu_seqlens_q,
        dummy if sinks is None else sinks,
        dummy if k_scale is None else k_scale,
        dummy if v_scale is None else v_scale,
        float(scale), int(sliding_window or 0), num_seqs, first_seq,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0), *new_kv, *descs,
        GROUP=group, NUM_KV_HEADS=num_kv_heads, BLOCK_M=cfg.block_m, BLOCK_Q=block_q, BLOCK_N=cfg.block_n,
        BLOCK_SIZE=block_size, HEAD_DIM=head_dim, D_PAD=d_pad,
        USE_WINDOW=sliding_window is not None, HAS_SINKS=sinks is not None,
        HAS_K_SCALE=k_scale is not None, HAS_V_SCALE=v_scale is not None,
        DOT_PRECISION=dot_precision, CPU_BF16=cpu_bf16, USE_NEW_KV=k_new is not None,
        CACHE_KEYS=k_new is None or cached_prefix, NEW_KV_DESCRIPTORS=descriptors,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out

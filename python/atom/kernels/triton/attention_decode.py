"""Split-K ("flash-decoding") paged attention for decode-only batches (one new token per sequence).

Work split: the grid is (num_seqs, Hkv, num_splits). Program (b, g, s) takes the GROUP = Hq / Hkv
query heads that share KV head g, stacked as the rows of the dots (padded to GROUP_PAD >= 16), and
the s-th of num_splits equal, BLOCK_N-aligned slices of the keys the token sees, [lo, seq_len)
with lo = max(0, seq_len - W) under a sliding window. Each K/V byte is read by one program.

With num_splits == 1 the kernel writes the final output. Otherwise each split writes its normalised
partial output o_s = acc_s / l_s and log-sum-exp lse_s = m_s + log2(l_s) (log2 domain) into a
workspace and a second kernel combines them (Dao et al., "Flash-Decoding", 2023):
    M = max(max_s lse_s, sink),  w_s = 2^(lse_s - M),
    out = v_scale * sum_s w_s o_s / (sum_s w_s + 2^(sink - M)).
An empty split (short sequence) writes only lse = -inf; the combine skips its partial output.

CUDA graphs: ``decode_attention`` sizes its grid from the shapes of its arguments and the fixed
``num_splits`` only; it never reads a device value on the host. What must stay persistent between
capture and replay (same storage, new contents): q, out, key/value caches, block_tables, seq_lens,
cu_seqlens_q, sinks, k_scale, v_scale and the DecodeWorkspace. Padding sequences of a captured
batch may have seq_len 0: they read nothing and write zeros.

PDL (programmatic dependent launch, atom.kernels.triton.pdl; on for Hopper+ unless ATOM_PDL=0): both
kernels call ``gdc_wait`` first, before any load (q, the caches, seq_lens, block tables and the
split partials are all written within the step) and before the early exit of an empty sequence,
then ``gdc_launch_dependents`` so that the next kernel (the combine, or the o-projection GEMV that
prefetches its weight) can be scheduled while this one runs. What overlaps the previous kernel is
the launch and the program-id math; nothing is read early. The captured graph keeps these edges;
the persistence contract above is unchanged.

L2 prefetch (``l2_prefetch``, atom.kernels.triton.l2_prefetch): before its wait, each split program
asks L2 for an equal share of the first bytes of the o-projection weight, so HBM streams while the
attention waits on latency (Llama-3-8B batch-1 decode on the H100: 5.562 -> 5.514 ms a step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from atom.kernels.triton.attention_decode_rope import (
    DecodeRope,
    attend_new_key,
    rope_arguments,
    rope_constexprs,
)
from atom.kernels.triton.attention_tile import (
    NEG_BIG,
    attend_kv_tile,
    dot_settings,
    to_output_dtype,
)
from atom.kernels.triton.l2_prefetch import prefetch_extent, prefetch_share_l2
from atom.kernels.triton.pdl import launch_options, pdl_enabled
from atom.kernels.triton.rope_tile import normed_rotated_rows

LOG2E = tl.constexpr(1.4426950408889634)
MAX_SPLITS = 64


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int  # keys per inner step
    num_warps: int
    num_stages: int


def default_decode_config(
    head_dim_pad: int, dtype: torch.dtype, fp8_cache: bool = False
) -> DecodeConfig:
    """Measured on the H100 (batch 64, context 4096, d128, bf16): 64-key steps with 2 stages read
    the cache at 96% of copy bandwidth, 3 stages only 81%. An fp8 cache moves half the bytes per
    step, so it takes 128-key steps. fp32 (no tensor-core dot) and head dim 256 use configs that
    fit the registers without spills (checked with ptxas for sm90, compile_check)."""
    if dtype == torch.float32:
        return DecodeConfig(block_n=16, num_warps=8, num_stages=2)
    if head_dim_pad >= 256:
        return DecodeConfig(block_n=32, num_warps=4, num_stages=2)
    return DecodeConfig(block_n=128 if fp8_cache else 64, num_warps=4, num_stages=2)


def default_num_splits(num_seqs: int, num_kv_heads: int, max_seqlen_k: int, num_sms: int) -> int:
    """Enough programs to fill the GPU about twice, but no slices shorter than 128 keys. (On the
    H100, batch 64 x 8 KV heads at context 4096 is best unsplit: 96% of copy bandwidth; small
    batches need splits to use more than a few SMs.)"""
    programs = max(1, num_seqs * num_kv_heads)
    wanted = triton.cdiv(2 * num_sms, programs)
    by_length = triton.cdiv(max(1, max_seqlen_k), 128)
    return max(1, min(wanted, by_length, MAX_SPLITS))


class DecodeWorkspace:
    """Scratch for split partials; allocate once per (max batch, num_splits) and keep it alive
    across CUDA-graph capture and replay. out: [max_seqs, Hq, num_splits, D] fp32,
    lse: [max_seqs, Hq, num_splits] fp32."""

    def __init__(self, max_num_seqs, num_heads, head_dim, num_splits, device):
        if not 1 <= num_splits <= MAX_SPLITS:
            raise ValueError(f"num_splits={num_splits} must be in [1, {MAX_SPLITS}]")
        self.num_splits = num_splits
        shape = (max_num_seqs, num_heads, num_splits)
        self.out = torch.empty(*shape, head_dim, dtype=torch.float32, device=device)
        self.lse = torch.empty(*shape, dtype=torch.float32, device=device)


@triton.jit(do_not_specialize=["window", "num_splits", "stride_bt_seq"])
def _decode_split_kernel(
    q_ptr,  # [T, Hq, D]
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, Hkv, D]
    v_cache_ptr,
    out_ptr,  # [T, Hq, D] (not SPLIT)
    part_out_ptr,  # [num_seqs, Hq, num_splits, D] fp32 (SPLIT)
    part_lse_ptr,  # [num_seqs, Hq, num_splits] fp32
    block_tables_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    sinks_ptr,
    k_scale_ptr,
    v_scale_ptr,
    softmax_scale,
    window,
    num_splits,  # a runtime value (one compiled kernel serves every split count > 1)
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
    k_new_ptr,  # [T, Hkv, D] this step's raw keys (ROPE), and its values
    v_new_ptr,
    positions_ptr,  # [T] (ROPE)
    cos_sin_ptr,  # [max_position, ROT_DIM] fp32 (ROPE)
    q_norm_w_ptr,  # [D] (QK_NORM)
    k_norm_w_ptr,
    slot_mapping_ptr,  # [T] int64, -1 = no cache write (ROPE)
    norm_eps,
    stride_kn_tok,
    stride_kn_head,
    stride_vn_tok,
    stride_vn_head,
    stride_cs_pos,
    l2_prefetch_ptr,  # a weight the next kernels read (L2_PREFETCH)
    l2_prefetch_numel,  # its leading elements to prefetch
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    SPLIT: tl.constexpr,  # num_splits > 1: write partials for the combine kernel
    USE_WINDOW: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    HAS_K_SCALE: tl.constexpr,
    HAS_V_SCALE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    CPU_BF16: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (module docstring)
    ROPE: tl.constexpr = False,  # q/k_new are raw: norm, RoPE and the cache write happen here
    QK_NORM: tl.constexpr = False,
    ROT_DIM: tl.constexpr = 0,
    IS_NEOX: tl.constexpr = True,
    FP8_MAX: tl.constexpr = 448.0,  # the fp8 cache type's largest finite value
    L2_PREFETCH: tl.constexpr = False,  # ask L2 for l2_prefetch_ptr[:l2_prefetch_numel]
    THREADS: tl.constexpr = 128,  # num_warps * 32: one bulk prefetch request per thread
):
    if L2_PREFETCH:  # a parameter: before the wait (after it measured slower on the H100)
        _prefetch_share(l2_prefetch_ptr, l2_prefetch_numel, THREADS)
    if USE_PDL:  # before every load and the early exit: all inputs are written within the step
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    # The three loads go out together, before the early exit's test (one latency, not two).
    q_tok = tl.load(cu_seqlens_q_ptr + seq)
    q_end = tl.load(cu_seqlens_q_ptr + seq + 1)
    seq_len = tl.load(seq_lens_ptr + seq)
    if q_end == q_tok:  # no new token for this sequence
        return
    kv_lo = 0
    if USE_WINDOW:
        kv_lo = tl.maximum(seq_len - window, 0)
    # With ROPE the cache holds the keys before the new one (written below, by the last split).
    kv_hi = tl.maximum(seq_len - 1, 0) if ROPE else seq_len
    per_split = tl.cdiv(tl.cdiv(tl.maximum(kv_hi - kv_lo, 0), num_splits), BLOCK_N) * BLOCK_N
    split_lo = kv_lo + split * per_split
    split_hi = tl.minimum(split_lo + per_split, kv_hi)

    rows = tl.arange(0, GROUP_PAD)
    row_valid = rows < GROUP
    head = kv_head * GROUP + rows
    offs_d = tl.arange(0, D_PAD)
    row_mask = row_valid[:, None] & (offs_d[None, :] < HEAD_DIM)
    q_ptrs = q_ptr + q_tok.to(tl.int64) * stride_q_tok + head[:, None] * stride_q_head
    cos_sin_row = cos_sin_ptr  # ROPE: the cos/sin row of the token's position
    if ROPE:
        cos_sin_row += tl.load(positions_ptr + q_tok).to(tl.int64) * stride_cs_pos
        q = normed_rotated_rows(
            q_ptrs, row_valid, cos_sin_row, q_norm_w_ptr, norm_eps, q_ptr.dtype.element_ty,
            HEAD_DIM, D_PAD, ROT_DIM, IS_NEOX, QK_NORM, CPU_BF16,
        )  # fmt: skip
        if not CPU_BF16:  # else bf16 values stay in fp32 (see dot_settings)
            q = q.to(q_ptr.dtype.element_ty)
    else:
        q = tl.load(q_ptrs + offs_d[None, :], mask=row_mask, other=0.0)
    q_pos = rows * 0 + seq_len - 1

    qk_scale = softmax_scale * LOG2E
    if HAS_K_SCALE:
        qk_scale = qk_scale * tl.load(k_scale_ptr).to(tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], dtype=tl.float32)
    m_i = tl.full([GROUP_PAD], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    if HAS_SINKS and not SPLIT:  # else the combine kernel adds the sink
        m_i = tl.load(sinks_ptr + head, mask=row_valid, other=0.0).to(tl.float32) * LOG2E
        l_i = tl.full([GROUP_PAD], 1.0, dtype=tl.float32)

    # The new key goes to the last split, which at short contexts has no cache keys (graphs fix
    # the split count for the longest context), so it runs beside the splits that read the
    # cache; and it comes first (online softmax is order-free), so its loads wait for nothing.
    if ROPE:  # noqa: SIM102 (a constexpr and a tensor condition)
        if (split == num_splits - 1) & (seq_len > 0):
            acc, m_i, l_i = attend_new_key(
                acc, m_i, l_i, q, q_tok, kv_head, qk_scale, k_new_ptr, v_new_ptr, cos_sin_row,
                k_norm_w_ptr, norm_eps, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr,
                slot_mapping_ptr, stride_kn_tok, stride_kn_head, stride_vn_tok, stride_vn_head,
                stride_k_block, stride_k_tok, stride_k_head, stride_v_block, stride_v_tok,
                stride_v_head, q_ptr.dtype.element_ty, BLOCK_SIZE, HEAD_DIM, D_PAD, ROT_DIM,
                IS_NEOX, QK_NORM, HAS_K_SCALE, HAS_V_SCALE, FP8_MAX, CPU_BF16,
            )  # fmt: skip

    k_head_ptr = k_cache_ptr + kv_head * stride_k_head
    v_head_ptr = v_cache_ptr + kv_head * stride_v_head
    bt_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    # Every key in [lo, seq_len) is visible to the token at seq_len - 1: no causal mask. Full
    # tiles load unmasked; only the slice's last, partial tile masks its tail.
    full_end = split_lo + tl.maximum(split_hi - split_lo, 0) // BLOCK_N * BLOCK_N
    for start in range(split_lo, full_end, BLOCK_N):
        acc, m_i, l_i = attend_kv_tile(
            acc, m_i, l_i, q, q_pos, k_head_ptr, v_head_ptr, bt_ptr, start, split_lo, split_hi,
            window, qk_scale, stride_k_block, stride_k_tok, stride_v_block, stride_v_tok,
            offs_d, BLOCK_N, BLOCK_SIZE, HEAD_DIM, D_PAD, False, False, False, DOT_PRECISION,
            CPU_BF16,
        )  # fmt: skip
    if full_end < split_hi:
        acc, m_i, l_i = attend_kv_tile(
            acc, m_i, l_i, q, q_pos, k_head_ptr, v_head_ptr, bt_ptr, full_end, split_lo, split_hi,
            window, qk_scale, stride_k_block, stride_k_tok, stride_v_block, stride_v_tok,
            offs_d, BLOCK_N, BLOCK_SIZE, HEAD_DIM, D_PAD, True, False, False, DOT_PRECISION,
            CPU_BF16,
        )  # fmt: skip

    if not SPLIT:
        safe_l = tl.where(l_i > 0.0, l_i, 1.0)  # seq_len 0 (graph padding): write zeros
        out = acc / safe_l[:, None]
        if HAS_V_SCALE:
            out = out * tl.load(v_scale_ptr).to(tl.float32)
        o_ptrs = out_ptr + q_tok.to(tl.int64) * stride_o_tok + head[:, None] * stride_o_head
        tl.store(
            o_ptrs + offs_d[None, :],
            to_output_dtype(out, out_ptr.dtype.element_ty, CPU_BF16),
            mask=row_mask,
        )
    else:
        has_keys = l_i > 0.0
        part = acc / tl.where(has_keys, l_i, 1.0)[:, None]
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        num_heads = tl.num_programs(1) * GROUP
        base = (seq.to(tl.int64) * num_heads + head) * num_splits + split
        tl.store(part_lse_ptr + base, lse, mask=row_valid)
        # An empty split's partial output is never read (the combine masks lse = -inf).
        tl.store(part_out_ptr + base[:, None] * HEAD_DIM + offs_d[None, :], part,
                 mask=row_mask & has_keys[:, None])  # fmt: skip


@triton.jit
def _prefetch_share(ptr, numel, THREADS: tl.constexpr):
    """This program's equal share of the L2 prefetch of ptr[:numel] (l2_prefetch)."""
    program = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2)
    program += tl.program_id(2)
    programs = tl.num_programs(0) * tl.num_programs(1) * tl.num_programs(2)
    prefetch_share_l2(ptr, numel, program, programs, THREADS)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_combine_kernel(
    out_ptr,  # [T, Hq, D]
    part_out_ptr,  # [num_seqs, Hq, num_splits, D] fp32
    part_lse_ptr,  # [num_seqs, Hq, num_splits] fp32
    cu_seqlens_q_ptr,
    sinks_ptr,
    v_scale_ptr,
    stride_o_tok,
    stride_o_head,
    num_splits,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    SPLITS_PAD: tl.constexpr,  # a power of two >= num_splits
    HAS_SINKS: tl.constexpr,
    HAS_V_SCALE: tl.constexpr,
    CPU_BF16: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    if USE_PDL:  # the partials are the split kernel's output
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, D_PAD)
    base = (seq.to(tl.int64) * tl.num_programs(1) + head) * num_splits
    # Every load goes out before the early exit's test: one latency, not three in a row.
    q_tok = tl.load(cu_seqlens_q_ptr + seq)
    q_end = tl.load(cu_seqlens_q_ptr + seq + 1)
    lse = tl.load(part_lse_ptr + base + splits, mask=splits < num_splits, other=float("-inf"))
    o_mask = (splits[:, None] < num_splits) & (offs_d[None, :] < HEAD_DIM)
    parts = tl.load(
        part_out_ptr + (base + splits)[:, None] * HEAD_DIM + offs_d[None, :], mask=o_mask, other=0.0
    )
    if q_end == q_tok:
        return
    m = tl.max(lse, 0)
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + head).to(tl.float32) * LOG2E
        m = tl.maximum(m, sink)
    m_safe = tl.where(m == float("-inf"), 0.0, m)  # no keys and no sink: output zeros
    w = tl.exp2(lse - m_safe)
    denom = tl.sum(w, 0)
    if HAS_SINKS:
        denom += tl.exp2(sink - m_safe)
    # Empty splits (lse = -inf, weight 0) wrote no partial output (graphs fix num_splits for the
    # longest context, so at short contexts most splits are empty): what was loaded is not theirs.
    parts = tl.where(lse[:, None] > float("-inf"), parts, 0.0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(denom > 0.0, denom, 1.0)
    if HAS_V_SCALE:
        out = out * tl.load(v_scale_ptr).to(tl.float32)
    o_ptrs = out_ptr + q_tok.to(tl.int64) * stride_o_tok + head * stride_o_head + offs_d
    tl.store(
        o_ptrs, to_output_dtype(out, out_ptr.dtype.element_ty, CPU_BF16), mask=offs_d < HEAD_DIM
    )


def decode_attention(
    q: torch.Tensor,  # [T, Hq, D] fp16 / bf16 / fp32, last dim contiguous
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D] q's dtype or fp8 e4m3
    value_cache: torch.Tensor,
    out: torch.Tensor,  # [T, Hq, D]; row cu_seqlens_q[b] gets sequence b's output
    cu_seqlens_q: torch.Tensor,  # [num_seqs + 1] int32, every q_len 0 or 1
    seq_lens: torch.Tensor,  # [num_seqs] int32 (0 for graph padding)
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    scale: float,
    sliding_window: int | None,
    sinks: torch.Tensor | None,  # [Hq]
    k_scale: torch.Tensor | None,  # [1] fp32
    v_scale: torch.Tensor | None,
    num_splits: int,
    workspace: DecodeWorkspace | None = None,
    config: DecodeConfig | None = None,
    rope: DecodeRope | None = None,
    l2_prefetch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launches the split kernel (and the combine kernel when num_splits > 1). Host work is only
    shape arithmetic, so this is safe to capture in a CUDA graph with a persistent workspace.
    rope: q and rope.k are raw; the kernel norms and rotates them and writes the cache (the
    cache must not hold this step's keys yet; the rows' slots are overwritten).
    l2_prefetch: a parameter (the o-projection weight) whose first bytes the split kernel asks L2
    for while it works (atom.kernels.triton.l2_prefetch; a hint, on sm90+ GPUs only)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    _, block_size, num_kv_heads, _ = key_cache.shape
    num_seqs = seq_lens.shape[0]
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits={num_splits} must be in [1, {MAX_SPLITS}]")
    if num_seqs == 0:
        return out
    group = num_heads // num_kv_heads
    d_pad = max(16, triton.next_power_of_2(head_dim))
    cfg = config or default_decode_config(d_pad, q.dtype, key_cache.element_size() == 1)
    if num_splits > 1:
        if workspace is None:
            workspace = DecodeWorkspace(num_seqs, num_heads, head_dim, num_splits, q.device)
        elif workspace.out.shape[0] < num_seqs or workspace.out.shape[1:] != (
            num_heads,
            num_splits,
            head_dim,
        ):
            raise ValueError(
                f"workspace of shape {tuple(workspace.out.shape)} does not fit {num_seqs} seqs x"
                f" {num_heads} heads x {num_splits} splits x head_dim {head_dim}"
            )
        part_out, part_lse = workspace.out, workspace.lse
    else:
        part_out = part_lse = out  # unused
    dot_precision, cpu_bf16 = dot_settings(q)
    pdl = pdl_enabled(q.device)
    dummy = seq_lens
    prefetch_numel = prefetch_extent(l2_prefetch, q.device)
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, key_cache, value_cache, out, part_out, part_lse, block_tables, seq_lens, cu_seqlens_q,
        dummy if sinks is None else sinks,
        dummy if k_scale is None else k_scale,
        dummy if v_scale is None else v_scale,
        float(scale), int(sliding_window or 0), num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0), *rope_arguments(rope, dummy),
        l2_prefetch if prefetch_numel else dummy, prefetch_numel,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), BLOCK_N=cfg.block_n,
        BLOCK_SIZE=block_size, HEAD_DIM=head_dim, D_PAD=d_pad, SPLIT=num_splits > 1,
        USE_WINDOW=sliding_window is not None, HAS_SINKS=sinks is not None,
        HAS_K_SCALE=k_scale is not None, HAS_V_SCALE=v_scale is not None,
        DOT_PRECISION=dot_precision, CPU_BF16=cpu_bf16, USE_PDL=pdl, **rope_constexprs(rope, key_cache),
        L2_PREFETCH=prefetch_numel > 0, THREADS=cfg.num_warps * 32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(pdl),
    )  # fmt: skip
    if num_splits > 1:
        _decode_combine_kernel[(num_seqs, num_heads)](
            out, part_out, part_lse, cu_seqlens_q,
            dummy if sinks is None else sinks,
            dummy if v_scale is None else v_scale,
            out.stride(0), out.stride(1), num_splits,
            HEAD_DIM=head_dim, D_PAD=d_pad, SPLITS_PAD=triton.next_power_of_2(num_splits),
            HAS_SINKS=sinks is not None, HAS_V_SCALE=v_scale is not None, CPU_BF16=cpu_bf16,
            USE_PDL=pdl, num_warps=4 if head_dim >= 128 else 2, **launch_options(pdl),
        )  # fmt: skip
    return out

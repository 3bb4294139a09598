"""Split-K MLA decode over the latent paged cache (the Triton backend of ``mla_decode``).

The math is atom/kernels/reference/mla.py: every query head attends over the same latent rows
kv_j = [c_j | k_pe_j] (L + R values, one "KV head"), scores q . kv_j, values c_j.

Work split: the grid is (cdiv(H, BLOCK_H), NUM_SPLITS, num_seqs). Program (hb, s, b) takes BLOCK_H
heads of sequence b's new token as the rows of its dots and the s-th of NUM_SPLITS BLOCK_N-aligned
slices of the context [0, seq_len). Per tile of BLOCK_N cache rows it loads c [BLOCK_N, L] and
k_pe [BLOCK_N, R] once and uses c twice, as keys and as values:
    s = q_lat c^T + q_pe k_pe^T,   acc = acc * 2^(m - m') + 2^(s - m') c     (online softmax, log2)
Head blocks are the fastest grid axis, so the programs that read the same slice of a sequence run
side by side and share it through L2; each latent byte comes from HBM about once.

With NUM_SPLITS == 1 the kernel writes the output. Otherwise each split writes its normalised
partial o_s and log-sum-exp lse_s (log2) to a DecodeWorkspace ([seqs, H, splits, L] and
[seqs, H, splits]) and ``_mla_combine_kernel`` merges them (Flash-Decoding):
    M = max_s lse_s,  out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M).
An fp8 cache's per-tensor k_scale is folded into the score scale and the final output (K and V
are the same latent). Unused cache slots and block-table entries past a sequence are never read.

CUDA graphs: ``mla_decode_attention`` sizes its grid from shapes and the fixed ``num_splits``
only (no host reads of device values); q, out, kv_cache, block_tables, seq_lens, cu_seqlens_q,
k_scale and the workspace must stay persistent between capture and replay. Sequences with
seq_len 0 (graph padding) write zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from atom.forward_context import AttentionMetadata
from atom.kernels.registry import register
from atom.kernels.triton.attention_decode import DecodeWorkspace
from atom.kernels.triton.attention_tile import (
    NEG_BIG,
    dot_settings,
    round_to_bf16_in_fp32,
    to_output_dtype,
)

LOG2E = tl.constexpr(1.4426950408889634)
MAX_SPLITS = 64
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


@dataclass(frozen=True)
class MlaDecodeConfig:
    block_h: int  # heads per program (rows of the dots; >= 16)
    block_n: int  # cache rows per inner step
    num_warps: int
    num_stages: int


def default_mla_config(num_heads: int, kv_lora_rank: int) -> MlaDecodeConfig:
    """A starting point; tools/bench_mla.py sweeps the alternatives on the GPU."""
    block_h = max(16, min(32, triton.next_power_of_2(num_heads)))
    if kv_lora_rank > 256:
        return MlaDecodeConfig(block_h, 32, 8 if block_h >= 32 else 4, 2)
    return MlaDecodeConfig(block_h, 32, 4, 2)


def default_num_splits(num_seqs: int, num_head_blocks: int, max_seqlen_k: int, num_sms: int) -> int:
    """Enough programs to fill the GPU about twice, but never slices shorter than 256 rows."""
    programs = max(1, num_seqs * num_head_blocks)
    wanted = triton.cdiv(2 * num_sms, programs)
    by_length = triton.cdiv(max(1, max_seqlen_k), 256)
    return max(1, min(wanted, by_length, MAX_SPLITS))


@triton.jit
def _operand(x, dtype: tl.constexpr, CPU_BF16: tl.constexpr):
    """x in the dot's input dtype; under CPU_BF16 (interpreter) bf16 values are kept in fp32."""
    if CPU_BF16:
        if x.dtype == tl.float32:
            x = round_to_bf16_in_fp32(x)
        else:
            x = x.to(tl.float32)
    else:
        x = x.to(dtype)
    return x


@triton.jit
def _mla_decode_split_kernel(
    q_ptr,  # [T, H, L + R]
    kv_ptr,  # [num_blocks, BLOCK_SIZE, 1, L + R]
    out_ptr,  # [T, H, L] (NUM_SPLITS == 1)
    part_out_ptr,  # [num_seqs, H, NUM_SPLITS, L] fp32 (NUM_SPLITS > 1)
    part_lse_ptr,  # [num_seqs, H, NUM_SPLITS] fp32
    block_tables_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    k_scale_ptr,
    softmax_scale,
    stride_q_tok,
    stride_q_head,
    stride_o_tok,
    stride_o_head,
    stride_kv_block,
    stride_kv_tok,
    stride_bt_seq,
    NUM_HEADS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    KV_LORA: tl.constexpr,  # L
    L_PAD: tl.constexpr,
    ROPE: tl.constexpr,  # R
    R_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    HAS_K_SCALE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    CPU_BF16: tl.constexpr,
):
    head_block = tl.program_id(0)
    split = tl.program_id(1)
    seq = tl.program_id(2)
    q_tok = tl.load(cu_seqlens_q_ptr + seq)
    if tl.load(cu_seqlens_q_ptr + seq + 1) == q_tok:  # no new token for this sequence
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    per_split = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    split_lo = split * per_split
    split_hi = tl.minimum(split_lo + per_split, seq_len)

    heads = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = heads < NUM_HEADS
    offs_l = tl.arange(0, L_PAD)
    offs_r = tl.arange(0, R_PAD)
    l_ok = offs_l < KV_LORA
    r_ok = offs_r < ROPE
    q_rows = q_ptr + q_tok.to(tl.int64) * stride_q_tok + heads[:, None] * stride_q_head
    q_lat = tl.load(q_rows + offs_l[None, :], mask=head_ok[:, None] & l_ok[None, :], other=0.0)
    q_pe = tl.load(
        q_rows + KV_LORA + offs_r[None, :], mask=head_ok[:, None] & r_ok[None, :], other=0.0
    )
    q_lat = _operand(q_lat, q_ptr.dtype.element_ty, CPU_BF16)
    q_pe = _operand(q_pe, q_ptr.dtype.element_ty, CPU_BF16)

    qk_scale = softmax_scale * LOG2E
    if HAS_K_SCALE:
        qk_scale = qk_scale * tl.load(k_scale_ptr).to(tl.float32)
    acc = tl.zeros([BLOCK_H, L_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    bt_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    for start in range(split_lo, split_hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        valid = pos < split_hi
        # Block ids widened before the multiply: a large cache has more than 2^31 elements.
        block = tl.load(bt_ptr + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        rows = kv_ptr + block * stride_kv_block + (pos % BLOCK_SIZE) * stride_kv_tok
        c = tl.load(rows[:, None] + offs_l[None, :], mask=valid[:, None] & l_ok[None, :], other=0.0)
        pe = tl.load(
            rows[:, None] + KV_LORA + offs_r[None, :],
            mask=valid[:, None] & r_ok[None, :],
            other=0.0,
        )
        c = _operand(c, q_ptr.dtype.element_ty, CPU_BF16)
        pe = _operand(pe, q_ptr.dtype.element_ty, CPU_BF16)
        s = tl.dot(q_lat, tl.trans(c), input_precision=DOT_PRECISION)
        s = tl.dot(q_pe, tl.trans(pe), acc=s, input_precision=DOT_PRECISION)
        s = tl.where(valid[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        p = _operand(p, q_ptr.dtype.element_ty, CPU_BF16)
        acc = acc * alpha[:, None] + tl.dot(p, c, input_precision=DOT_PRECISION)
        m_i = m_new

    out_mask = head_ok[:, None] & l_ok[None, :]
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # seq_len 0 (graph padding): zeros
        if HAS_K_SCALE:
            out = out * tl.load(k_scale_ptr).to(tl.float32)
        o_rows = out_ptr + q_tok.to(tl.int64) * stride_o_tok + heads[:, None] * stride_o_head
        tl.store(
            o_rows + offs_l[None, :],
            to_output_dtype(out, out_ptr.dtype.element_ty, CPU_BF16),
            mask=out_mask,
        )
    else:
        has_keys = l_i > 0.0
        safe_l = tl.where(has_keys, l_i, 1.0)
        lse = tl.where(has_keys, m_i + tl.log2(safe_l), float("-inf"))
        base = (seq.to(tl.int64) * NUM_HEADS + heads) * NUM_SPLITS + split
        tl.store(part_lse_ptr + base, lse, mask=head_ok)
        tl.store(
            part_out_ptr + base[:, None] * KV_LORA + offs_l[None, :],
            acc / safe_l[:, None],
            mask=out_mask,
        )


@triton.jit
def _mla_combine_kernel(
    out_ptr,  # [T, H, L]
    part_out_ptr,  # [num_seqs, H, NUM_SPLITS, L] fp32
    part_lse_ptr,  # [num_seqs, H, NUM_SPLITS] fp32
    cu_seqlens_q_ptr,
    k_scale_ptr,
    stride_o_tok,
    stride_o_head,
    NUM_HEADS: tl.constexpr,
    KV_LORA: tl.constexpr,
    L_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    HAS_K_SCALE: tl.constexpr,
    CPU_BF16: tl.constexpr,
):
    head = tl.program_id(0)
    seq = tl.program_id(1)
    q_tok = tl.load(cu_seqlens_q_ptr + seq)
    if tl.load(cu_seqlens_q_ptr + seq + 1) == q_tok:
        return
    base = (seq.to(tl.int64) * NUM_HEADS + head) * NUM_SPLITS
    splits = tl.arange(0, SPLITS_PAD)
    lse = tl.load(part_lse_ptr + base + splits, mask=splits < NUM_SPLITS, other=float("-inf"))
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)  # no keys at all: output zeros
    denom = tl.sum(tl.exp2(lse - m_safe), 0)
    offs_l = tl.arange(0, L_PAD)
    l_ok = offs_l < KV_LORA
    acc = tl.zeros([L_PAD], dtype=tl.float32)
    for s in range(NUM_SPLITS):  # one split's row at a time: L can be 512 wide
        w = tl.exp2(tl.load(part_lse_ptr + base + s) - m_safe)
        part = tl.load(part_out_ptr + (base + s) * KV_LORA + offs_l, mask=l_ok, other=0.0)
        acc += w * part
    out = acc / tl.where(denom > 0.0, denom, 1.0)
    if HAS_K_SCALE:
        out = out * tl.load(k_scale_ptr).to(tl.float32)
    o_ptrs = out_ptr + q_tok.to(tl.int64) * stride_o_tok + head * stride_o_head + offs_l
    tl.store(o_ptrs, to_output_dtype(out, out_ptr.dtype.element_ty, CPU_BF16), mask=l_ok)


def check_inputs(q, kv_cache, out, cu_seqlens_q, seq_lens, block_tables, kv_lora_rank, k_scale):
    """Raises ValueError naming the offending argument (DESIGN rule 7)."""
    dev = q.device
    for name, t, dim in (("q", q, 3), ("kv_cache", kv_cache, 4), ("out", out, 3)):
        if t.dim() != dim or t.device != dev:
            raise ValueError(f"{name} must be {dim}-D on {dev}, got {tuple(t.shape)} on {t.device}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim, strides {t.stride()}")
    if q.dtype not in INPUT_DTYPES:
        raise ValueError(f"q dtype {q.dtype} is not one of {INPUT_DTYPES}")
    if kv_cache.dtype not in (q.dtype, *FP8_DTYPES):
        raise ValueError(f"kv_cache dtype {kv_cache.dtype} must be q's {q.dtype} or fp8 e4m3")
    num_tokens, num_heads, width = q.shape
    if kv_cache.shape[2] != 1 or kv_cache.shape[3] != width:
        raise ValueError(
            f"kv_cache {tuple(kv_cache.shape)} must be [num_blocks, block_size, 1, {width}] "
            f"for q {tuple(q.shape)}"
        )
    if not 0 < kv_lora_rank < width:
        raise ValueError(f"kv_lora_rank={kv_lora_rank} must be in (0, {width})")
    if tuple(out.shape) != (num_tokens, num_heads, kv_lora_rank) or out.dtype != q.dtype:
        raise ValueError(
            f"out {tuple(out.shape)} {out.dtype} must be [{num_tokens}, {num_heads}, "
            f"{kv_lora_rank}] {q.dtype}"
        )
    num_seqs = seq_lens.shape[0]
    for name, t, shape in (
        ("cu_seqlens_q", cu_seqlens_q, (num_seqs + 1,)),
        ("seq_lens", seq_lens, (num_seqs,)),
    ):
        if t.dtype != torch.int32 or tuple(t.shape) != shape or t.device != dev:
            raise ValueError(f"{name} must be int32 {shape} on {dev}, got {t.dtype} {t.shape}")
    if (
        block_tables.dim() != 2
        or block_tables.dtype != torch.int32
        or block_tables.shape[0] != num_seqs
        or block_tables.device != dev
        or (block_tables.shape[1] > 0 and block_tables.stride(1) != 1)
    ):
        raise ValueError(
            f"block_tables must be int32 [num_seqs={num_seqs}, max_blocks] with contiguous rows "
            f"on {dev}, got {block_tables.dtype} {tuple(block_tables.shape)}"
        )
    if k_scale is not None and (k_scale.numel() != 1 or k_scale.device != dev):
        raise ValueError(f"k_scale must be a one-element tensor on {dev}, got {k_scale}")


def mla_decode_attention(
    q: torch.Tensor,  # [T, H, L + R] fp16 / bf16 / fp32
    kv_cache: torch.Tensor,  # [num_blocks, block_size, 1, L + R] q's dtype or fp8 e4m3
    out: torch.Tensor,  # [T, H, L]; row cu_seqlens_q[b] gets sequence b's output
    cu_seqlens_q: torch.Tensor,  # [num_seqs + 1] int32, every q_len 0 or 1
    seq_lens: torch.Tensor,  # [num_seqs] int32 (0 for graph padding)
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    scale: float,
    kv_lora_rank: int,
    num_splits: int,
    k_scale: torch.Tensor | None = None,  # one-element fp32
    workspace: DecodeWorkspace | None = None,  # persistent under CUDA graphs when splits > 1
    config: MlaDecodeConfig | None = None,
) -> torch.Tensor:
    """Checks the inputs and launches the split kernel (and the combine kernel when
    num_splits > 1). Host work is shape arithmetic only: safe to capture in a CUDA graph."""
    check_inputs(q, kv_cache, out, cu_seqlens_q, seq_lens, block_tables, kv_lora_rank, k_scale)
    num_tokens, num_heads, width = q.shape
    num_seqs = seq_lens.shape[0]
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits={num_splits} must be in [1, {MAX_SPLITS}]")
    if num_seqs == 0 or num_tokens == 0:
        return out
    rope = width - kv_lora_rank
    cfg = config or default_mla_config(num_heads, kv_lora_rank)
    if cfg.block_h < 16 or cfg.block_n < 16:
        raise ValueError(f"{cfg}: block_h and block_n must be >= 16 (tl.dot tiles)")
    if num_splits > 1:
        if workspace is None:
            workspace = DecodeWorkspace(num_seqs, num_heads, kv_lora_rank, num_splits, q.device)
        elif workspace.out.shape[0] < num_seqs or tuple(workspace.out.shape[1:]) != (
            num_heads,
            num_splits,
            kv_lora_rank,
        ):
            raise ValueError(
                f"workspace of shape {tuple(workspace.out.shape)} does not fit {num_seqs} seqs x "
                f"{num_heads} heads x {num_splits} splits x kv_lora_rank {kv_lora_rank}"
            )
        part_out, part_lse = workspace.out, workspace.lse
    else:
        part_out = part_lse = out  # unused
    dot_precision, cpu_bf16 = dot_settings(q)
    scale_arg = seq_lens if k_scale is None else k_scale.reshape(1)
    l_pad = max(16, triton.next_power_of_2(kv_lora_rank))
    grid = (triton.cdiv(num_heads, cfg.block_h), num_splits, num_seqs)
    _mla_decode_split_kernel[grid](
        q, kv_cache, out, part_out, part_lse, block_tables, seq_lens, cu_seqlens_q, scale_arg,
        float(scale), q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), block_tables.stride(0),
        NUM_HEADS=num_heads, BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n,
        BLOCK_SIZE=kv_cache.shape[1], KV_LORA=kv_lora_rank, L_PAD=l_pad,
        ROPE=rope, R_PAD=max(16, triton.next_power_of_2(rope)), NUM_SPLITS=num_splits,
        HAS_K_SCALE=k_scale is not None, DOT_PRECISION=dot_precision, CPU_BF16=cpu_bf16,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if num_splits > 1:
        _mla_combine_kernel[(num_heads, num_seqs)](
            out, part_out, part_lse, cu_seqlens_q, scale_arg, out.stride(0), out.stride(1),
            NUM_HEADS=num_heads, KV_LORA=kv_lora_rank, L_PAD=l_pad, NUM_SPLITS=num_splits,
            SPLITS_PAD=triton.next_power_of_2(num_splits), HAS_K_SCALE=k_scale is not None,
            CPU_BF16=cpu_bf16, num_warps=4,
        )  # fmt: skip
    return out


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the CPU interpreter: any small number


@register("mla_decode", "triton", devices=("cuda",))
def mla_decode(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    kv_lora_rank: int,
    k_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: MlaDecodeConfig | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """The registered entry (signature of the reference, plus tuning overrides for benchmarks
    and tests). Decode batches only: ``meta.max_seqlen_q <= 1``."""
    if meta.max_seqlen_q > 1:
        raise ValueError(
            f"the Triton mla_decode takes one new token per sequence, got max_seqlen_q="
            f"{meta.max_seqlen_q} (prefill goes through the layer's up-projected path)"
        )
    num_tokens, num_heads, _ = q.shape
    if out is None:
        out = torch.zeros(num_tokens, num_heads, kv_lora_rank, dtype=q.dtype, device=q.device)
    if num_splits is None:
        cfg = config or default_mla_config(num_heads, kv_lora_rank)
        head_blocks = triton.cdiv(num_heads, cfg.block_h)
        num_splits = default_num_splits(
            meta.num_seqs, head_blocks, meta.max_seqlen_k, _num_sms(q.device)
        )
    return mla_decode_attention(
        q, kv_cache, out, meta.cu_seqlens_q, meta.seq_lens, meta.block_tables, scale,
        kv_lora_rank, num_splits, k_scale, config=config,
    )  # fmt: skip

"""Random paged-attention batches, for the kernel tests and the attention benchmark.

``make_paged_batch`` builds a flat token batch with a paged KV cache laid out as the engine does
(atom.forward_context), scattered over a shuffled set of physical blocks, and poisons everything a
correct kernel must not read (DESIGN rule 11): cache slots past each sequence's end and unused
blocks hold NaN, unused block-table entries hold a huge block id, and padding query rows are NaN.
``attention_at_precision`` is "torch at the kernel's precision", the yardstick of DESIGN rule 10,
and ``check_against_reference`` applies that rule to the Triton kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atom.forward_context import AttentionMetadata
from atom.kernels.reference.attention import gather_kv
from atom.kernels.reference.attention import paged_attention as reference_attention
from atom.kernels.triton.paged_attention import paged_attention

HUGE_BLOCK_ID = 2**31 - 1
SENTINEL = 7.0  # pre-filled into padding output rows, which must keep it


@dataclass
class PagedBatch:
    q: torch.Tensor  # [num_tokens + padding, Hq, D]
    key_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor
    meta: AttentionMetadata
    k_scale: torch.Tensor | None  # [1] fp32 (fp8 caches)
    v_scale: torch.Tensor | None
    num_real_tokens: int


def make_paged_batch(
    query_lens: list[int],
    seq_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    cache_dtype: torch.dtype | None = None,
    num_padding_tokens: int = 0,
    spare_blocks: int = 3,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> PagedBatch:
    """Sequence b has seq_lens[b] tokens in the cache, the last query_lens[b] of them new."""
    if len(query_lens) != len(seq_lens):
        raise ValueError(f"{len(query_lens)} query lens for {len(seq_lens)} sequences")
    for q_len, s_len in zip(query_lens, seq_lens):
        if not 0 <= q_len <= s_len:
            raise ValueError(f"query_len {q_len} must be in [0, seq_len={s_len}]")
    cache_dtype = cache_dtype or dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    blocks_per_seq = [(s + block_size - 1) // block_size for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    physical = torch.randperm(num_blocks, generator=gen, device=device)
    max_blocks = max(blocks_per_seq + [1]) + 2  # room for unused, poisoned entries
    block_tables = torch.full(
        (len(seq_lens), max_blocks), HUGE_BLOCK_ID, dtype=torch.int32, device=device
    )

    is_fp8 = cache_dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_scale = v_scale = None
    if is_fp8:  # per-tensor scales that use the fp8 range (randn stays within 6 sigma)
        k_scale = torch.full((1,), 6.0 / torch.finfo(cache_dtype).max, device=device)
        v_scale = torch.full((1,), 5.0 / torch.finfo(cache_dtype).max, device=device)
    key_cache = torch.full(shape, float("nan"), dtype=cache_dtype, device=device)
    value_cache = torch.full(shape, float("nan"), dtype=cache_dtype, device=device)
    flat_k = key_cache.view(-1, num_kv_heads, head_dim)
    flat_v = value_cache.view(-1, num_kv_heads, head_dim)

    slot_mapping, used = [], 0
    for b, (q_len, s_len) in enumerate(zip(query_lens, seq_lens)):
        blocks = physical[used : used + blocks_per_seq[b]].to(torch.int32)
        used += blocks_per_seq[b]
        block_tables[b, : blocks.shape[0]] = blocks
        pos = torch.arange(s_len, device=device)
        slots = blocks[pos // block_size].long() * block_size + pos % block_size
        for flat, scale_t in ((flat_k, k_scale), (flat_v, v_scale)):
            x = torch.randn(s_len, num_kv_heads, head_dim, generator=gen, device=device)
            if scale_t is not None:
                x = (x / scale_t).clamp(-torch.finfo(cache_dtype).max, torch.finfo(cache_dtype).max)
            flat[slots] = x.to(cache_dtype)
        slot_mapping.append(slots[s_len - q_len :])

    num_tokens = sum(query_lens)
    q = torch.randn(
        num_tokens + num_padding_tokens, num_heads, head_dim, generator=gen, device=device
    ).to(dtype)
    q[num_tokens:] = float("nan")
    padding = torch.full((num_padding_tokens,), -1, dtype=torch.int64, device=device)
    cu = [0]
    for q_len in query_lens:
        cu.append(cu[-1] + q_len)
    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables,
        slot_mapping=torch.cat([*slot_mapping, padding]),
        max_seqlen_q=max(query_lens, default=0),
        max_seqlen_k=max(seq_lens, default=0),
        seq_lens_cpu=list(seq_lens),
        query_lens_cpu=list(query_lens),
    )
    return PagedBatch(q, key_cache, value_cache, meta, k_scale, v_scale, num_tokens)


def new_kv_views(batch: PagedBatch, unread_seqs: int = 0):
    """(k_new, v_new, slots): this step's K/V as the cache holds them, as strided views of one
    [T, 2, Hkv, D] buffer (like k, v of a fused qkv output), and the slot of each row (-1: none).
    Rows no kernel may take from them hold NaN: padding tokens, and the new tokens of the first
    unread_seqs sequences (leading decodes: the decode kernel reads the cache)."""
    m, (_, _, hkv, d) = batch.meta, batch.key_cache.shape
    buf = torch.full((batch.q.shape[0], 2, hkv, d), float("nan"), dtype=batch.q.dtype,
                     device=batch.q.device)  # fmt: skip
    slots = m.slot_mapping.clone()
    slots[: m.cu_seqlens_q[unread_seqs]] = -1
    rows = slots >= 0
    for i, cache in enumerate((batch.key_cache, batch.value_cache)):
        buf[rows, i] = cache.view(-1, hkv, d)[slots[rows]].to(batch.q.dtype)
    return buf[:, 0], buf[:, 1], slots


def attention_at_precision(
    batch: PagedBatch,
    scale: float,
    dtype: torch.dtype,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain torch attention as a ``dtype`` kernel would do it: K/V in ``dtype``, scores and softmax
    in fp32, probabilities rounded to ``dtype`` before P @ V, output rounded to ``dtype``.
    Returns [num_real_tokens, Hq, D] in ``dtype``."""
    meta, q = batch.meta, batch.q
    out = torch.empty(batch.num_real_tokens, *q.shape[1:], dtype=dtype, device=q.device)
    cu = meta.cu_seqlens_q.tolist()
    for b, seq_len in enumerate(meta.seq_lens.tolist()):
        start, end = cu[b], cu[b + 1]
        if end == start:
            continue
        table = meta.block_tables[b]
        k = gather_kv(batch.key_cache, table, seq_len, batch.k_scale).to(dtype).float()
        v = gather_kv(batch.value_cache, table, seq_len, batch.v_scale).to(dtype)
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = torch.einsum("lhd,shd->hls", q[start:end].float(), k) * scale
        q_pos = torch.arange(seq_len - (end - start), seq_len, device=q.device)[:, None]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed &= q_pos - k_pos < sliding_window
        scores = scores.masked_fill(~allowed, float("-inf"))
        if sinks is not None:
            sink = sinks.float().view(-1, 1, 1).expand(-1, end - start, 1)
            probs = torch.softmax(torch.cat([scores, sink], -1), -1)[..., :-1]
        else:
            probs = torch.softmax(scores, -1)
        probs = probs.to(dtype).float()
        out[start:end] = torch.einsum("hls,shd->lhd", probs, v.float()).to(dtype)
    return out


def check_against_reference(batch, dtype, scale=0.3, window=None, sinks=None, **kernel_kwargs):
    """Runs the Triton kernel on ``batch`` and asserts DESIGN rule 10: it may be at most twice as
    far (max abs) from the fp32 reference as ``attention_at_precision`` is, plus one output ulp
    (for fp32, where that yardstick is the reference itself, 1e-5 relative). Also: no NaN from
    poisoned slots, and padding output rows untouched. Returns the kernel's output."""
    n = batch.num_real_tokens
    out = torch.full_like(batch.q, SENTINEL)
    scales = dict(k_scale=batch.k_scale, v_scale=batch.v_scale)
    got = paged_attention(
        batch.q, batch.key_cache, batch.value_cache, batch.meta, scale, window, sinks,
        out=out, **scales, **kernel_kwargs,
    )  # fmt: skip
    assert got is out
    ref = reference_attention(
        batch.q.float(), batch.key_cache, batch.value_cache, batch.meta, scale, window, sinks,
        **scales,
    )[:n]  # fmt: skip
    base = attention_at_precision(batch, scale, dtype, window, sinks)
    kernel_err = (got[:n].float() - ref).abs().max().item() if n else 0.0
    base_err = (base.float() - ref).abs().max().item() if n else 0.0
    magnitude = max(1.0, ref.abs().max().item() if n else 1.0)
    # One output ulp; for fp32, where "torch at the kernel's precision" is the reference itself,
    # a floor for the different summation order (online softmax, exp2) instead.
    ulp = magnitude * (1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps)
    assert not got[:n].isnan().any(), "NaN in the output (a poisoned slot was read)"
    assert kernel_err <= 2 * base_err + ulp, f"kernel err {kernel_err:.3g} vs torch {base_err:.3g}"
    assert (got[n:] == SENTINEL).all(), "padding rows were written"
    return got

"""Attention over the paged KV cache: the reference every attention kernel must match.

For sequence b with new queries at positions p (see AttentionMetadata), query at p attends to
cached keys j with j <= p and, with a sliding window W, p - j < W. With attention sinks (GPT-OSS),
each head h has a learned logit s_h that joins the softmax denominator but carries no value:
    out = sum_j exp(l_j - m) v_j / (exp(s_h - m) + sum_j exp(l_j - m)),  m = max(s_h, max_j l_j).
Scores and softmax are fp32; GQA maps query head h to KV head h // (Hq / Hkv).
"""

from __future__ import annotations

import torch

from atom.forward_context import AttentionMetadata
from atom.kernels.registry import register


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int, scale) -> torch.Tensor:
    """The first seq_len tokens of one sequence from the paged cache, as fp32 [seq_len, Hkv, D]."""
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    kv = cache[block_table[:num_blocks].long()].flatten(0, 1)[:seq_len].float()
    return kv if scale is None else kv * scale


@register("paged_attention", "torch")
def paged_attention(
    q: torch.Tensor,  # [num_tokens, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,  # [Hq] fp32 logits, or None
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    k_new: torch.Tensor | None = None,  # [num_tokens, Hkv, D]: this step's K/V as the cache holds
    v_new: torch.Tensor | None = None,  # them; ignored (the cache has the same values)
) -> torch.Tensor:
    """Returns out: [num_tokens, Hq, D] in q's dtype (padding rows are left as they were)."""
    num_heads = q.shape[1]
    if out is None:
        out = torch.zeros_like(q)
    seq_lens = meta.seq_lens_cpu if meta.seq_lens_cpu is not None else meta.seq_lens.tolist()
    cu = meta.cu_seqlens_q.tolist()
    for b, seq_len in enumerate(seq_lens):
        start, end = cu[b], cu[b + 1]
        q_len = end - start
        if q_len == 0:
            continue
        k = gather_kv(key_cache, meta.block_tables[b], seq_len, k_scale)
        v = gather_kv(value_cache, meta.block_tables[b], seq_len, v_scale)
        group = num_heads // k.shape[1]
        k = k.repeat_interleave(group, dim=1)  # [S, Hq, D]
        v = v.repeat_interleave(group, dim=1)
        qb = q[start:end].float()  # [L, Hq, D]
        scores = torch.einsum("lhd,shd->hls", qb, k) * scale  # [Hq, L, S]
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device).unsqueeze(1)
        k_pos = torch.arange(seq_len, device=q.device).unsqueeze(0)
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed &= q_pos - k_pos < sliding_window
        scores = scores.masked_fill(~allowed, float("-inf"))
        if sinks is not None:
            sink = sinks.float().view(num_heads, 1, 1).expand(num_heads, q_len, 1)
            probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        else:
            probs = torch.softmax(scores, dim=-1)
        out[start:end] = torch.einsum("hls,shd->lhd", probs, v).to(out.dtype)
    return out

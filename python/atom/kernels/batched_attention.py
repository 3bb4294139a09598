"""Decode-only paged attention as one batched torch computation: the CPU's fast path.

The reference (atom.kernels.reference.attention) loops over the sequences in Python, a dozen
small ops per sequence and layer; on the CPU that loop costs more than the attention itself.
For a decode-only batch (at most one new token per sequence, ``meta.max_seqlen_q <= 1``) this
backend computes every sequence at once, with the reference's math in fp32:

    K, V  [n, S, Hkv, D]  the first ceil(L_max / block_size) blocks of every sequence's table
                          (S = that many blocks x block_size), entries past a sequence's own
                          blocks replaced by block 0 (never trusted: they may be junk ids)
    visible[b, j] = j < L_b  (and j >= L_b - W under a sliding window W)
    out    [n, Hq, D]     = softmax(scale * q . K, masked to visible keys) . V: one masked
                          scaled_dot_product_attention call (GQA: G = Hq / Hkv query heads per
                          KV head); with sinks, the same in matmuls with a sink logit per head
                          as one more softmax column. K and V are zeroed where not visible (a
                          NaN in an unwritten slot must not leak through the mask or a zero
                          weight); 0 for L_b = 0

Sequences are processed in chunks so that the gathered K/V stay below ~16M elements. Results
equal the reference's up to the order of fp32 summation. Any other batch (prefill, mixed) goes
to the reference. Registered as backend ``batched`` for the CPU (GPUs have the Triton kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atom.forward_context import AttentionMetadata
from atom.kernels.reference.attention import paged_attention as reference_paged_attention
from atom.kernels.registry import register

CHUNK_ELEMENTS = 1 << 24


@register("paged_attention", "batched", devices=("cpu",))
def paged_attention(
    q: torch.Tensor,  # [num_tokens, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,  # [Hq]
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    k_new: torch.Tensor | None = None,  # this step's K/V as the cache holds them: not needed here
    v_new: torch.Tensor | None = None,
) -> torch.Tensor:
    """Returns out: [num_tokens, Hq, D] in q's dtype (rows without a query are left as they
    were), like the reference."""
    if meta.max_seqlen_q > 1 or meta.num_seqs == 0:
        return reference_paged_attention(
            q, key_cache, value_cache, meta, scale, sliding_window, sinks, k_scale, v_scale, out
        )
    if out is None:
        out = torch.zeros_like(q)
    if meta.max_seqlen_q == 0 or q.shape[0] == 0:  # no sequence has a new token
        return out
    num_seqs = meta.num_seqs
    block_size, num_kv_heads, head_dim = key_cache.shape[1:]
    width = meta.block_tables.shape[1]
    num_blocks = min(-(-max(meta.max_seqlen_k, 1) // block_size), width)
    per_seq = num_blocks * block_size * num_kv_heads * head_dim
    chunk = max(1, CHUNK_ELEMENTS // max(per_seq, 1))
    cu = meta.cu_seqlens_q.long()
    for lo in range(0, num_seqs, chunk):
        hi = min(num_seqs, lo + chunk)
        rows = cu[lo:hi]
        has_query = cu[lo + 1 : hi + 1] > rows
        result = _decode_chunk(
            q[rows.clamp(max=q.shape[0] - 1)], key_cache, value_cache,
            meta.seq_lens[lo:hi].long(), meta.block_tables[lo:hi, :num_blocks].long(), scale,
            sliding_window, sinks, k_scale, v_scale,
        )  # fmt: skip
        out[rows[has_query]] = result[has_query].to(out.dtype)
    return out


def _decode_chunk(q, key_cache, value_cache, lens, tables, scale, window, sinks, k_scale, v_scale):
    """q [n, Hq, D]; lens [n]; tables [n, nb] -> [n, Hq, D] fp32."""
    n, num_heads, head_dim = q.shape
    num_cache_blocks, block_size, num_kv_heads = key_cache.shape[:3]
    group = num_heads // num_kv_heads
    num_blocks = tables.shape[1]
    own_blocks = (lens + block_size - 1) // block_size
    cols = torch.arange(num_blocks, device=q.device)
    index = torch.where(cols[None, :] < own_blocks[:, None], tables, 0).reshape(-1)
    span = num_blocks * block_size

    def gather(cache, cache_scale):  # -> [n, Hkv, S, D] fp32 (a strided view)
        rows = cache.view(num_cache_blocks, -1).index_select(0, index).float()
        rows = rows.view(n, span, num_kv_heads, head_dim)
        return (rows if cache_scale is None else rows * cache_scale).transpose(1, 2)

    k, v = gather(key_cache, k_scale), gather(value_cache, v_scale)
    pos = torch.arange(span, device=q.device)[None, :]
    visible = pos < lens[:, None]  # [n, S]
    if window is not None:
        visible &= pos >= lens[:, None] - window
    hidden = ~visible[:, None, :, None]
    k, v = k.masked_fill(hidden, 0.0), v.masked_fill(hidden, 0.0)
    visible = visible[:, None, None, :]  # [n, 1, 1, S]
    qf = q.float()
    if sinks is None:
        out = F.scaled_dot_product_attention(
            qf.unsqueeze(2), k, v, attn_mask=visible, scale=scale, enable_gqa=group > 1
        ).squeeze(2)
    else:  # the sink joins the softmax as one more logit per head, without a value
        qg = qf.view(n, num_kv_heads, group, head_dim)
        scores = (qg @ k.transpose(-1, -2)) * scale  # [n, Hkv, G, S]
        scores = scores.masked_fill(~visible, float("-inf"))
        sink = sinks.float().view(1, num_kv_heads, group, 1).expand(n, -1, -1, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        out = (probs @ v).reshape(n, num_heads, head_dim)
    return torch.where((lens > 0)[:, None, None], out, 0.0)  # L_b = 0: no keys, output 0

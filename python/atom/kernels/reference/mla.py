"""Multi-head latent attention (DeepSeek-V2/V3 MLA) over the latent paged cache: the reference.

Cache layout (one "K" cache per layer, no V cache; see atom.layers.mla):
    kv_cache: [num_blocks, block_size, 1, L + R]   row of a token = [c | k_pe]
c = kv_a_layernorm(compressed kv) [L = kv_lora_rank], k_pe = the token's roped key part
[R = qk_rope_head_dim], shared by all heads. Slots as in atom.forward_context. An fp8 cache
stores x / k_scale (per-tensor scale).

Weight-absorbed attention ("MQA in latent space"): with W_UK_h [nope, L] and W_UV_h [v, L] the
per-head blocks of kv_b_proj, head h's key of token j is [W_UK_h c_j | k_pe_j] and its value
W_UV_h c_j, so
    q_nope . (W_UK_h c_j) + q_pe . k_pe_j = [W_UK_h^T q_nope | q_pe] . [c_j | k_pe_j]
    sum_j p_j W_UV_h c_j = W_UV_h (sum_j p_j c_j).
The layer folds W_UK into the query (q = [q_lat | q_pe], [T, H, L + R]) and W_UV into the output;
``mla_decode`` computes the part in between, with every head reading the same cache rows:
    out[t, h] = sum_j softmax_j(scale * q[t, h] . kv_j) * c_j     -> [T, H, L]
Causal as in paged attention: the query at position p (see AttentionMetadata) sees keys j <= p.
Scores and softmax in fp32.
"""

from __future__ import annotations

import torch

from atom.forward_context import AttentionMetadata
from atom.kernels.reference.attention import gather_kv
from atom.kernels.reference.cache import quantize_for_cache
from atom.kernels.registry import register


@register("mla_decode", "torch")
def mla_decode(
    q: torch.Tensor,  # [T, H, L + R]: [W_UK^T q_nope | roped q_pe]
    kv_cache: torch.Tensor,  # [num_blocks, block_size, 1, L + R]
    meta: AttentionMetadata,
    scale: float,
    kv_lora_rank: int,  # L
    k_scale: torch.Tensor | None = None,  # one-element fp32 (fp8 cache) or None
    out: torch.Tensor | None = None,  # [T, H, L]
) -> torch.Tensor:
    """Returns out: [T, H, L] in q's dtype (padding rows are left as they were). Any q_len per
    sequence works here; the fast kernels take decode batches (q_len 0 or 1)."""
    num_tokens, num_heads, _ = q.shape
    if out is None:
        out = torch.zeros(num_tokens, num_heads, kv_lora_rank, dtype=q.dtype, device=q.device)
    seq_lens = meta.seq_lens_cpu if meta.seq_lens_cpu is not None else meta.seq_lens.tolist()
    cu = meta.cu_seqlens_q.tolist()
    for b, seq_len in enumerate(seq_lens):
        start, end = cu[b], cu[b + 1]
        q_len = end - start
        if q_len == 0:
            continue
        kv = gather_kv(kv_cache, meta.block_tables[b], seq_len, k_scale)[:, 0]  # [S, L + R] fp32
        scores = torch.einsum("lhd,sd->hls", q[start:end].float(), kv) * scale  # [H, L_q, S]
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device).unsqueeze(1)
        k_pos = torch.arange(seq_len, device=q.device).unsqueeze(0)
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:end] = torch.einsum("hls,sd->lhd", probs, kv[:, :kv_lora_rank]).to(out.dtype)
    return out


@register("concat_and_cache_mla", "torch")
def concat_and_cache_mla(
    kv_c: torch.Tensor,  # [T, L] normed compressed kv
    k_pe: torch.Tensor,  # [T, R] roped key part
    kv_cache: torch.Tensor,  # [num_blocks, block_size, 1, L + R]
    slot_mapping: torch.Tensor,  # [>= T] int64, -1 = skip (padding)
    k_scale: torch.Tensor | None = None,
) -> None:
    """Writes [kv_c | k_pe] of each token into its cache slot (in place)."""
    num_tokens = kv_c.shape[0]
    valid = slot_mapping[:num_tokens] >= 0
    slots = slot_mapping[:num_tokens][valid].long()
    rows = torch.cat([kv_c[valid], k_pe[valid]], dim=-1)
    flat = kv_cache.view(-1, kv_cache.shape[-1])
    flat[slots] = quantize_for_cache(rows, kv_cache.dtype, k_scale)

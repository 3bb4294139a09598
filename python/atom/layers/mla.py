"""Multi-head latent attention (MLA, DeepSeek-V2/V3, Kimi-K2) over a latent paged cache.

Matches transformers' DeepseekV3Attention. Per token x (dims: H heads, L = kv_lora_rank,
R = qk_rope_head_dim, n = qk_nope_head_dim, v = v_head_dim):
    q          = q_b_proj(q_a_layernorm(q_a_proj(x)))  (or q_proj(x) without q LoRA)  [H, n + R]
    [c | k_pe] = kv_a_proj_with_mqa(x);  c = kv_a_layernorm(c)                         [L], [R]
    q_pe, k_pe = RoPE(q_pe), RoPE(k_pe)   (k_pe is one head shared by all)
    [k_nope_h | v_h] = kv_b_proj(c)       head h: W_UK_h c [n] and W_UV_h c [v]
    o_h = softmax(scale * (q_nope_h . k_nope_h + q_pe_h . k_pe)) v_h;  out = o_proj([o_h]_h)

Cache contract with the model runner (the layer is one of ``model.attention_layers()``):
``num_kv_heads = 1``, ``head_dim = L + R``, ``needs_v_cache = False``; the runner binds a
[num_blocks, block_size, 1, L + R] cache whose token rows are the latents [c | roped k_pe]
(atom/kernels/reference/mla.py) and no V cache (whatever is passed as v_cache is ignored).

Two ways to attend, chosen per sequence of the flat batch:
- decode (1 new token): weight-absorbed. q_lat_h = W_UK_h^T q_nope_h, attention in latent space
  over the cache rows ([q_lat | q_pe] . [c | k_pe]), then o_h = W_UV_h (sum_j p_j c_j); the middle
  step is ``atom.kernels.mla_decode`` (a Triton split-K kernel on GPUs). Reads L + R values per
  context token instead of H * (n + R + v).
- prefill (several new tokens, chunked or after a cached prefix): "naive". The latents of the
  sequence's cache blocks are up-projected through kv_b_proj into a temporary paged K/V of H heads
  ([W_UK c | k_pe], W_UV c zero-padded to the same width), and ``atom.kernels.paged_attention``
  runs causal attention over it. Costs a GEMM over the context but keeps the many-query case
  compute-efficient.
The softmax scale is (n + R)^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN
(atom.layers.rotary_yarn).

RoPE pairing: DeepSeek rotates interleaved pairs (2i, 2i+1) (``rope_interleave``, the default;
transformers de-interleaves its output, which permutes q_pe and k_pe alike and leaves every dot
product unchanged), else rotate-half pairs (i, i + R/2).
"""

from __future__ import annotations

import torch
from torch import nn

from atom import kernels
from atom.forward_context import AttentionMetadata
from atom.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear
from atom.layers.norm import RMSNorm
from atom.layers.rotary import RotaryEmbedding

# transformers builds q_a_layernorm / kv_a_layernorm with the default eps, not rms_norm_eps.
LATENT_NORM_EPS = 1e-6


class MultiHeadLatentAttention(nn.Module):
    needs_v_cache = False
    sliding_window = None

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        q_lora_rank: int | None,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        rotary_emb: RotaryEmbedding,
        scale: float,
        *,
        attention_bias: bool = False,
        layer_idx: int = 0,
        **tp,
    ):
        super().__init__()
        if rotary_emb.rotary_dim != qk_rope_head_dim:
            raise ValueError(
                f"rotary_dim={rotary_emb.rotary_dim} must equal qk_rope_head_dim={qk_rope_head_dim}"
            )
        for name, value in (("kv_lora_rank", kv_lora_rank), ("v_head_dim", v_head_dim)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.num_heads = num_heads // tp.get("tp_size", 1)  # this rank's heads
        self.q_lora_rank, self.kv_lora_rank = q_lora_rank, kv_lora_rank
        self.nope_dim, self.rope_dim = qk_nope_head_dim, qk_rope_head_dim
        self.v_head_dim = v_head_dim
        self.qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.scale, self.layer_idx, self.rotary_emb = scale, layer_idx, rotary_emb
        # What the model runner sizes the cache by: one latent "head" per token.
        self.num_kv_heads, self.head_dim = 1, kv_lora_rank + qk_rope_head_dim

        q_out = num_heads * self.qk_head_dim
        if q_lora_rank is None:
            self.q_proj = ColumnParallelLinear(hidden_size, q_out, bias=False, **tp)
        else:
            self.q_a_proj = ReplicatedLinear(hidden_size, q_lora_rank, bias=attention_bias)
            self.q_a_layernorm = RMSNorm(q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = ColumnParallelLinear(q_lora_rank, q_out, bias=False, **tp)
        self.kv_a_proj_with_mqa = ReplicatedLinear(
            hidden_size, kv_lora_rank + qk_rope_head_dim, bias=attention_bias
        )
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = ColumnParallelLinear(
            kv_lora_rank, num_heads * (qk_nope_head_dim + v_head_dim), bias=False, **tp
        )
        self.o_proj = RowParallelLinear(
            num_heads * v_head_dim, hidden_size, bias=attention_bias, **tp
        )
        self.kv_cache: torch.Tensor | None = None
        self.k_scale: torch.Tensor | None = None

    def bind_kv_cache(self, k_cache, v_cache=None, k_scale=None, v_scale=None) -> None:
        """k_cache: [num_blocks, block_size, 1, L + R], kept by reference; v_cache and v_scale
        are ignored (MLA has no V cache: its values are the cached latents)."""
        if k_cache.dim() != 4 or tuple(k_cache.shape[2:]) != (1, self.head_dim):
            raise ValueError(
                f"MLA layer {self.layer_idx}: k_cache of shape {tuple(k_cache.shape)} is not "
                f"[num_blocks, block_size, 1, {self.head_dim}]"
            )
        self.kv_cache, self.k_scale = k_cache, k_scale

    # ---------------------------------------------------------------------------- forward
    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """positions [T] int64, hidden [T, hidden_size] -> [T, hidden_size]."""
        if self.kv_cache is None:
            raise RuntimeError(
                f"MLA layer {self.layer_idx} has no KV cache: the model runner must call "
                "bind_kv_cache() on every layer of model.attention_layers() before a forward"
            )
        num_tokens, heads, lora = hidden.shape[0], self.num_heads, self.kv_lora_rank
        if self.q_lora_rank is None:
            q = self.q_proj(hidden)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden)))
        q = q.view(num_tokens, heads, self.qk_head_dim)
        latent = self.kv_a_proj_with_mqa(hidden)  # [T, L + R]
        kv_c = self.kv_a_layernorm(latent[:, :lora])
        q_pe, k_pe = kernels.rotary_embedding(
            positions, q[..., self.nope_dim :], latent[:, None, lora:], self.rope_dim,
            self.rotary_emb.cos_sin_cache, self.rotary_emb.is_neox,
        )  # fmt: skip
        kernels.concat_and_cache_mla(
            kv_c, k_pe.reshape(num_tokens, self.rope_dim), self.kv_cache, meta.slot_mapping,
            self.k_scale,
        )  # fmt: skip
        q_nope = q[..., : self.nope_dim]

        if meta.max_seqlen_q <= 1:  # decode only (also the CUDA-graph shape): no host reads
            out = self._absorbed(q_nope, q_pe, meta)
        else:
            out = q.new_zeros(num_tokens, heads, self.v_head_dim)
            decode, prefill = _split_by_query_len(meta)
            if decode is not None:
                rows, sub = decode
                out[rows] = self._absorbed(q_nope[rows], q_pe[rows], sub)
            if prefill is not None:
                rows, sub = prefill
                out[rows] = self._naive(q_nope[rows], q_pe[rows], sub)
        return self.o_proj(out.reshape(num_tokens, heads * self.v_head_dim))

    def _uk_uv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK [H, n, L] and W_UV [H, v, L]: views of kv_b_proj.weight (no copies)."""
        w = self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_head_dim, -1)
        return w[:, : self.nope_dim], w[:, self.nope_dim :]

    def _absorbed(self, q_nope, q_pe, meta: AttentionMetadata) -> torch.Tensor:
        """q_nope [N, H, n], q_pe [N, H, R], decode metadata of those N rows -> [N, H, v]."""
        w_uk, w_uv = self._uk_uv()
        q_lat = torch.bmm(q_nope.transpose(0, 1), w_uk)  # [H, N, L]
        q = torch.cat([q_lat.transpose(0, 1), q_pe.to(q_lat.dtype)], dim=-1)  # [N, H, L + R]
        o_lat = kernels.mla_decode(
            q, self.kv_cache, meta, self.scale, self.kv_lora_rank, self.k_scale
        )  # [N, H, L]
        return torch.bmm(o_lat.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)

    def _naive(self, q_nope, q_pe, meta: AttentionMetadata) -> torch.Tensor:
        """q_nope [N, H, n], q_pe [N, H, R], metadata of those N rows -> [N, H, v], through a
        temporary up-projected paged K/V of the sequences' cache blocks."""
        heads, lora, nope, rope, v_dim = (
            self.num_heads, self.kv_lora_rank, self.nope_dim, self.rope_dim, self.v_head_dim,
        )  # fmt: skip
        block_size = self.kv_cache.shape[1]
        seq_lens = meta.seq_lens_cpu or meta.seq_lens.tolist()
        counts = [-(-n // block_size) for n in seq_lens]  # blocks each sequence uses
        blocks = torch.cat([meta.block_tables[b, :c] for b, c in enumerate(counts)]).long()
        latent = self.kv_cache[blocks, :, 0]  # [NB, block_size, L + R]
        if self.k_scale is not None or latent.dtype != q_nope.dtype:  # an fp8 cache
            scale = 1.0 if self.k_scale is None else self.k_scale.float()
            latent = (latent.float() * scale).to(q_nope.dtype)
        kv = self.kv_b_proj(latent[..., :lora]).view(*latent.shape[:2], heads, nope + v_dim)
        width = max(nope + rope, v_dim)
        k = kv.new_zeros(*kv.shape[:3], width)
        k[..., :nope] = kv[..., :nope]
        k[..., nope : nope + rope] = latent[..., None, lora:]
        v = kv.new_zeros(*kv.shape[:3], width)
        v[..., :v_dim] = kv[..., nope:]
        q = q_nope.new_zeros(*q_nope.shape[:2], width)
        q[..., :nope], q[..., nope : nope + rope] = q_nope, q_pe
        tables = torch.zeros(len(counts), max(counts), dtype=torch.int32)
        first = 0
        for b, c in enumerate(counts):
            tables[b, :c] = torch.arange(first, first + c, dtype=torch.int32)
            first += c
        temp_meta = AttentionMetadata(
            cu_seqlens_q=meta.cu_seqlens_q,
            seq_lens=meta.seq_lens,
            block_tables=tables.to(q.device),
            slot_mapping=meta.slot_mapping,
            max_seqlen_q=meta.max_seqlen_q,
            max_seqlen_k=meta.max_seqlen_k,
            seq_lens_cpu=meta.seq_lens_cpu,
            query_lens_cpu=meta.query_lens_cpu,
        )
        out = kernels.paged_attention(q, k, v, temp_meta, self.scale)
        return out[..., :v_dim]

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, q_lora_rank={self.q_lora_rank}, kv_lora_rank="
            f"{self.kv_lora_rank}, nope={self.nope_dim}, rope={self.rope_dim}, v={self.v_head_dim}, "
            f"scale={self.scale:.4g}"
        )


SplitPart = tuple[torch.Tensor, AttentionMetadata]


def _split_by_query_len(meta: AttentionMetadata) -> tuple[SplitPart | None, SplitPart | None]:
    """The sequences of a mixed batch with one new token (decode) and with more (prefill): for
    each group, the rows of its tokens in the flat batch and its own metadata (rows renumbered
    from 0). Sequences without new tokens belong to neither."""
    query_lens = meta.query_lens_cpu
    if query_lens is None:
        query_lens = (meta.cu_seqlens_q[1:] - meta.cu_seqlens_q[:-1]).tolist()
    seq_lens = meta.seq_lens_cpu or meta.seq_lens.tolist()
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    groups = (
        [b for b, n in enumerate(query_lens) if n == 1],
        [b for b, n in enumerate(query_lens) if n > 1],
    )
    parts: list[SplitPart | None] = []
    dev = meta.cu_seqlens_q.device
    for seqs in groups:
        if not seqs:
            parts.append(None)
            continue
        rows = [r for b in seqs for r in range(starts[b], starts[b + 1])]
        lens = [query_lens[b] for b in seqs]
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)
        index = torch.tensor(seqs, dtype=torch.int64, device=dev)
        row_index = torch.tensor(rows, dtype=torch.int64, device=dev)
        sub = AttentionMetadata(
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
            seq_lens=meta.seq_lens[index],
            block_tables=meta.block_tables[index],
            slot_mapping=meta.slot_mapping[row_index],
            max_seqlen_q=max(lens),
            max_seqlen_k=max(seq_lens[b] for b in seqs),
            seq_lens_cpu=[seq_lens[b] for b in seqs],
            query_lens_cpu=lens,
        )
        parts.append((row_index, sub))
    return parts[0], parts[1]

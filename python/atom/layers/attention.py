"""Multi-head attention over the paged KV cache (GQA/MQA included), with feature flags.

Contract with the model runner:
- ``model.attention_layers()`` lists every ``Attention`` in layer order; each exposes
  ``num_kv_heads`` and ``head_dim`` (this rank's), and ``sliding_window`` so the runner can size the
  cache and the metadata;
- the runner allocates k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim] (layout of
  atom.forward_context) and calls ``bind_kv_cache(k_cache, v_cache, k_scale, v_scale)`` once per
  layer (k_scale/v_scale: fp32 scalars for an fp8 cache, else None).

Per step: ``forward(q, k, v, positions, attn_metadata)`` (q: [T, Hq*D], k, v: [T, Hkv*D]) applies the
optional per-head q/k RMSNorm and RoPE and writes this step's k, v into the cache in one fused op
(atom.kernels.fused_qk_norm_rope_cache; a plain reshape_and_cache without RoPE), then attends over
the cache (atom.kernels.paged_attention), handing it those k, v too (when the cache is in q's dtype
it holds exactly them, and the GPU kernel reads the new tokens' K/V contiguously from them).
Decode-only steps on a GPU skip the first op: the Triton decode kernel does its work on the rows
it loads (``_rope_in_decode_kernel``). Returns [T, Hq*D] in q's dtype.

Flags: ``rotary_emb`` (RoPE applied here, fused with the cache write; a rotary_dim below head_dim
turns only the first rotary_dim features, GLM's partial rotary), ``qk_norm`` (per-head RMSNorm
weights ``q_norm.weight``/``k_norm.weight`` [D], Qwen3 style), ``sliding_window`` (attend only to the
last W positions), ``sinks`` (a learned per-head logit ``sinks`` [Hq] that joins the softmax, GPT-OSS).
"""

from __future__ import annotations

import torch
from torch import nn

from atom import envs, kernels
from atom.forward_context import AttentionMetadata
from atom.kernels import registry
from atom.kernels.triton.attention_decode_rope import DecodeRope
from atom.kernels.triton.paged_attention import paged_attention as triton_paged_attention
from atom.kernels.triton.rope_tile import rope_dims_supported
from atom.layers.norm import RMSNorm
from atom.layers.rotary import RotaryEmbedding


class Attention(nn.Module):
    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        *,
        rotary_emb: RotaryEmbedding | None = None,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        sliding_window: int | None = None,
        sinks: bool = False,
        layer_idx: int = 0,
    ):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}"
            )
        if sliding_window is not None and sliding_window <= 0:
            raise ValueError(f"sliding_window must be positive or None, got {sliding_window}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        self.layer_idx = layer_idx
        self.rotary_emb = rotary_emb
        self.qk_norm_eps = qk_norm_eps
        self.q_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm else None
        self.sinks = (
            nn.Parameter(torch.zeros(num_heads, dtype=torch.float32), requires_grad=False)
            if sinks
            else None
        )
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self.k_scale: torch.Tensor | None = None
        self.v_scale: torch.Tensor | None = None

    def bind_kv_cache(
        self,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        k_scale: torch.Tensor | None = None,
        v_scale: torch.Tensor | None = None,
    ) -> None:
        """k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim], kept by reference."""
        expected = (self.num_kv_heads, self.head_dim)
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            if cache.dim() != 4 or tuple(cache.shape[2:]) != expected:
                raise ValueError(
                    f"layer {self.layer_idx}: {name} of shape {tuple(cache.shape)} is not "
                    f"[num_blocks, block_size, {expected[0]}, {expected[1]}]"
                )
        if k_cache.shape != v_cache.shape:
            raise ValueError(f"k_cache {tuple(k_cache.shape)} != v_cache {tuple(v_cache.shape)}")
        self.k_cache, self.v_cache = k_cache, v_cache
        self.k_scale, self.v_scale = k_scale, v_scale

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        attn_metadata: AttentionMetadata,
        l2_prefetch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """l2_prefetch: the weight the caller reads next (its o-projection), which the GPU
        decode kernel asks L2 for while it runs (atom.kernels.triton.l2_prefetch)."""
        if self.k_cache is None or self.v_cache is None:
            raise RuntimeError(
                f"attention layer {self.layer_idx} has no KV cache: the model runner must call "
                "bind_kv_cache() on every layer of model.attention_layers() before a forward"
            )
        num_tokens = q.shape[0]
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        slots = attn_metadata.slot_mapping
        q_norm_w = None if self.q_norm is None else self.q_norm.weight
        k_norm_w = None if self.k_norm is None else self.k_norm.weight
        if self._rope_in_decode_kernel(q, attn_metadata):
            rope = DecodeRope(
                k, v, positions, self.rotary_emb.cos_sin_cache, self.rotary_emb.is_neox, slots,
                q_norm_w, k_norm_w, self.qk_norm_eps,
            )  # fmt: skip
            out = triton_paged_attention(
                q, self.k_cache, self.v_cache, attn_metadata, self.scale, self.sliding_window,
                self.sinks, self.k_scale, self.v_scale, rope=rope, l2_prefetch=l2_prefetch,
            )  # fmt: skip
            return out.view(num_tokens, self.num_heads * self.head_dim)
        if self.rotary_emb is not None:
            q, k = kernels.fused_qk_norm_rope_cache(
                q, k, v, q_norm_w, k_norm_w, self.qk_norm_eps, positions,
                self.rotary_emb.cos_sin_cache, self.rotary_emb.is_neox,
                self.k_cache, self.v_cache, slots, self.k_scale, self.v_scale,
            )  # fmt: skip
        else:
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            kernels.reshape_and_cache(
                k, v, self.k_cache, self.v_cache, slots, self.k_scale, self.v_scale
            )
        # The cache now holds exactly k (normed, rotated: the fused op's result) and v, unless it
        # is fp8 (rounded values): then the kernels must read the cache.
        new_kv = self.k_cache.dtype == q.dtype
        out = kernels.paged_attention(
            q,
            self.k_cache,
            self.v_cache,
            attn_metadata,
            self.scale,
            sliding_window=self.sliding_window,
            sinks=self.sinks,
            k_scale=self.k_scale,
            v_scale=self.v_scale,
            k_new=k if new_kv else None,
            v_new=v if new_kv else None,
        )
        return out.view(num_tokens, self.num_heads * self.head_dim)

    def _rope_in_decode_kernel(self, q: torch.Tensor, meta: AttentionMetadata) -> bool:
        """Decode-only steps on a GPU whose paged_attention backend is the Triton one: the decode
        kernel norms and rotates q and k and writes the cache itself (attention_decode, ROPE), one
        kernel less per layer. Not under torch.compile (level 3 keeps its opaque ops), and not
        with ATOM_DECODE_ROPE=0."""
        return (
            self.rotary_emb is not None
            and q.is_cuda
            and meta.max_seqlen_q == 1
            and envs.decode_rope()
            and not torch.compiler.is_compiling()
            and rope_dims_supported(self.head_dim, self.rotary_emb.cos_sin_cache.shape[1])
            and registry.pick("paged_attention", q.device.type) is triton_paged_attention
        )

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"scale={self.scale:.4g}, sliding_window={self.sliding_window}, "
            f"sinks={self.sinks is not None}"
        )

"""The Python-launched ops (Triton kernels, torch references) as opaque custom ops for
torch.compile.

The compiled ``atom._C`` ops are ``torch.ops.atom.*`` with fake implementations, so dynamo traces
them as single graph nodes. The ops below are Python functions instead: their launchers check
shapes, read host values (``meta.max_seqlen_k`` sizes a grid) and pick kernels, which dynamo
would try to trace. While torch.compile traces (``torch.compiler.is_compiling()``), atom.kernels
calls these wrappers instead: each is one ``torch.ops.atom_py.*`` node whose fake implementation
gives the output's shape, and at run time it calls the registered implementation (whatever
``registry.pick`` chooses, as outside compiled code).

Only the metadata tensors and the host integers ``max_seqlen_q`` / ``max_seqlen_k`` cross into the
op: the host lists of AttentionMetadata (``seq_lens_cpu``, ``query_lens_cpu``) would make dynamo
guard on every value. Compiled code therefore loses only what those lists buy: the Triton
dispatch of the leading decodes of a mixed batch to the decode kernel; the engine compiles
decode-only steps, where the lists are not used.

Mutation: ``paged_attention`` and ``mla_decode`` write their result into ``out``, which the
wrapper allocates; ``concat_and_cache_mla`` writes the cache. Declaring
these as mutated arguments lets torch.compile order them correctly and write in place.
"""

from __future__ import annotations

import torch

from atom.forward_context import AttentionMetadata
from atom.kernels.registry import pick


def _meta(cu_seqlens_q, seq_lens, block_tables, slot_mapping, max_seqlen_q, max_seqlen_k):
    return AttentionMetadata(
        cu_seqlens_q=cu_seqlens_q,
        seq_lens=seq_lens,
        block_tables=block_tables,
        slot_mapping=slot_mapping,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
    )


@torch.library.custom_op("atom_py::paged_attention", mutates_args=("out",))
def _paged_attention_op(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    out: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    slot_mapping: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
    sliding_window: int,  # 0 = none
    sinks: torch.Tensor | None,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> None:
    meta = _meta(cu_seqlens_q, seq_lens, block_tables, slot_mapping, max_seqlen_q, max_seqlen_k)
    pick("paged_attention", q.device.type)(
        q, key_cache, value_cache, meta, scale, sliding_window or None, sinks, k_scale, v_scale,
        out,
    )  # fmt: skip


@_paged_attention_op.register_fake
def _(q, key_cache, value_cache, out, *args) -> None:
    return None


def paged_attention(
    q, key_cache, value_cache, meta: AttentionMetadata, scale, sliding_window=None, sinks=None,
    k_scale=None, v_scale=None, out=None,
) -> torch.Tensor:  # fmt: skip
    """atom.kernels.paged_attention as one opaque op (same arguments and result). In a
    decode-only batch every token row is the query of a sequence, which the decode kernels
    always write (zeros for a length-0 sequence), so ``out`` needs no zero fill there (one
    kernel less per layer in a compiled decode step); only token rows past cu_seqlens_q[-1],
    which the engine's decode graphs never have, would keep uninitialized values."""
    if out is None:
        out = torch.empty_like(q) if meta.max_seqlen_q == 1 else torch.zeros_like(q)
    _paged_attention_op(
        q, key_cache, value_cache, out, meta.cu_seqlens_q, meta.seq_lens, meta.block_tables,
        meta.slot_mapping, meta.max_seqlen_q, meta.max_seqlen_k, float(scale),
        int(sliding_window or 0), sinks, k_scale, v_scale,
    )  # fmt: skip
    return out


@torch.library.custom_op("atom_py::mla_decode", mutates_args=("out",))
def _mla_decode_op(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    out: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    slot_mapping: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
    kv_lora_rank: int,
    k_scale: torch.Tensor | None,
) -> None:
    meta = _meta(cu_seqlens_q, seq_lens, block_tables, slot_mapping, max_seqlen_q, max_seqlen_k)
    pick("mla_decode", q.device.type)(q, kv_cache, meta, scale, kv_lora_rank, k_scale, out)


@_mla_decode_op.register_fake
def _(q, kv_cache, out, *args) -> None:
    return None


def mla_decode(q, kv_cache, meta, scale, kv_lora_rank, k_scale=None, out=None) -> torch.Tensor:
    """atom.kernels.mla_decode as one opaque op: q [T, H, L + R] -> out [T, H, L] (decode
    batches only, every row written: see paged_attention)."""
    if out is None:
        out = q.new_empty(q.shape[0], q.shape[1], kv_lora_rank)
    _mla_decode_op(
        q, kv_cache, out, meta.cu_seqlens_q, meta.seq_lens, meta.block_tables, meta.slot_mapping,
        meta.max_seqlen_q, meta.max_seqlen_k, float(scale), int(kv_lora_rank), k_scale,
    )  # fmt: skip
    return out


@torch.library.custom_op("atom_py::concat_and_cache_mla", mutates_args=("kv_cache",))
def concat_and_cache_mla(
    kv_c: torch.Tensor,
    k_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
) -> None:
    """atom.kernels.concat_and_cache_mla as one opaque op (writes kv_cache)."""
    pick("concat_and_cache_mla", kv_c.device.type)(kv_c, k_pe, kv_cache, slot_mapping, k_scale)


@concat_and_cache_mla.register_fake
def _(kv_c, k_pe, kv_cache, slot_mapping, k_scale=None) -> None:
    return None


@torch.library.custom_op("atom_py::fused_moe", mutates_args=())
def _fused_moe_op(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str,
    b13: torch.Tensor | None,
    b2: torch.Tensor | None,
) -> torch.Tensor:
    return pick("fused_moe", hidden.device.type)(
        hidden, w13, w2, topk_weights, topk_ids, activation, b13, b2
    )


@_fused_moe_op.register_fake
def _(hidden, w13, w2, topk_weights, topk_ids, activation, b13, b2) -> torch.Tensor:
    return hidden.new_empty(hidden.shape)


def fused_moe(hidden, w13, w2, topk_weights, topk_ids, activation="silu", b13=None, b2=None):
    """atom.kernels.fused_moe as one opaque op: hidden [T, H] -> [T, H]."""
    return _fused_moe_op(hidden, w13, w2, topk_weights, topk_ids, activation, b13, b2)


# --------------------------------------------------------------------------- fused_gemv
# Functional (mutates nothing): the op always returns a fresh [M, N] tensor. The eager op may write
# into ``out`` (even when out is residual); here an ``out`` costs a copy, so compiled callers should
# use the return value (``h = fused_gemv(attn, W_o, residual=h)``) and pass no ``out``.


@torch.library.custom_op("atom_py::fused_gemv", mutates_args=())
def _fused_gemv_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    act: str,  # "" = none
    residual: torch.Tensor | None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    return pick("fused_gemv", x.device.type)(
        x, weight, bias, norm_weight=norm_weight, eps=eps, act=act or None, residual=residual,
        out_dtype=out_dtype,
    )  # fmt: skip


@_fused_gemv_op.register_fake
def _(x, weight, bias, norm_weight, eps, act, residual, out_dtype=None) -> torch.Tensor:
    return x.new_empty(
        x.shape[0], weight.shape[0], dtype=x.dtype if out_dtype is None else out_dtype
    )


def fused_gemv(
    x, weight, bias=None, norm_weight=None, eps=1e-6, act=None, residual=None, out=None,
    out_dtype=None,
) -> torch.Tensor:  # fmt: skip
    """atom.kernels.fused_gemv as one opaque op: x [M, K or 2K] -> [M, N] in out_dtype (None:
    x's dtype) (a fresh tensor, copied into ``out`` when one is given)."""
    y = _fused_gemv_op(x, weight, bias, norm_weight, float(eps), act or "", residual, out_dtype)
    return y if out is None else out.copy_(y)

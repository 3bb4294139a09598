"""The Triton backend of ``paged_attention``: input checks, then one of two kernels.

Dispatch:
- a decode-only batch (``meta.max_seqlen_q == 1``) goes to the split-K decode kernel
  (attention_decode), which spreads long contexts over many programs;
- any other batch (prefill, chunked prefill with a cached prefix, spec-decode chunks, prefill
  chunks mixed with decodes) goes to the unified kernel (attention_unified), which reads the new
  tokens' K/V from ``k_new``/``v_new`` when the layer passes them (and the cache is in q's dtype,
  so it holds exactly those values; an fp8 cache holds rounded ones), except that a leading
  run of decodes (the scheduler puts running decodes first) goes to the decode kernel in a second
  launch: in the unified kernel a decode would get a whole query tile sized for the prefill
  chunks (up to 128 rows for 4 useful ones). The run is found from the host copy
  ``meta.query_lens_cpu``, never from the device.
Both kernels compute exactly the torch reference (atom.kernels.reference.attention).
"""

from __future__ import annotations

import functools
import math

import torch

from atom.forward_context import AttentionMetadata
from atom.kernels.registry import register
from atom.kernels.triton.attention_decode import (
    DecodeConfig,
    DecodeWorkspace,
    decode_attention,
    default_num_splits,
)
from atom.kernels.triton.attention_decode_rope import DecodeRope
from atom.kernels.triton.attention_unified import UnifiedConfig, unified_attention
from atom.kernels.triton.rope_tile import rope_dims_supported

INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
MAX_HEAD_DIM = 256


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the CPU interpreter: any small number


def _check_tensor(name: str, t: torch.Tensor, dim: int, device: torch.device) -> None:
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, q on {device}")


def check_inputs(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    sinks: torch.Tensor | None,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    out: torch.Tensor,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
) -> None:
    """Raises ValueError naming the offending argument (DESIGN rule 7)."""
    dev = q.device
    _check_tensor("q", q, 3, dev)
    _check_tensor("key_cache", key_cache, 4, dev)
    _check_tensor("value_cache", value_cache, 4, dev)
    _check_tensor("out", out, 3, dev)
    if q.dtype not in INPUT_DTYPES:
        raise ValueError(f"q dtype {q.dtype} is not one of {INPUT_DTYPES}")
    if key_cache.shape != value_cache.shape:
        raise ValueError(f"key_cache {tuple(key_cache.shape)} != value_cache {value_cache.shape}")
    if key_cache.dtype != value_cache.dtype or key_cache.dtype not in (q.dtype, *FP8_DTYPES):
        raise ValueError(
            f"cache dtypes ({key_cache.dtype}, {value_cache.dtype}) must both be q's dtype "
            f"{q.dtype} or an fp8 e4m3 type"
        )
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = key_cache.shape[2]
    if key_cache.shape[3] != head_dim:
        raise ValueError(f"cache head_dim {key_cache.shape[3]} != q head_dim {head_dim}")
    if not 16 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim {head_dim} outside [16, {MAX_HEAD_DIM}]")
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    for name, t in (("q", q), ("key_cache", key_cache), ("value_cache", value_cache), ("out", out)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim, strides {t.stride()}")
    if out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(
            f"out {tuple(out.shape)} {out.dtype} must match q {tuple(q.shape)} {q.dtype}"
        )

    num_seqs = seq_lens.shape[0] if seq_lens.dim() == 1 else -1
    for name, t, shape in (
        ("cu_seqlens_q", cu_seqlens_q, (num_seqs + 1,)),
        ("seq_lens", seq_lens, (num_seqs,)),
    ):
        if t.dtype != torch.int32 or tuple(t.shape) != shape or t.device != dev:
            raise ValueError(
                f"{name} must be int32 {shape} on {dev}, got {t.dtype} {tuple(t.shape)}"
            )
    _check_tensor("block_tables", block_tables, 2, dev)
    if block_tables.dtype != torch.int32 or block_tables.shape[0] != num_seqs:
        raise ValueError(
            f"block_tables must be int32 [num_seqs={num_seqs}, max_blocks], got "
            f"{block_tables.dtype} {tuple(block_tables.shape)}"
        )
    if block_tables.shape[1] > 0 and block_tables.stride(1) != 1:
        raise ValueError(f"block_tables rows must be contiguous, strides {block_tables.stride()}")

    if not (math.isfinite(scale) and scale > 0):  # the kernels rely on scale > 0 (max commutes)
        raise ValueError(f"scale must be finite and positive, got {scale}")
    if sliding_window is not None and (int(sliding_window) != sliding_window or sliding_window < 1):
        raise ValueError(f"sliding_window must be None or an integer >= 1, got {sliding_window}")
    if sinks is not None:
        _check_tensor("sinks", sinks, 1, dev)
        if sinks.shape[0] != num_heads or not sinks.dtype.is_floating_point:
            raise ValueError(f"sinks must be float [{num_heads}], got {sinks.dtype} {sinks.shape}")
    for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if s is not None and (s.numel() != 1 or not s.dtype.is_floating_point or s.device != dev):
            raise ValueError(f"{name} must be a one-element float tensor on {dev}, got {s}")
    if (k_new is None) != (v_new is None):
        raise ValueError("k_new and v_new must be given together")
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        if t is None:
            continue
        _check_tensor(name, t, 3, dev)
        expected = (q.shape[0], num_kv_heads, head_dim)
        if tuple(t.shape) != expected or t.dtype != q.dtype or t.stride(-1) != 1:
            raise ValueError(
                f"{name} must be {q.dtype} {expected} (q's rows) with a contiguous last dim, "
                f"got {t.dtype} {tuple(t.shape)} strides {t.stride()}"
            )


def check_rope(rope: DecodeRope, q: torch.Tensor, key_cache: torch.Tensor, meta) -> None:
    """ValueError unless the decode kernel can do rope's work: a decode-only batch, raw k/v like
    the cache's heads, one position and slot per row, an fp32 cos/sin cache whose even rotary
    dim fits the head, norm weights (both or neither) of the head dim."""
    if meta.max_seqlen_q != 1:
        raise ValueError(f"rope needs a decode-only batch, got max_seqlen_q={meta.max_seqlen_q}")
    num_tokens, _, head_dim = q.shape
    expected = (num_tokens, key_cache.shape[2], head_dim)
    for name, t in (("rope.k", rope.k), ("rope.v", rope.v)):
        if tuple(t.shape) != expected or t.dtype != q.dtype or t.stride(-1) != 1:
            raise ValueError(f"{name} must be {q.dtype} {expected} with a contiguous last dim, "
                             f"got {t.dtype} {tuple(t.shape)} strides {t.stride()}")  # fmt: skip
    for name, t in (("rope.positions", rope.positions), ("rope.slot_mapping", rope.slot_mapping)):
        if t.dim() != 1 or t.shape[0] < num_tokens or t.dtype.is_floating_point:
            raise ValueError(f"{name} must be integer [>= {num_tokens}], got {t.dtype} {t.shape}")
    cs = rope.cos_sin_cache
    if cs.dim() != 2 or cs.dtype != torch.float32 or cs.stride(1) != 1:
        raise ValueError(f"rope.cos_sin_cache must be fp32 [positions, rot_dim], got {cs.dtype} "
                         f"{tuple(cs.shape)}")  # fmt: skip
    if not rope_dims_supported(head_dim, cs.shape[1]):
        raise ValueError(f"rotary dim {cs.shape[1]} must be even and at most head_dim {head_dim}")
    if (rope.q_norm_weight is None) != (rope.k_norm_weight is None):
        raise ValueError("rope.q_norm_weight and rope.k_norm_weight must be given together")
    for name, w in (("rope.q_norm_weight", rope.q_norm_weight),
                    ("rope.k_norm_weight", rope.k_norm_weight)):  # fmt: skip
        if w is not None and tuple(w.shape) != (head_dim,):
            raise ValueError(f"{name} must be [{head_dim}], got {tuple(w.shape)}")


def _leading_decodes(meta: AttentionMetadata) -> tuple[int, int]:
    """(number of leading sequences with exactly one new token, their longest context), from the
    host copies; (0, 0) when the metadata has none. A few microseconds per call, and only in steps
    that are not decode-only (no memo: a runner may refill one metadata object in place)."""
    lens = meta.query_lens_cpu
    if lens is None or meta.seq_lens_cpu is None:
        return 0, 0
    count = next((i for i, q_len in enumerate(lens) if q_len != 1), len(lens))
    return count, max(meta.seq_lens_cpu[:count], default=0)


def _cached_prefix(meta: AttentionMetadata, first_seq: int) -> bool:
    """Whether a sequence from first_seq on has new tokens after keys already in the cache (from
    the host copies; True when there are none)."""
    if meta.query_lens_cpu is None or meta.seq_lens_cpu is None:
        return True
    lens = zip(meta.query_lens_cpu[first_seq:], meta.seq_lens_cpu[first_seq:])
    return any(0 < q_len < seq_len for q_len, seq_len in lens)


def _decode_splits(num_seqs, num_kv_heads, longest, sliding_window, device) -> int:
    visible = longest if sliding_window is None else min(longest, sliding_window)
    return default_num_splits(num_seqs, num_kv_heads, visible, _num_sms(device))


@register("paged_attention", "triton", devices=("cuda",))
def paged_attention(
    q: torch.Tensor,  # [num_tokens, Hq, D] fp16 / bf16 / fp32
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D] q's dtype or fp8 e4m3 (x / k_scale)
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,  # [Hq] logits
    k_scale: torch.Tensor | None = None,  # one-element fp32 tensors (device values: no sync)
    v_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    unified_config: UnifiedConfig | None = None,
    decode_config: DecodeConfig | None = None,
    num_splits: int | None = None,
    k_new: torch.Tensor | None = None,  # [num_tokens, Hkv, D] q's dtype: this step's keys
    v_new: torch.Tensor | None = None,  # and values as written to the cache (rows of q's rows)
    new_kv_with_prefix: bool = False,
    rope: DecodeRope | None = None,
    l2_prefetch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Returns out: [num_tokens, Hq, D] in q's dtype; padding rows are left as they were.

    unified_config, decode_config and num_splits override the tuned defaults (benchmarks and
    tests use them). k_new/v_new (both or neither): with a cache in q's dtype, prefill chunks
    read their new keys/values from these contiguous rows instead of the paged cache (the same
    values, so the same result); decodes and fp8 caches ignore them, and so do steps where a
    sequence continues a cached prefix, unless new_kv_with_prefix (measured slower; see below).
    rope (decode-only batches): q and rope.k are raw, and the decode kernel does the work of
    fused_qk_norm_rope_cache itself (norm, RoPE, cache write); see check_rope.
    l2_prefetch (decode-only batches): a weight the next kernel reads, which the decode kernel
    asks L2 for meanwhile (atom.kernels.triton.l2_prefetch).
    """
    if out is None:
        # A decode-only batch writes every token row (zeros for a length-0 sequence), so its
        # output needs no zero fill (one kernel less per layer in a decode step).
        decode_only = meta.max_seqlen_q == 1 and q.shape[0] == meta.num_seqs
        out = torch.empty_like(q) if decode_only else torch.zeros_like(q)
    check_inputs(
        q, key_cache, value_cache, meta.cu_seqlens_q, meta.seq_lens, meta.block_tables, scale,
        sliding_window, sinks, k_scale, v_scale, out, k_new, v_new,
    )  # fmt: skip
    if rope is not None:
        check_rope(rope, q, key_cache, meta)
    if key_cache.dtype != q.dtype:  # fp8: the cache holds rounded values, read those
        k_new = v_new = None
    k_scale = None if k_scale is None else k_scale.reshape(1)
    v_scale = None if v_scale is None else v_scale.reshape(1)
    cu, seq_lens, tables = meta.cu_seqlens_q, meta.seq_lens, meta.block_tables
    num_kv_heads = key_cache.shape[2]
    common = (scale, sliding_window, sinks, k_scale, v_scale)
    if meta.max_seqlen_q == 1:
        if num_splits is None:
            num_splits = _decode_splits(
                meta.num_seqs, num_kv_heads, meta.max_seqlen_k, sliding_window, q.device
            )
        return decode_attention(
            q, key_cache, value_cache, out, cu, seq_lens, tables, *common, num_splits,
            config=decode_config, rope=rope, l2_prefetch=l2_prefetch,
        )  # fmt: skip
    num_decodes, longest = _leading_decodes(meta)
    if num_decodes:
        splits = num_splits or _decode_splits(
            num_decodes, num_kv_heads, longest, sliding_window, q.device
        )
        decode_attention(
            q, key_cache, value_cache, out, cu[: num_decodes + 1], seq_lens[:num_decodes],
            tables[:num_decodes], *common, splits, config=decode_config,
        )  # fmt: skip
    if k_new is not None and not new_kv_with_prefix and _cached_prefix(meta, num_decodes):
        # Measured on the H100 (1024 new tokens after 3072 cached, d128): the paged read alone
        # ran at 304 TFLOP/s, both sources in one kernel at 275 (its 128-key steps spill). The
        # contiguous read pays off in prefills without a prefix (389 vs 339 at 4096 tokens).
        k_new = v_new = None
    return unified_attention(
        q, key_cache, value_cache, out, cu, seq_lens, tables, meta.max_seqlen_q, *common,
        config=unified_config, num_tokens=q.shape[0] - num_decodes, k_new=k_new, v_new=v_new,
        cached_prefix=k_new is None or _cached_prefix(meta, num_decodes), first_seq=num_decodes,
    )  # fmt: skip


def paged_decode_attention(
    q: torch.Tensor,  # [num_tokens, Hq, D]; row cu_seqlens_q[b] is sequence b's new token
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,  # [num_seqs + 1] int32, every q_len 0 or 1
    seq_lens: torch.Tensor,  # [num_seqs] int32; 0 for padding sequences of a captured batch
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    scale: float,
    out: torch.Tensor,  # [num_tokens, Hq, D], persistent under CUDA graphs
    num_splits: int,  # fixed per captured graph (see default_num_splits)
    workspace: DecodeWorkspace
    | None = None,  # required (persistent) under CUDA graphs if splits > 1
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    config: DecodeConfig | None = None,
) -> torch.Tensor:
    """The decode entry for CUDA graphs: the grid is (num_seqs, Hkv, num_splits) from shapes and
    the fixed num_splits, no host reads of device data. See attention_decode for what must stay
    persistent between capture and replay."""
    check_inputs(
        q, key_cache, value_cache, cu_seqlens_q, seq_lens, block_tables, scale,
        sliding_window, sinks, k_scale, v_scale, out,
    )  # fmt: skip
    return decode_attention(
        q, key_cache, value_cache, out, cu_seqlens_q, seq_lens, block_tables, scale,
        sliding_window, sinks,
        None if k_scale is None else k_scale.reshape(1),
        None if v_scale is None else v_scale.reshape(1),
        num_splits, workspace=workspace, config=config,
    )  # fmt: skip

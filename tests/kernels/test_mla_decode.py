"""The Triton MLA decode and latent cache-write kernels against their torch references
(atom/kernels/reference/mla.py), under TRITON_INTERPRET=1 on the CPU and for real on a GPU.

Batches come from make_paged_batch with one KV head of width L + R (the latent cache): unused
cache slots and blocks hold NaN, unused block-table entries a huge block id, padding query rows
NaN, padding output rows a sentinel that must survive (DESIGN rule 11). Tolerance (rule 10): the
kernel may be at most twice as far from the fp32 reference as plain torch at the kernel's
precision, plus one output ulp.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atom.forward_context import AttentionMetadata
from atom.kernels.reference.attention import gather_kv
from atom.kernels.reference.attention import paged_attention as reference_attention
from atom.kernels.reference.mla import concat_and_cache_mla as reference_cache_write
from atom.kernels.reference.mla import mla_decode as reference_mla

triton_ok = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not triton_ok, reason="needs a GPU or TRITON_INTERPRET=1")

if triton_ok:
    from atom.kernels.triton.attention_decode import DecodeWorkspace
    from atom.kernels.triton.mla_cache import concat_and_cache_mla
    from atom.kernels.triton.mla_decode import MlaDecodeConfig, mla_decode, mla_decode_attention
    from atom.kernels.triton.paged_testing import SENTINEL, make_paged_batch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP8 = torch.float8_e4m3fn


def latent_batch(query_lens, seq_lens, heads, lora, rope, block_size, dtype, seed=0, **kw):
    return make_paged_batch(
        query_lens, seq_lens, heads, 1, lora + rope, block_size, dtype, seed=seed,
        device=DEVICE, **kw,
    )  # fmt: skip


def mla_at_precision(batch, scale: float, lora: int, dtype: torch.dtype) -> torch.Tensor:
    """Plain torch MLA as a ``dtype`` kernel computes it: q and the latents in dtype, scores and
    softmax in fp32, probabilities rounded to dtype before P @ C, output rounded to dtype."""
    meta, q, n = batch.meta, batch.q, batch.num_real_tokens
    out = torch.empty(n, q.shape[1], lora, dtype=dtype, device=q.device)
    cu = meta.cu_seqlens_q.tolist()
    for b, seq_len in enumerate(meta.seq_lens.tolist()):
        start, end = cu[b], cu[b + 1]
        if end == start:
            continue
        kv = gather_kv(batch.key_cache, meta.block_tables[b], seq_len, batch.k_scale)[:, 0]
        kv = kv.to(dtype).float()
        probs = torch.softmax(torch.einsum("lhd,sd->hls", q[start:end].float(), kv) * scale, -1)
        probs = probs.to(dtype).float()
        out[start:end] = torch.einsum("hls,sd->lhd", probs, kv[:, :lora]).to(dtype)
    return out


def check(batch, lora, dtype, scale=0.3, **kernel_kwargs):
    """Runs the Triton kernel and applies rule 10 against the fp32 reference."""
    n = batch.num_real_tokens
    out = torch.full((*batch.q.shape[:2], lora), SENTINEL, dtype=dtype, device=DEVICE)
    got = mla_decode(
        batch.q, batch.key_cache, batch.meta, scale, lora, k_scale=batch.k_scale, out=out,
        **kernel_kwargs,
    )  # fmt: skip
    assert got is out
    ref = reference_mla(batch.q.float(), batch.key_cache, batch.meta, scale, lora, batch.k_scale)
    base = mla_at_precision(batch, scale, lora, dtype)
    if n == 0:  # nothing to attend: only the padding rows to check
        assert (got == SENTINEL).all()
        return got
    kernel_err = (got[:n].float() - ref[:n]).abs().max().item()
    base_err = (base.float() - ref[:n]).abs().max().item()
    ulp = max(1.0, ref[:n].abs().max().item()) * (
        1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
    )
    assert not got[:n].isnan().any(), "NaN in the output (a poisoned slot was read)"
    assert kernel_err <= 2 * base_err + ulp, f"kernel err {kernel_err:.3g} vs torch {base_err:.3g}"
    assert (got[n:] == SENTINEL).all(), "padding rows were written"
    return got


# (heads, L, R): padded head blocks, L and R that are not powers of two, R wider than 16.
SHAPES = [(5, 24, 8), (17, 16, 8), (3, 40, 24)]


@pytest.mark.parametrize("num_splits", [1, 3, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_decode_matches_reference(shape, dtype, num_splits):
    heads, lora, rope = shape
    # A sequence with no new token, a 1-token context, one ending mid-block, a long one.
    batch = latent_batch(
        [1, 0, 1, 1, 1], [37, 5, 1, 83, 16], heads, lora, rope, block_size=5, dtype=dtype,
        num_padding_tokens=2, seed=heads,
    )  # fmt: skip
    check(batch, lora, dtype, num_splits=num_splits)


@pytest.mark.parametrize(
    "config", [MlaDecodeConfig(16, 16, 4, 1), MlaDecodeConfig(32, 64, 4, 2)] if triton_ok else []
)
@pytest.mark.parametrize("block_size", [1, 16])
def test_decode_configs_and_block_sizes(config, block_size):
    batch = latent_batch([1, 1, 1], [70, 9, 33], 20, 32, 16, block_size, torch.bfloat16, seed=5)
    check(batch, 32, torch.bfloat16, config=config, num_splits=2)


def test_decode_fp8_cache():
    """An fp8 latent cache with a per-tensor scale (folded into scores and output)."""
    batch = latent_batch(
        [1, 1, 1], [29, 64, 3], 6, 32, 16, 8, torch.bfloat16, cache_dtype=FP8, seed=3
    )
    assert batch.k_scale is not None
    check(batch, 32, torch.bfloat16, num_splits=3)


def test_graph_entry_padding_sequences_and_workspace():
    """The CUDA-graph entry: seq_len 0 sequences (graph padding) write zeros; a persistent
    workspace larger than the batch is reused; a workspace that does not fit is an error."""
    lora, rope, heads = 16, 16, 4
    batch = latent_batch([1, 1, 1], [21, 40, 7], heads, lora, rope, 4, torch.float32, seed=8)
    meta = batch.meta
    seq_lens = meta.seq_lens.clone()
    seq_lens[1] = 0  # a padding sequence of a captured batch
    ws = DecodeWorkspace(8, heads, lora, 4, DEVICE)
    out = torch.full((3, heads, lora), SENTINEL, device=DEVICE)
    mla_decode_attention(
        batch.q, batch.key_cache, out, meta.cu_seqlens_q, seq_lens, meta.block_tables, 0.5,
        lora, num_splits=4, workspace=ws,
    )  # fmt: skip
    assert (out[1] == 0).all()
    padded = AttentionMetadata(
        meta.cu_seqlens_q, seq_lens, meta.block_tables, meta.slot_mapping, 1, 40, [21, 0, 7]
    )
    ref = reference_mla(batch.q, batch.key_cache, padded, 0.5, lora)
    torch.testing.assert_close(out[[0, 2]], ref[[0, 2]], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="workspace"):
        mla_decode_attention(
            batch.q, batch.key_cache, out, meta.cu_seqlens_q, seq_lens, meta.block_tables, 0.5,
            lora, num_splits=2, workspace=ws,
        )  # fmt: skip


def test_input_checks():
    batch = latent_batch([1, 1], [9, 4], 4, 16, 16, 4, torch.float32)
    q, cache, meta = batch.q, batch.key_cache, batch.meta
    with pytest.raises(ValueError, match="max_seqlen_q"):
        prefill = AttentionMetadata(
            meta.cu_seqlens_q, meta.seq_lens, meta.block_tables, meta.slot_mapping, 2, 9
        )
        mla_decode(q, cache, prefill, 0.3, 16)
    with pytest.raises(ValueError, match="kv_cache"):
        mla_decode(q, cache[..., :30], meta, 0.3, 16)
    with pytest.raises(ValueError, match="kv_lora_rank"):
        mla_decode(q, cache, meta, 0.3, 32)
    with pytest.raises(ValueError, match="kv_cache dtype"):
        mla_decode(q.half(), cache, meta, 0.3, 16)
    with pytest.raises(ValueError, match="block_tables"):
        bad = AttentionMetadata(
            meta.cu_seqlens_q, meta.seq_lens, meta.block_tables.long(), meta.slot_mapping, 1, 9
        )
        mla_decode(q, cache, bad, 0.3, 16)
    with pytest.raises(ValueError, match="num_splits"):
        mla_decode(q, cache, meta, 0.3, 16, num_splits=65)


def test_reference_is_absorbed_mla():
    """The reference's latent-space attention equals MLA computed the naive way: per-head keys
    [W_UK c | k_pe] and values W_UV c through the paged-attention reference, when q_lat =
    W_UK^T q_nope and the output is multiplied by W_UV (the identity the decode path rests on).
    Covers several new tokens per sequence (causal), which the reference also accepts."""
    g = torch.Generator().manual_seed(0)
    heads, lora, rope, nope, v_dim, bs = 3, 12, 4, 8, 6, 4
    batch = make_paged_batch([3, 1], [10, 7], heads, 1, lora + rope, bs, torch.float32, seed=2)
    w_uk = torch.randn(heads, nope, lora, generator=g)
    w_uv = torch.randn(heads, v_dim, lora, generator=g)
    n = batch.num_real_tokens
    q_nope = torch.randn(n, heads, nope, generator=g)
    q_pe = batch.q[:n, :, lora:]
    q_lat = torch.einsum("thn,hnl->thl", q_nope, w_uk)
    absorbed = reference_mla(torch.cat([q_lat, q_pe], -1), batch.key_cache, batch.meta, 0.2, lora)
    absorbed = torch.einsum("thl,hvl->thv", absorbed, w_uv)

    latent = batch.key_cache[:, :, 0]  # [blocks, bs, L + R]
    k = torch.cat(
        [torch.einsum("hnl,bsl->bshn", w_uk, latent[..., :lora]),
         latent[..., None, lora:].expand(-1, -1, heads, -1)], -1,
    )  # fmt: skip
    v = torch.einsum("hvl,bsl->bshv", w_uv, latent[..., :lora])
    v = torch.cat([v, torch.zeros(*v.shape[:3], nope + rope - v_dim, dtype=v.dtype)], -1)
    naive = reference_attention(torch.cat([q_nope, q_pe], -1), k, v, batch.meta, 0.2)
    assert naive[..., :v_dim].abs().max() > 1.0
    torch.testing.assert_close(absorbed, naive[..., :v_dim], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_write_matches_reference(dtype):
    lora, rope, tokens = 24, 8, 11
    g = torch.Generator().manual_seed(1)
    kv_c = torch.randn(tokens, lora + 5, generator=g).to(dtype)[:, :lora]  # a strided view
    k_pe = torch.randn(tokens, rope, generator=g).to(dtype)
    slots = torch.tensor([3, 17, -1, 0, 5, 30, 31, -1, 8, 12, 2, 99])  # longer than T (padding)
    ref = torch.full((8, 4, 1, lora + rope), float("nan"), dtype=dtype)
    ours = ref.clone().to(DEVICE)
    reference_cache_write(kv_c, k_pe, ref, slots)
    concat_and_cache_mla(kv_c.to(DEVICE), k_pe.to(DEVICE), ours, slots.to(DEVICE))
    assert torch.equal(ours.cpu().nan_to_num(123.0), ref.nan_to_num(123.0))
    assert ref.view(-1, lora + rope)[17, :lora].equal(kv_c[1])
    with pytest.raises(ValueError, match="kv_cache"):
        concat_and_cache_mla(kv_c, k_pe, ours[..., :-1], slots)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.data(),
    heads=st.integers(1, 20),
    lora=st.sampled_from([16, 20, 48]),
    rope=st.sampled_from([8, 16, 24]),
    block_size=st.sampled_from([1, 3, 16]),
    num_splits=st.integers(1, 5),
)
def test_decode_hypothesis(data, heads, lora, rope, block_size, num_splits):
    num_seqs = data.draw(st.integers(1, 4))
    seq_lens = data.draw(st.lists(st.integers(1, 60), min_size=num_seqs, max_size=num_seqs))
    query_lens = data.draw(st.lists(st.integers(0, 1), min_size=num_seqs, max_size=num_seqs))
    batch = latent_batch(
        query_lens, seq_lens, heads, lora, rope, block_size, torch.float32,
        num_padding_tokens=data.draw(st.integers(0, 2)), seed=data.draw(st.integers(0, 99)),
    )  # fmt: skip
    check(batch, lora, torch.float32, num_splits=num_splits)


# ------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, FP8])
def test_gpu_deepseek_v3_shapes(cache_dtype):
    """DeepSeek-V3's MLA (128 heads, L 512, R 64) at a few batch shapes, bf16 and fp8 caches."""
    seq_lens = [1, 300, 1027, 4096, 77, 2048, 513, 16]
    batch = latent_batch(
        [1] * len(seq_lens), seq_lens, 128, 512, 64, 16, torch.bfloat16,
        cache_dtype=cache_dtype, num_padding_tokens=3, seed=11,
    )  # fmt: skip
    for num_splits in (None, 1, 8):
        check(batch, 512, torch.bfloat16, scale=0.1352, num_splits=num_splits)


@pytest.mark.gpu
def test_gpu_fp8_cache_write_matches_reference():
    lora, rope, tokens = 512, 64, 37
    kv_c = torch.randn(tokens, lora, device="cuda", dtype=torch.bfloat16)
    k_pe = torch.randn(tokens, rope, device="cuda", dtype=torch.bfloat16)
    slots = torch.randperm(64, device="cuda")[:tokens]
    slots[5] = -1
    scale = torch.tensor([0.02], device="cuda")
    ours = torch.zeros(4, 16, 1, lora + rope, dtype=FP8, device="cuda")
    ref = ours.clone()
    reference_cache_write(kv_c, k_pe, ref, slots, scale)
    concat_and_cache_mla(kv_c, k_pe, ours, slots, scale)
    assert torch.equal(ours.view(torch.uint8), ref.view(torch.uint8))


@pytest.mark.gpu
def test_gpu_cuda_graph_replay():
    """Captured once with a persistent workspace, replayed with new contents of q, the cache,
    seq_lens and block tables: equals the reference each time."""
    lora, rope, heads, splits = 512, 64, 16, 4
    first = latent_batch([1] * 4, [100, 3000, 17, 900], heads, lora, rope, 16, torch.bfloat16)
    second = latent_batch([1] * 4, [2000, 5, 640, 1100], heads, lora, rope, 16, torch.bfloat16, 1)
    q, meta = first.q.clone(), first.meta
    blocks = max(first.key_cache.shape[0], second.key_cache.shape[0])
    cache = torch.full((blocks, *first.key_cache.shape[1:]), float("nan"), device="cuda")
    cache = cache.to(torch.bfloat16)
    cu, lens = meta.cu_seqlens_q.clone(), meta.seq_lens.clone()
    width = max(first.meta.block_tables.shape[1], second.meta.block_tables.shape[1])
    tables = torch.zeros(4, width, dtype=torch.int32, device="cuda")
    tables[:, : meta.block_tables.shape[1]] = meta.block_tables
    out = torch.zeros(q.shape[0], heads, lora, dtype=q.dtype, device="cuda")
    ws = DecodeWorkspace(4, heads, lora, splits, "cuda")

    def run():
        mla_decode_attention(q, cache, out, cu, lens, tables, 0.1, lora, splits, workspace=ws)

    run()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for batch in (first, second):
        q.copy_(batch.q)
        cache[: batch.key_cache.shape[0]] = batch.key_cache
        lens.copy_(batch.meta.seq_lens)
        tables.zero_()
        tables[:, : batch.meta.block_tables.shape[1]] = batch.meta.block_tables
        graph.replay()
        ref = reference_mla(batch.q.float(), batch.key_cache, batch.meta, 0.1, lora)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)

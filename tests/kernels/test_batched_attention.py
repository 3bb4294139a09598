"""The CPU's batched decode attention (atom.kernels.batched_attention) against the torch reference:
awkward shapes drawn by hypothesis, poisoned caches and block tables (paged_testing), sliding
windows, sinks, fp8 caches, idle sequences, graph-style padding (length-0 sequences), and
non-decode batches handed to the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atom.forward_context import AttentionMetadata
from atom.kernels import batched_attention, registry
from atom.kernels.reference.attention import paged_attention as reference
from atom.kernels.triton.paged_testing import SENTINEL, make_paged_batch

FP8 = torch.float8_e4m3fn


def run_both(batch, scale=0.3, window=None, sinks=None):
    outs = []
    for fn in (reference, batched_attention.paged_attention):
        out = torch.full_like(batch.q, SENTINEL)
        fn(batch.q, batch.key_cache, batch.value_cache, batch.meta, scale, window, sinks,
           batch.k_scale, batch.v_scale, out)  # fmt: skip
        outs.append(out)
    return outs


@settings(max_examples=40, deadline=None)
@given(
    lens=st.lists(st.integers(0, 45), min_size=1, max_size=7),
    idle=st.lists(st.booleans(), min_size=7, max_size=7),
    kv_heads=st.integers(1, 3),
    group=st.integers(1, 3),
    head_dim=st.sampled_from([16, 24, 40]),
    block_size=st.sampled_from([1, 3, 4, 16]),
    window=st.one_of(st.none(), st.integers(1, 20)),
    with_sinks=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    fp8=st.booleans(),
    padding=st.integers(0, 2),
)
def test_decode_batches_match_the_reference(
    lens, idle, kv_heads, group, head_dim, block_size, window, with_sinks, dtype, fp8, padding
):
    # A sequence with no cached token has no query; others may be idle (q_len 0) too.
    query_lens = [0 if n == 0 or idle[i] else 1 for i, n in enumerate(lens)]
    batch = make_paged_batch(
        query_lens, lens, kv_heads * group, kv_heads, head_dim, block_size, dtype,
        cache_dtype=FP8 if fp8 else None, num_padding_tokens=padding,
    )  # fmt: skip
    sinks = torch.randn(kv_heads * group) if with_sinks else None
    want, got = run_both(batch, window=window, sinks=sinks)
    tol = {} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-2}
    torch.testing.assert_close(got, want, equal_nan=False, **tol)


def test_length_zero_sequences_with_a_query_give_zeros():
    """Padding rows of a captured batch: one query token, no cached keys."""
    torch.manual_seed(0)
    k_cache = torch.full((4, 4, 2, 16), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    k_cache[1], v_cache[1] = torch.randn(4, 2, 16), torch.randn(4, 2, 16)
    meta = AttentionMetadata(
        cu_seqlens_q=torch.arange(4, dtype=torch.int32),
        seq_lens=torch.tensor([3, 0, 0], dtype=torch.int32),
        block_tables=torch.tensor([[1], [0], [2**31 - 1]], dtype=torch.int32),
        slot_mapping=torch.tensor([6, -1, -1]),
        max_seqlen_q=1,
        max_seqlen_k=64,  # an over-estimate, as in a captured graph
    )
    q = torch.randn(3, 4, 16)
    for sinks in (None, torch.randn(4)):
        got = batched_attention.paged_attention(q, k_cache, v_cache, meta, 0.25, sinks=sinks)
        want = reference(q, k_cache, v_cache, meta, 0.25, sinks=sinks)
        torch.testing.assert_close(got, want)
        assert torch.equal(got[1:], torch.zeros_like(got[1:]))


def test_large_batches_are_chunked(monkeypatch):
    monkeypatch.setattr(batched_attention, "CHUNK_ELEMENTS", 1)  # one sequence per chunk
    batch = make_paged_batch([1, 1, 0, 1], [9, 30, 4, 1], 4, 2, 16, 4, torch.float32)
    want, got = run_both(batch)
    torch.testing.assert_close(got, want)


def test_prefill_and_mixed_batches_go_to_the_reference():
    batch = make_paged_batch([1, 7, 13, 0], [1, 17, 83, 5], 4, 2, 16, 8, torch.float32,
                             num_padding_tokens=2)  # fmt: skip
    want, got = run_both(batch, window=9)
    assert torch.equal(got, want)


@pytest.mark.parametrize("device", ["cpu"])
def test_registered_for_the_cpu_ahead_of_the_reference(device):
    assert registry.available("paged_attention")["batched"] == frozenset({"cpu"})
    assert registry.pick("paged_attention", device) is batched_attention.paged_attention

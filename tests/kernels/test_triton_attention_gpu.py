"""Triton paged attention on a GPU at realistic sizes (Llama-3-8B and GPT-OSS attention shapes),
against the torch reference with the rule-10 tolerance of test_triton_attention, plus CUDA-graph
capture/replay of the decode entry. Run on the device machine: tools/gpu/attention.sh."""

from __future__ import annotations

import random

import pytest
import torch

from atom.kernels.reference.attention import paged_attention as reference_attention
from atom.kernels.triton import DecodeWorkspace, default_num_splits, paged_decode_attention
from atom.kernels.triton.paged_attention import paged_attention
from atom.kernels.triton.paged_testing import (
    check_against_reference,
    make_paged_batch,
    new_kv_views,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU"),
]
FP8 = torch.float8_e4m3fnuz if getattr(torch.version, "hip", None) else torch.float8_e4m3fn


def _lens(seed: int, num_decodes: int, prefills: list[tuple[int, int]], max_ctx: int):
    """num_decodes decodes with random contexts, then (query_len, prefix_len) prefill chunks."""
    rng = random.Random(seed)
    query_lens = [1] * num_decodes + [q for q, _ in prefills]
    seq_lens = [rng.randint(1, max_ctx) for _ in range(num_decodes)] + [q + p for q, p in prefills]
    return query_lens, seq_lens


CASES = {
    # name: (Hq, Hkv, head_dim, block_size, window, sinks)
    "llama3-8b": (32, 8, 128, 16, None, False),
    "qwen3-like-d128-bs32": (16, 4, 128, 32, None, False),
    "gpt-oss": (64, 8, 64, 16, 128, True),
    "d256": (8, 2, 256, 16, None, False),
    "d80-mha": (8, 8, 80, 16, None, False),
}


BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
COMBOS = [  # (case, q dtype, cache dtype)
    ("llama3-8b", BF16, None), ("llama3-8b", BF16, FP8), ("llama3-8b", FP16, None),
    ("llama3-8b", FP32, None), ("qwen3-like-d128-bs32", BF16, None), ("gpt-oss", BF16, None),
    ("gpt-oss", BF16, FP8), ("gpt-oss", FP32, None), ("d256", BF16, None), ("d80-mha", FP16, None),
]  # fmt: skip


@pytest.mark.parametrize("case, dtype, cache_dtype", COMBOS)
@pytest.mark.parametrize("kind", ["mixed", "prefill", "decode"])
def test_gpu_matches_reference(case, dtype, cache_dtype, kind):
    num_heads, num_kv_heads, head_dim, block_size, window, use_sinks = CASES[case]
    lens = {
        "mixed": _lens(0, 24, [(517, 0), (300, 1500), (7, 3000)], 4096),
        "prefill": _lens(1, 0, [(2048, 0), (1000, 2000)], 0),
        "decode": _lens(2, 64, [], 4096),
    }[kind]
    batch = make_paged_batch(*lens, num_heads, num_kv_heads, head_dim, block_size, dtype,
                             cache_dtype=cache_dtype, num_padding_tokens=5, device="cuda")  # fmt: skip
    sinks = torch.randn(num_heads, device="cuda") * 2 if use_sinks else None
    check_against_reference(batch, dtype, scale=head_dim**-0.5, window=window, sinks=sinks)


@pytest.mark.parametrize("case, dtype", [("llama3-8b", BF16), ("gpt-oss", BF16), ("d256", BF16),
                                         ("d80-mha", FP16), ("llama3-8b", FP32)])  # fmt: skip
@pytest.mark.parametrize("tma", ["1", "0"])
@pytest.mark.parametrize("with_prefix", [False, True])
def test_gpu_new_kv_matches_reference(case, dtype, tma, with_prefix, monkeypatch):
    """The prefill kernel reading this step's K/V from k_new/v_new (TMA descriptors where the
    layout allows, ATOM_ATTN_TMA=0 for pointer loads), with NaN in k_new's padding rows and in
    the cache's copy of the new rows; with_prefix: sequences continuing a cached prefix (the
    two-source kernel) after leading decodes."""
    monkeypatch.setenv("ATOM_ATTN_TMA", tma)
    num_heads, num_kv_heads, head_dim, block_size, window, use_sinks = CASES[case]
    prefills = [(300, 1500), (7, 3000), (517, 0)] if with_prefix else [(2048, 0), (517, 0)]
    query_lens, seq_lens = _lens(6, 5 if with_prefix else 0, prefills, 4096)
    batch = make_paged_batch(query_lens, seq_lens, num_heads, num_kv_heads, head_dim, block_size,
                             dtype, num_padding_tokens=5, device="cuda")  # fmt: skip
    leading = 5 if with_prefix else 0
    k_new, v_new, slots = new_kv_views(batch, unread_seqs=leading)
    sinks = torch.randn(num_heads, device="cuda") * 2 if use_sinks else None
    kwargs = dict(k_new=k_new, v_new=v_new, new_kv_with_prefix=True)
    clean = check_against_reference(batch, dtype, scale=head_dim**-0.5, window=window,
                                    sinks=sinks, **kwargs)  # fmt: skip
    rows = slots[slots >= 0]
    for cache in (batch.key_cache, batch.value_cache):
        cache.view(-1, *cache.shape[2:])[rows] = float("nan")
    poisoned = paged_attention(batch.q, batch.key_cache, batch.value_cache, batch.meta,
                               head_dim**-0.5, window, sinks, **kwargs)  # fmt: skip
    n = batch.num_real_tokens
    torch.testing.assert_close(poisoned[:n], clean[:n], rtol=0, atol=0)


@pytest.mark.parametrize("num_splits", [1, 8, 32])
def test_gpu_decode_splits(num_splits):
    batch = make_paged_batch(*_lens(3, 16, [], 8192), 32, 8, 128, 16, torch.bfloat16,
                             device="cuda")  # fmt: skip
    check_against_reference(batch, torch.bfloat16, scale=128**-0.5, num_splits=num_splits)


def test_gpu_cuda_graph_replay_matches_eager():
    """Capture the decode entry once with persistent buffers, refill them with a new batch (other
    lengths, padding sequences with seq_len 0), replay, and compare with an eager call."""
    max_seqs, num_heads, num_kv_heads, head_dim, block_size = 32, 32, 8, 128, 16
    num_splits = default_num_splits(max_seqs, num_kv_heads, 4096, 132)
    first = make_paged_batch(*_lens(4, max_seqs, [], 4096), num_heads, num_kv_heads, head_dim,
                             block_size, torch.bfloat16, spare_blocks=4096, device="cuda")  # fmt: skip
    key_cache, value_cache, m = first.key_cache, first.value_cache, first.meta
    q, out = first.q.clone(), torch.zeros_like(first.q)
    cu = torch.arange(max_seqs + 1, dtype=torch.int32, device="cuda")
    seq_lens, tables = m.seq_lens.clone(), m.block_tables.clone()
    workspace = DecodeWorkspace(max_seqs, num_heads, head_dim, num_splits, "cuda")

    def step():
        paged_decode_attention(q, key_cache, value_cache, cu, seq_lens, tables, head_dim**-0.5,
                               out, num_splits=num_splits, workspace=workspace)  # fmt: skip

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    # New contents: 20 real sequences over the same cache storage, 12 padding ones.
    real = 20
    second = make_paged_batch(*_lens(5, real, [], 3000), num_heads, num_kv_heads, head_dim,
                              block_size, torch.bfloat16, spare_blocks=0, device="cuda", seed=5)  # fmt: skip
    blocks = second.key_cache.shape[0]
    key_cache[:blocks].copy_(second.key_cache)
    value_cache[:blocks].copy_(second.value_cache)
    q.normal_()
    q[:real].copy_(second.q[:real])
    seq_lens.zero_()
    seq_lens[:real].copy_(second.meta.seq_lens)
    tables.fill_(2**31 - 1)
    width = min(tables.shape[1], second.meta.block_tables.shape[1])
    tables[:real, :width].copy_(second.meta.block_tables[:, :width])
    graph.replay()
    torch.cuda.synchronize()
    replayed = out.clone()
    out.zero_()
    step()
    torch.testing.assert_close(replayed, out, rtol=0, atol=0)
    ref = reference_attention(second.q[:real], second.key_cache, second.value_cache,
                              second.meta, head_dim**-0.5)  # fmt: skip
    torch.testing.assert_close(replayed[:real], ref, rtol=2e-2, atol=2e-2)
    assert (replayed[real:] == 0).all()

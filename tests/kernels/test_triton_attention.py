"""Triton paged attention (unified prefill/mixed kernel and split-K decode kernel) against the torch
reference, on the CPU under TRITON_INTERPRET=1 (tiny shapes) and on a GPU (marked gpu).

Tolerance (DESIGN rule 10) and poison (rule 11): see paged_testing.check_against_reference and
make_paged_batch.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atom.kernels import registry
from atom.kernels.reference.attention import paged_attention as reference_attention
from atom.kernels.triton import (
    DecodeConfig,
    DecodeWorkspace,
    UnifiedConfig,
    paged_attention,
    paged_decode_attention,
)
from atom.kernels.triton.paged_testing import (
    SENTINEL,
    check_against_reference,
    make_paged_batch,
    new_kv_views,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1",
)


MIXED = ([1, 7, 13, 0], [1, 17, 83, 5])  # decode, chunk after a prefix, prefill+prefix, idle


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("block_size", [16, 8, 32])
def test_mixed_batch(dtype, heads, block_size):
    batch = make_paged_batch(*MIXED, *heads, 64, block_size, dtype, num_padding_tokens=3,
                             device=DEVICE)  # fmt: skip
    check_against_reference(batch, dtype)


@pytest.mark.parametrize("host_copies", [True, False])
def test_leading_decodes_split_off(host_copies):
    """Decodes first (as the scheduler orders them), then chunks and decodes mixed: the leading run
    goes to the decode kernel, the rest to the unified kernel; without host copies, all unified."""
    query_lens = [1] * 9 + [5, 1, 0, 9]  # more leading tokens than one query tile holds
    seq_lens = [40, 1, 83, 2, 5, 17, 8, 9, 33] + [30, 7, 3, 9]
    batch = make_paged_batch(query_lens, seq_lens, 8, 2, 64, 16, torch.float16,
                             num_padding_tokens=2, device=DEVICE)  # fmt: skip
    if not host_copies:
        batch.meta.query_lens_cpu = batch.meta.seq_lens_cpu = None
    check_against_reference(batch, torch.float16, unified_config=UnifiedConfig(16, 16, 4, 2))


@pytest.mark.parametrize(
    "query_lens, seq_lens",
    [
        ([83], [83]),  # fresh prompt
        ([13, 7], [83, 40]),  # chunked prefill / prefix-cache hits
        ([2, 3, 1], [2, 70, 33]),  # spec-decode-like chunks
    ],
)
@pytest.mark.parametrize("block", [(16, 16, 4), (64, 32, 3)])  # BLOCK_M, BLOCK_N, stages
def test_prefill_tiles(query_lens, seq_lens, block):
    """Small tiles so the masked/unmasked phases and many query tiles are all exercised."""
    batch = make_paged_batch(query_lens, seq_lens, 8, 2, 64, 16, torch.float16, device=DEVICE)
    cfg = UnifiedConfig(block_m=block[0], block_n=block[1], num_warps=4, num_stages=block[2])
    check_against_reference(batch, torch.float16, unified_config=cfg)


@pytest.mark.parametrize("num_splits", [None, 1, 3, 8])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])
def test_decode(num_splits, heads):
    batch = make_paged_batch([1, 1, 1, 1], [1, 17, 83, 200], *heads, 64, 16, torch.bfloat16,
                             num_padding_tokens=2, device=DEVICE)  # fmt: skip
    check_against_reference(batch, torch.bfloat16, num_splits=num_splits,
                            decode_config=DecodeConfig(block_n=16, num_warps=4, num_stages=2))  # fmt: skip


@pytest.mark.parametrize("window", [1, 5, 20, 37])
@pytest.mark.parametrize("decode", [False, True])
def test_sliding_window(window, decode):
    lens = ([1, 1, 1], [3, 40, 83]) if decode else ([1, 7, 13, 30], [1, 17, 83, 30])
    batch = make_paged_batch(*lens, 8, 2, 64, 8, torch.float32, device=DEVICE)
    kwargs = (
        dict(num_splits=3, decode_config=DecodeConfig(16, 4, 2))
        if decode
        else dict(unified_config=UnifiedConfig(16, 16, 4, 2))
    )
    check_against_reference(batch, torch.float32, window=window, **kwargs)


@pytest.mark.parametrize("window", [17, 18, 20])
@pytest.mark.parametrize("lens", [([1, 1], [50, 83]), ([3, 9], [43, 83])])
def test_sliding_window_never_reads_slid_out_blocks(window, lens):
    """Blocks entirely behind every query's window may be freed by the engine: poison them in the
    kernel's copy of the cache (and their table entries), and the output must not change. The
    windows put some window starts exactly on a block boundary."""
    block_size = 8
    batch = make_paged_batch(*lens, 4, 2, 64, block_size, torch.float32, device=DEVICE)
    clean = check_against_reference(batch, torch.float32, window=window)
    for b, (q_len, s_len) in enumerate(zip(*lens)):
        first_visible = max(0, s_len - q_len - window + 1)
        for i in range(first_visible // block_size):
            batch.key_cache[batch.meta.block_tables[b, i].long()] = float("nan")
            batch.value_cache[batch.meta.block_tables[b, i].long()] = float("nan")
            batch.meta.block_tables[b, i] = 2**31 - 1
    poisoned = paged_attention(batch.q, batch.key_cache, batch.value_cache, batch.meta, 0.3,
                               window)  # fmt: skip
    n = batch.num_real_tokens
    torch.testing.assert_close(poisoned[:n], clean[:n], rtol=0, atol=0)


@pytest.mark.parametrize("lens, num_splits", [(MIXED, None), (([1, 1, 1], [5, 40, 83]), 4),
                                              (([1, 1], [5, 83]), 1)])  # fmt: skip
def test_sinks(lens, num_splits):
    batch = make_paged_batch(*lens, 8, 2, 64, 16, torch.bfloat16, device=DEVICE)
    sinks = torch.randn(8, generator=torch.Generator().manual_seed(1)).mul(3).to(DEVICE)
    kwargs = {} if num_splits is None else dict(num_splits=num_splits)
    check_against_reference(batch, torch.bfloat16, sinks=sinks, window=30, **kwargs)


@pytest.mark.parametrize("lens, num_splits", [(MIXED, None), (([1, 1, 1], [5, 40, 83]), 3)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_cache(lens, num_splits, dtype):
    # Under the CPU interpreter the NaN poison of an fp8 cache reads back as 480 (it treats e4m3fn
    # 0x7F as a number), which still breaks the result if read. GPUs read NaN.
    batch = make_paged_batch(*lens, 8, 2, 64, 16, dtype, cache_dtype=torch.float8_e4m3fn,
                             device=DEVICE)  # fmt: skip
    kwargs = {} if num_splits is None else dict(num_splits=num_splits)
    check_against_reference(batch, dtype, **kwargs)


@pytest.mark.parametrize("head_dim", [128, 80, 192])  # 192: the MLA naive path (DeepSeek)
def test_other_head_dims(head_dim):
    batch = make_paged_batch(*MIXED, 4, 2, head_dim, 16, torch.float16, device=DEVICE)
    check_against_reference(batch, torch.float16, scale=head_dim**-0.5)
    decode = make_paged_batch([1, 1], [9, 70], 4, 2, head_dim, 16, torch.float16, device=DEVICE)
    check_against_reference(decode, torch.float16, num_splits=2)


def test_decode_graph_entry_reuses_workspace():
    """The CUDA-graph entry with a persistent workspace, as a captured batch of 4 uses it: a second
    call with shorter sequences and two padding sequences (seq_len 0, junk tables) must not see
    the first call's partials, and the padding rows come out as zeros."""
    workspace = DecodeWorkspace(4, 8, 64, num_splits=4, device=DEVICE)
    for seq_lens in ([90, 70, 40, 64], [3, 20]):
        real = len(seq_lens)
        batch = make_paged_batch([1] * real, seq_lens, 8, 2, 64, 16, torch.float32,
                                 num_padding_tokens=4 - real, device=DEVICE)  # fmt: skip
        m = batch.meta
        seq_lens_padded = torch.zeros(4, dtype=torch.int32, device=DEVICE)
        seq_lens_padded[:real] = m.seq_lens
        tables = torch.full((4, m.block_tables.shape[1]), 2**31 - 1, dtype=torch.int32,
                            device=DEVICE)  # fmt: skip
        tables[:real] = m.block_tables
        cu = torch.arange(5, dtype=torch.int32, device=DEVICE)
        out = torch.full_like(batch.q, SENTINEL)
        paged_decode_attention(batch.q, batch.key_cache, batch.value_cache, cu, seq_lens_padded,
                               tables, 0.3, out, num_splits=4, workspace=workspace,
                               config=DecodeConfig(16, 4, 2))  # fmt: skip
        ref = reference_attention(batch.q, batch.key_cache, batch.value_cache, m, 0.3)
        torch.testing.assert_close(out[:real], ref[:real], rtol=1e-5, atol=1e-5)
        assert (out[real:] == 0).all(), "padding sequences (seq_len 0) must produce zeros"


def test_input_checks():
    batch = make_paged_batch([1, 3], [4, 9], 4, 2, 64, 16, torch.float16, device=DEVICE)
    q, kc, vc, m = batch.q, batch.key_cache, batch.value_cache, batch.meta
    with pytest.raises(ValueError, match="sliding_window"):
        paged_attention(q, kc, vc, m, 0.3, sliding_window=0)
    with pytest.raises(ValueError, match="q dtype"):
        paged_attention(q.to(torch.float64), kc, vc, m, 0.3)
    with pytest.raises(ValueError, match="cache dtypes"):
        paged_attention(q, kc.float(), vc.float(), m, 0.3)
    with pytest.raises(ValueError, match="num_kv_heads"):
        paged_attention(q[:, :3], kc, vc, m, 0.3)
    with pytest.raises(ValueError, match="sinks"):
        paged_attention(q, kc, vc, m, 0.3, sinks=torch.zeros(3, device=DEVICE))
    with pytest.raises(ValueError, match="contiguous"):
        paged_attention(q.transpose(1, 2).contiguous().transpose(1, 2), kc, vc, m, 0.3)
    m.block_tables = m.block_tables.long()
    with pytest.raises(ValueError, match="block_tables"):
        paged_attention(q, kc, vc, m, 0.3)


def test_registered_for_cuda_only():
    assert registry.available("paged_attention")["triton"] == frozenset({"cuda"})
    assert registry.get("paged_attention", "triton") is paged_attention


NEW_KV_CASES = [  # query_lens, seq_lens, (Hq, Hkv), head_dim, dtype, window, sinks, config
    ([83], [83], (8, 2), 64, torch.float16, None, False, (16, 16, 4, 2)),  # prefill, no prefix
    ([83], [83], (8, 1), 64, torch.bfloat16, None, False, (64, 32, 4, 3)),  # MQA (group 8)
    ([13, 7], [83, 40], (4, 4), 80, torch.float16, None, False, (16, 16, 4, 2)),  # c in a tile
    ([17, 16], [81, 48], (8, 2), 128, torch.bfloat16, None, False, (16, 16, 4, 2)),  # c on edges
    ([1, 1, 1, 9, 1, 0, 20], [40, 5, 17, 30, 8, 3, 20], (8, 2), 64, torch.float16, None, False,
     (16, 16, 4, 2)),  # leading decodes, then a chunk, a decode, an idle slot, a prefill
    ([30, 13], [90, 83], (8, 2), 64, torch.float32, 20, False, (16, 16, 4, 2)),  # prefix slid out
    ([1, 7, 13, 30], [1, 17, 83, 30], (8, 2), 64, torch.bfloat16, 5, True, (16, 16, 4, 2)),
    ([13, 7], [83, 40], (8, 2), 64, torch.float16, 37, True, None),  # default config
    ([40], [40], (8, 2), 64, torch.float16, None, False, None),  # default, no cache read
]  # fmt: skip


@pytest.mark.parametrize("query_lens, seq_lens, heads, head_dim, dtype, window, use_sinks, cfg",
                         NEW_KV_CASES)  # fmt: skip
def test_new_kv_read_contiguously(query_lens, seq_lens, heads, head_dim, dtype, window, use_sinks,
                                  cfg):  # fmt: skip
    """k_new/v_new given: matches the reference, and the cache rows of the new tokens are never
    read (NaN there changes nothing) nor are the k_new rows of padding and leading decodes."""
    batch = make_paged_batch(query_lens, seq_lens, *heads, head_dim, 16, dtype,
                             num_padding_tokens=2, device=DEVICE)  # fmt: skip
    leading = next(i for i, q_len in enumerate(query_lens) if q_len != 1)
    k_new, v_new, new_slots = new_kv_views(batch, unread_seqs=leading)
    sinks = torch.linspace(-2, 2, heads[0], device=DEVICE) if use_sinks else None
    # With a cached prefix the dispatcher reads the cache unless asked for both sources.
    kwargs = dict(window=window, sinks=sinks, scale=head_dim**-0.5, k_new=k_new, v_new=v_new,
                  unified_config=cfg and UnifiedConfig(*cfg), new_kv_with_prefix=True)  # fmt: skip
    clean = check_against_reference(batch, dtype, **kwargs)
    rows = new_slots[new_slots >= 0]
    batch.key_cache.view(-1, *batch.key_cache.shape[2:])[rows] = float("nan")
    batch.value_cache.view(-1, *batch.value_cache.shape[2:])[rows] = float("nan")
    poisoned = paged_attention(batch.q, batch.key_cache, batch.value_cache, batch.meta,
                               head_dim**-0.5, window, sinks, k_new=k_new, v_new=v_new,
                               unified_config=kwargs["unified_config"],
                               new_kv_with_prefix=True)  # fmt: skip
    n = batch.num_real_tokens
    torch.testing.assert_close(poisoned[:n], clean[:n], rtol=0, atol=0)


@pytest.mark.parametrize("case", [0, 1, 3, 4, 6, 8])
def test_new_kv_through_tensor_descriptors(case, monkeypatch):
    """The TMA path (k_new/v_new read through tensor descriptors, as Hopper takes it), run under
    the interpreter on the cases above whose layout allows descriptors (16-bit, head dim a power
    of two): matches the reference with NaN in k_new's padding rows, and NaN in the cache's new
    rows changes nothing."""
    from atom.kernels.triton import attention_unified

    monkeypatch.setattr(attention_unified, "_tma_device", lambda device: True)
    query_lens, seq_lens, heads, head_dim, dtype, window, use_sinks, cfg = NEW_KV_CASES[case]
    batch = make_paged_batch(query_lens, seq_lens, *heads, head_dim, 16, dtype,
                             num_padding_tokens=2, device=DEVICE)  # fmt: skip
    leading = next(i for i, q_len in enumerate(query_lens) if q_len != 1)
    k_new, v_new, new_slots = new_kv_views(batch, unread_seqs=leading)
    assert attention_unified.descriptors_usable(k_new, v_new, head_dim)
    sinks = torch.linspace(-2, 2, heads[0], device=DEVICE) if use_sinks else None
    kwargs = dict(k_new=k_new, v_new=v_new, unified_config=cfg and UnifiedConfig(*cfg),
                  new_kv_with_prefix=True)  # fmt: skip
    clean = check_against_reference(batch, dtype, window=window, sinks=sinks,
                                    scale=head_dim**-0.5, **kwargs)  # fmt: skip
    rows = new_slots[new_slots >= 0]
    batch.key_cache.view(-1, *batch.key_cache.shape[2:])[rows] = float("nan")
    batch.value_cache.view(-1, *batch.value_cache.shape[2:])[rows] = float("nan")
    poisoned = paged_attention(batch.q, batch.key_cache, batch.value_cache, batch.meta,
                               head_dim**-0.5, window, sinks, **kwargs)  # fmt: skip
    n = batch.num_real_tokens
    torch.testing.assert_close(poisoned[:n], clean[:n], rtol=0, atol=0)


def test_new_kv_ignored_with_a_cached_prefix_by_default():
    """A step where a sequence continues a cached prefix reads the cache (measured faster), so
    k_new/v_new full of NaN change nothing; a prefill without prefix does read them."""
    batch = make_paged_batch([1, 13, 7], [9, 83, 40], 8, 2, 64, 16, torch.float16, device=DEVICE)
    nan = torch.full((batch.q.shape[0], 2, 64), float("nan"), dtype=batch.q.dtype, device=DEVICE)
    args = (batch.q, batch.key_cache, batch.value_cache, batch.meta, 0.125)
    plain = paged_attention(*args)
    with_new = paged_attention(*args, k_new=nan, v_new=nan)
    n = batch.num_real_tokens
    torch.testing.assert_close(with_new[:n], plain[:n], rtol=0, atol=0)
    fresh = make_paged_batch([20], [20], 8, 2, 64, 16, torch.float16, device=DEVICE)
    nan = torch.full((20, 2, 64), float("nan"), dtype=torch.float16, device=DEVICE)
    out = paged_attention(fresh.q, fresh.key_cache, fresh.value_cache, fresh.meta, 0.125,
                          k_new=nan, v_new=nan)  # fmt: skip
    assert out[:20].isnan().all()


def test_new_kv_without_host_copies():
    """No host copies of the lengths: the kernel cannot skip the cache, the result is the same."""
    batch = make_paged_batch([40, 9], [40, 30], 8, 2, 64, 16, torch.float16, device=DEVICE)
    k_new, v_new, _ = new_kv_views(batch)
    batch.meta.query_lens_cpu = batch.meta.seq_lens_cpu = None
    check_against_reference(batch, torch.float16, k_new=k_new, v_new=v_new,
                            unified_config=UnifiedConfig(16, 16, 4, 2))  # fmt: skip


@pytest.mark.parametrize(
    "lens, cache_dtype",
    [(MIXED, torch.float8_e4m3fn), (([1, 1, 1], [5, 40, 83]), None)],  # fp8 cache; decode-only
)
def test_new_kv_ignored(lens, cache_dtype):
    """An fp8 cache holds rounded values and decode-only batches take the decode kernel: k_new
    is not read (all NaN here), the output is bitwise the one without it."""
    batch = make_paged_batch(*lens, 8, 2, 64, 16, torch.bfloat16, cache_dtype=cache_dtype,
                             device=DEVICE)  # fmt: skip
    scales = dict(k_scale=batch.k_scale, v_scale=batch.v_scale)
    args = (batch.q, batch.key_cache, batch.value_cache, batch.meta, 0.3)
    k_new = torch.full((batch.q.shape[0], 2, 64), float("nan"), dtype=batch.q.dtype, device=DEVICE)
    without = paged_attention(*args, **scales)
    with_new = paged_attention(*args, **scales, k_new=k_new, v_new=k_new)
    torch.testing.assert_close(with_new, without, rtol=0, atol=0, equal_nan=True)


def test_new_kv_input_checks():
    batch = make_paged_batch([1, 3], [4, 9], 4, 2, 64, 16, torch.float16, device=DEVICE)
    args = (batch.q, batch.key_cache, batch.value_cache, batch.meta, 0.3)
    k_new, v_new, _ = new_kv_views(batch)
    with pytest.raises(ValueError, match="together"):
        paged_attention(*args, k_new=k_new)
    with pytest.raises(ValueError, match="k_new"):
        paged_attention(*args, k_new=k_new[:-1], v_new=v_new[:-1])
    with pytest.raises(ValueError, match="v_new"):
        paged_attention(*args, k_new=k_new, v_new=v_new.float())
    with pytest.raises(ValueError, match="v_new"):
        paged_attention(*args, k_new=k_new, v_new=v_new.reshape(-1, 64, 2).transpose(1, 2))
    with pytest.raises(ValueError, match="k_new"):
        paged_attention(*args, k_new=k_new[:, 0], v_new=v_new[:, 0])
    with pytest.raises(ValueError, match="k_new"):
        paged_attention(*args, k_new=k_new.transpose(1, 2).contiguous().transpose(1, 2),
                        v_new=v_new)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.parametrize(
    "heads, head_dim, window, use_sinks",
    [((32, 8), 128, None, False), ((64, 8), 64, 128, True), ((8, 8), 80, None, False),
     ((8, 2), 256, None, False)],  # Llama-3-8B, GPT-OSS, MHA d80, d256
)  # fmt: skip
def test_gpu_new_kv(heads, head_dim, window, use_sinks):
    """Realistic sizes on the GPU: decodes, a prompt, a chunk after a long prefix (its boundary
    inside a tile); the new tokens' cache rows poisoned after the clean run."""
    query_lens, seq_lens = [1] * 8 + [1500, 700], [300 + 97 * i for i in range(8)] + [1500, 2733]
    batch = make_paged_batch(query_lens, seq_lens, *heads, head_dim, 16, torch.bfloat16,
                             num_padding_tokens=5, device=DEVICE)  # fmt: skip
    k_new, v_new, new_slots = new_kv_views(batch, unread_seqs=8)
    sinks = torch.randn(heads[0], device=DEVICE) * 2 if use_sinks else None
    kwargs = dict(window=window, sinks=sinks, scale=head_dim**-0.5)
    clean = check_against_reference(batch, torch.bfloat16, k_new=k_new, v_new=v_new, **kwargs)
    rows = new_slots[new_slots >= 0]
    batch.key_cache.view(-1, *batch.key_cache.shape[2:])[rows] = float("nan")
    batch.value_cache.view(-1, *batch.value_cache.shape[2:])[rows] = float("nan")
    poisoned = paged_attention(batch.q, batch.key_cache, batch.value_cache, batch.meta,
                               head_dim**-0.5, window, sinks, k_new=k_new, v_new=v_new)  # fmt: skip
    n = batch.num_real_tokens
    torch.testing.assert_close(poisoned[:n], clean[:n], rtol=0, atol=0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seqs=st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 60)), min_size=1, max_size=4
    ),  # (query_len, context before it)
    group=st.sampled_from([1, 2, 3, 4]),
    block_size=st.sampled_from([8, 16, 32]),
    window=st.one_of(st.none(), st.integers(1, 40)),
    use_sinks=st.booleans(),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    use_new_kv=st.booleans(),
)
def test_property_matches_reference(seqs, group, block_size, window, use_sinks, dtype,
                                    use_new_kv):  # fmt: skip
    query_lens = [q for q, _ in seqs]
    seq_lens = [q + c for q, c in seqs]
    num_kv_heads = 2
    batch = make_paged_batch(query_lens, seq_lens, num_kv_heads * group, num_kv_heads, 32,
                             block_size, dtype, num_padding_tokens=1, device=DEVICE)  # fmt: skip
    sinks = torch.linspace(-2, 2, num_kv_heads * group, device=DEVICE) if use_sinks else None
    k_new, v_new, _ = new_kv_views(batch) if use_new_kv else (None, None, None)
    check_against_reference(batch, dtype, window=window, sinks=sinks, k_new=k_new, v_new=v_new,
                            unified_config=UnifiedConfig(max(16, 4 * group), 16, 4, 2))  # fmt: skip

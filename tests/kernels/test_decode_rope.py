"""The decode kernel doing fused_qk_norm_rope_cache's work itself (paged_attention(rope=...)).

Reference: the torch fused_qk_norm_rope_cache on copies of the caches, then the plain Triton decode
path over them. The fused call must give the same output (up to the order of one key's products)
and leave the same cache (the new slots are NaN before it: it must write them, never read them).
CPU under TRITON_INTERPRET=1; every case, fp8 included, runs on the GPU in test_decode_rope_gpu.
"""

from __future__ import annotations

import pytest
import torch

from atom.kernels.reference.cache import fused_qk_norm_rope_cache as reference_rope_cache
from atom.kernels.triton.attention_decode_rope import DecodeRope
from atom.kernels.triton.paged_attention import paged_attention
from atom.kernels.triton.paged_testing import make_paged_batch
from atom.layers.rotary import RotaryEmbedding

DEVICE = "cpu"
FP8 = torch.float8_e4m3fn
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

# seq_lens, (Hq, Hkv), head_dim, rot_dim, neox, qk_norm, dtype, cache dtype, window, sinks, splits
CASES = {
    "llama": ([5, 40, 1, 17], (8, 2), 64, 64, True, False, BF16, None, None, False, 1),
    "llama-split": ([5, 40, 1, 17], (8, 2), 64, 64, True, False, BF16, None, None, False, 3),
    "qwen3-norm": ([33, 2, 20], (4, 2), 128, 128, True, True, FP16, None, None, False, 2),
    "gptj-partial": ([9, 30], (4, 4), 64, 32, False, False, FP32, None, None, False, 2),
    "fp8-window-sinks": ([3, 50, 18], (8, 1), 64, 64, True, False, BF16, FP8, 7, True, 2),
    "d80-glm-partial": ([12, 25], (4, 2), 80, 40, True, False, BF16, None, None, False, 1),
}


def run_both(case: str, device: str = DEVICE):
    """(fused out, reference out, fused caches, reference caches, real token count)."""
    seq_lens, heads, head_dim, rot_dim, neox, qk_norm, dtype, cache_dtype, window, use_sinks, splits = (
        CASES[case]
    )  # fmt: skip
    batch = make_paged_batch([1] * len(seq_lens), seq_lens, *heads, head_dim, 16, dtype,
                             cache_dtype=cache_dtype, num_padding_tokens=2, device=device)  # fmt: skip
    n, hkv = len(seq_lens), heads[1]
    gen = torch.Generator(device=device).manual_seed(1)
    k = torch.randn(n + 2, hkv, head_dim, generator=gen, device=device).to(dtype)
    v = torch.randn(n + 2, hkv, head_dim, generator=gen, device=device).to(dtype)
    k[n:] = v[n:] = float("nan")  # padding rows: never read
    positions = torch.tensor([s - 1 for s in seq_lens] + [0, 0], device=device)
    rope_emb = RotaryEmbedding(head_dim, rot_dim, 128, 10000.0, neox).to(device)
    norms = (None, None)
    if qk_norm:
        norms = tuple(1 + 0.1 * torch.randn(head_dim, generator=gen, device=device).to(dtype)
                      for _ in range(2))  # fmt: skip
    sinks = torch.linspace(-1, 2, heads[0], device=device) if use_sinks else None
    slots = batch.meta.slot_mapping
    scales = dict(k_scale=batch.k_scale, v_scale=batch.v_scale)
    common = dict(sliding_window=window, sinks=sinks, num_splits=splits, **scales)
    scale = head_dim**-0.5

    ref_k, ref_v = batch.key_cache.clone(), batch.value_cache.clone()
    q_ref, _ = reference_rope_cache(
        batch.q.clone(), k.clone(), v.clone(), *norms, 1e-6, positions,
        rope_emb.cos_sin_cache, neox, ref_k, ref_v, slots, **scales,
    )  # fmt: skip
    ref_out = paged_attention(q_ref, ref_k, ref_v, batch.meta, scale, **common)

    real = slots[slots >= 0]
    for cache in (batch.key_cache, batch.value_cache):
        cache.view(-1, *cache.shape[2:])[real] = float("nan")
    rope = DecodeRope(k, v, positions, rope_emb.cos_sin_cache, neox, slots, *norms, eps=1e-6)
    q_raw = batch.q.clone()
    out = paged_attention(batch.q, batch.key_cache, batch.value_cache, batch.meta, scale,
                          rope=rope, **common)  # fmt: skip
    assert torch.equal(batch.q[:n], q_raw[:n]), "the raw q must not be modified"
    return out, ref_out, (batch.key_cache, batch.value_cache), (ref_k, ref_v), n


def check_case(case: str, device: str = DEVICE) -> None:
    out, ref_out, caches, ref_caches, n = run_both(case, device)
    dtype = CASES[case][6]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == FP32 else dict(rtol=2e-2, atol=2e-2)
    assert not out[:n].isnan().any()
    torch.testing.assert_close(out[:n].float(), ref_out[:n].float(), **tol)
    for cache, ref in zip(caches, ref_caches):
        # Every slot equal (NaN where the batch poisoned unused slots); the rotated keys may
        # differ by one rounding step where the GPU fuses a multiply-add.
        torch.testing.assert_close(cache.float(), ref.float(), equal_nan=True, **tol)


# Triton 3.9's interpreter rounds fp32 -> fp8 wrongly near powers of two (31.2 -> 16), so the fp8
# case runs on the GPU only (test_decode_rope_gpu), where the conversion is the hardware's.
CPU_CASES = sorted(c for c in CASES if CASES[c][7] is None)


@pytest.mark.parametrize("case", CPU_CASES)
def test_decode_rope_matches_the_unfused_path(case):
    check_case(case)


def test_decode_rope_rejects_bad_input():
    batch = make_paged_batch([1, 1], [4, 9], 4, 2, 64, 16, BF16)
    k = torch.randn(2, 2, 64).to(BF16)
    cs = RotaryEmbedding(64, 64, 32, 10000.0, True).cos_sin_cache
    pos, slots = torch.tensor([3, 8]), batch.meta.slot_mapping
    args = (batch.q, batch.key_cache, batch.value_cache, batch.meta, 0.125)
    with pytest.raises(ValueError, match="rope.k"):
        paged_attention(*args, rope=DecodeRope(k[:, :1], k, pos, cs, True, slots))
    with pytest.raises(ValueError, match="rotary dim"):
        paged_attention(*args, rope=DecodeRope(k, k, pos, cs[:, :63], True, slots))
    with pytest.raises(ValueError, match="cos_sin_cache"):
        paged_attention(*args, rope=DecodeRope(k, k, pos, cs.double(), True, slots))
    with pytest.raises(ValueError, match="together"):
        paged_attention(*args, rope=DecodeRope(k, k, pos, cs, True, slots, torch.ones(64)))
    prefill = make_paged_batch([3], [3], 4, 2, 64, 16, BF16)
    with pytest.raises(ValueError, match="decode-only"):
        paged_attention(prefill.q, prefill.key_cache, prefill.value_cache, prefill.meta, 0.1,
                        rope=DecodeRope(k, k, pos, cs, True, slots))  # fmt: skip

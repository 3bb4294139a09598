"""Native (atom._C) rotary_embedding, reshape_and_cache and fused_qk_norm_rope_cache against their
torch references: hypothesis over awkward head sizes, partial rotary, neox / gpt-j, dtypes, fp8
caches (e4m3fn, e4m3fnuz) with scales, int32/int64 indices, q/k/v as strided views of one fused
qkv output, and slot mappings with padding (-1), on the CPU twins and (marked gpu) the kernels.

Caches start poisoned with NaN (DESIGN rule 11) and are compared bit for bit with what the
reference writes, so a write to a wrong or skipped slot fails. Rotated q/k follow rule 10 (see
test_native_norm_act.assert_rule10, repeated here).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atom.kernels.reference import cache as ref_cache
from atom.kernels.reference import rotary as ref_rotary

native = pytest.importorskip("atom.kernels.native", reason="atom._C is not built")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CACHE_KINDS = ["same", torch.float8_e4m3fn, torch.float8_e4m3fnuz]
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
MAX_POSITION = 300


def assert_rule10(out: torch.Tensor, ref: torch.Tensor, gold: torch.Tensor, what: str) -> None:
    assert out.shape == gold.shape and out.dtype == ref.dtype, what
    out64, ref64, gold64 = out.double(), ref.double(), gold.double()
    err = (out64 - gold64).abs().max().item() if out.numel() else 0.0
    ref_err = (ref64 - gold64).abs().max().item() if out.numel() else 0.0
    ulps = 8 if out.dtype == torch.float32 else 1
    floor = ulps * torch.finfo(out.dtype).eps * max(1.0, gold64.abs().max().item())
    assert err <= 2 * ref_err + floor, f"{what}: error {err:.3g} > 2 * {ref_err:.3g} + {floor:.3g}"


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that NaN poison compares equal to itself."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def make_cos_sin(rot_dim: int, dtype, device) -> torch.Tensor:
    """[MAX_POSITION, rot_dim] = [cos | sin] of RoPE with base 10000."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))
    freqs = torch.outer(torch.arange(MAX_POSITION, dtype=torch.float32), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device=device, dtype=dtype)


def make_qkv(tokens, hq, hkv, d, dtype, device, layout):
    """q [T, Hq, D], k/v [T, Hkv, D] in one of several layouts."""
    if layout == "transposed":  # innermost dim not contiguous: the glue's copy path

        def one(h):
            return torch.randn(d, h, tokens, device=device).to(dtype).permute(2, 1, 0)

        return one(hq), one(hkv), one(hkv)
    pad = 24 if layout == "fused_padded" else 0
    width = (hq + 2 * hkv) * d
    if layout == "separate":
        return tuple(torch.randn(tokens, h, d, device=device).to(dtype) for h in (hq, hkv, hkv))
    qkv = torch.randn(tokens, width + pad, device=device).to(dtype)  # fused projection output
    q, k, v = qkv[:, :width].split([hq * d, hkv * d, hkv * d], dim=-1)
    return q.view(tokens, hq, d), k.view(tokens, hkv, d), v.view(tokens, hkv, d)


def make_caches(num_blocks, block_size, hkv, d, dtype, device):
    shape = (num_blocks, block_size, hkv, d)
    return tuple(torch.full(shape, float("nan"), device=device).to(dtype) for _ in range(2))


def make_slots(num_slots: int, capacity: int, device, int32: bool, seed: int) -> torch.Tensor:
    """Distinct random slots, about a quarter of them -1 (padding)."""
    g = torch.Generator().manual_seed(seed)
    slots = torch.randperm(capacity, generator=g)[:num_slots]
    slots[torch.rand(num_slots, generator=g) < 0.25] = -1
    return slots.to(device=device, dtype=torch.int32 if int32 else torch.int64)


def cache_dtype_of(kind, dtype):
    return dtype if kind == "same" else kind


def scale_tensor(value, device):
    return None if value is None else torch.tensor([value], device=device)


heads = st.sampled_from([(1, 1), (4, 2), (8, 1), (7, 7)])
head_sizes = st.sampled_from([64, 80, 83, 128])


@st.composite
def rot_dims(draw, d):
    """Full rotary (largest even <= d) or partial (an even number below it)."""
    full = d - d % 2
    return draw(st.sampled_from([full, max(2, full // 2 - (full // 2) % 2)]))


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(data=st.data())
def test_rotary_embedding(device, data):
    tokens = data.draw(st.sampled_from([1, 7, 83]))
    (hq, hkv), d = data.draw(heads), data.draw(head_sizes)
    rot_dim = data.draw(rot_dims(d))
    dtype = data.draw(st.sampled_from(DTYPES))
    layout = data.draw(st.sampled_from(["separate", "fused", "fused_padded", "transposed", "2d"]))
    is_neox = data.draw(st.booleans())
    table = make_cos_sin(rot_dim, data.draw(st.sampled_from([torch.float32, dtype])), device)
    positions = torch.randint(0, MAX_POSITION, (tokens,), device=device)
    if data.draw(st.booleans()):
        positions = positions.int()
    if layout == "2d":  # [T, H * D], as the reference also accepts
        q = torch.randn(tokens, hq * d, device=device).to(dtype)
        k = torch.randn(tokens, hkv * d, device=device).to(dtype)
    else:
        q, k, _ = make_qkv(tokens, hq, hkv, d, dtype, device, layout)
    check_rotary(positions, q, k, d, table, is_neox)


def check_rotary(positions, q, k, head_size, table, is_neox):
    q0, k0 = q.clone(), k.clone()
    out_q, out_k = native.rotary_embedding(positions, q, k, head_size, table, is_neox)
    assert out_q is q and out_k is k  # in place
    ref_q, ref_k = ref_rotary.rotary_embedding(positions, q0, k0, head_size, table, is_neox)
    gold_q, gold_k = ref_rotary.rotary_embedding(
        positions, q0.float(), k0.float(), head_size, table.float(), is_neox
    )
    assert_rule10(out_q, ref_q, gold_q, "rotary q")
    assert_rule10(out_k, ref_k, gold_k, "rotary k")


# The GPU kernel's paths: 16-byte vectors when half the rotary width is a multiple of the pairs a
# vector holds (neox: 8 for 16-bit types, 4 for fp32; gpt-j: half that) and heads are aligned,
# else one pair at a time (odd head size 83; half = 20 with neox in 16-bit types).
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize(("d", "rot_dim"), [(128, 128), (128, 64), (64, 32), (80, 40), (83, 82)])
def test_rotary_embedding_paths_gpu(dtype, is_neox, d, rot_dim):
    q, k, _ = make_qkv(65, 32, 8, d, dtype, "cuda", "fused_padded")
    positions = torch.randint(0, MAX_POSITION, (65,), device="cuda")
    check_rotary(positions, q, k, d, make_cos_sin(rot_dim, torch.float32, "cuda"), is_neox)


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(data=st.data())
def test_reshape_and_cache(device, data):
    tokens = data.draw(st.sampled_from([1, 7, 83]))
    hkv, d = data.draw(st.sampled_from([1, 2, 7])), data.draw(st.sampled_from([7, 64, 83, 128]))
    dtype = data.draw(st.sampled_from(DTYPES))
    cache_dtype = cache_dtype_of(data.draw(st.sampled_from(CACHE_KINDS)), dtype)
    block_size = data.draw(st.sampled_from([1, 16]))
    num_blocks = tokens // block_size + 3
    layout = data.draw(st.sampled_from(["separate", "fused", "transposed"]))
    _, key, value = make_qkv(tokens, 2, hkv, d, dtype, device, layout)
    key, value = key * 40, value * 40  # beyond fp8's range: exercises the clamp
    num_slots = data.draw(st.integers(0, tokens))  # trailing tokens beyond the mapping: padding
    slots = make_slots(num_slots, num_blocks * block_size, device, data.draw(st.booleans()), 0)
    k_scale = scale_tensor(data.draw(st.sampled_from([None, 0.5, 3.0])), device)
    v_scale = scale_tensor(data.draw(st.sampled_from([None, 2.0])), device)
    kc, vc = make_caches(num_blocks, block_size, hkv, d, cache_dtype, device)
    ref_kc, ref_vc = kc.clone(), vc.clone()

    native.reshape_and_cache(key, value, kc, vc, slots, k_scale, v_scale)
    ref_cache.reshape_and_cache(key, value, ref_kc, ref_vc, slots, k_scale, v_scale)
    assert torch.equal(bits(kc), bits(ref_kc)), "key cache differs from the reference"
    assert torch.equal(bits(vc), bits(ref_vc)), "value cache differs from the reference"


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(data=st.data())
def test_fused_qk_norm_rope_cache(device, data):
    tokens = data.draw(st.sampled_from([1, 7, 83]))
    (hq, hkv), d = data.draw(heads), data.draw(head_sizes)
    rot_dim = data.draw(rot_dims(d))
    dtype = data.draw(st.sampled_from(DTYPES))
    cache_dtype = cache_dtype_of(data.draw(st.sampled_from(CACHE_KINDS)), dtype)
    layout = data.draw(st.sampled_from(["separate", "fused", "fused_padded", "transposed"]))
    is_neox, qk_norm = data.draw(st.booleans()), data.draw(st.booleans())
    w_dtype = data.draw(st.sampled_from([torch.float32, dtype]))
    table = make_cos_sin(rot_dim, data.draw(st.sampled_from([torch.float32, dtype])), device)
    block_size = data.draw(st.sampled_from([1, 16]))
    num_blocks = tokens // block_size + 2
    num_slots = data.draw(st.sampled_from([tokens, max(0, tokens - 3)]))
    slots = make_slots(num_slots, num_blocks * block_size, device, data.draw(st.booleans()), 1)
    positions = torch.randint(0, MAX_POSITION, (tokens,), device=device)
    k_scale = scale_tensor(data.draw(st.sampled_from([None, 0.25])), device)
    v_scale = scale_tensor(data.draw(st.sampled_from([None, 2.0])), device)

    q, k, v = make_qkv(tokens, hq, hkv, d, dtype, device, layout)
    q_w = (1 + 0.2 * torch.randn(d, device=device)).to(w_dtype) if qk_norm else None
    k_w = (1 + 0.2 * torch.randn(d, device=device)).to(w_dtype) if qk_norm else None
    kc, vc = make_caches(num_blocks, block_size, hkv, d, cache_dtype, device)
    q0, k0, kc0, vc0 = q.clone(), k.clone(), kc.clone(), vc.clone()
    args = (q_w, k_w, 1e-6, positions, table, is_neox)

    out_q, out_k = native.fused_qk_norm_rope_cache(q, k, v, *args, kc, vc, slots, k_scale, v_scale)
    assert out_q is q and out_k is k  # in place
    ref_q, ref_k = ref_cache.fused_qk_norm_rope_cache(
        q0, k0, v, *args, kc0.clone(), vc0.clone(), slots, k_scale, v_scale
    )
    gold_q, gold_k = ref_cache.fused_qk_norm_rope_cache(
        q0.float(), k0.float(), v.float(),
        None if q_w is None else q_w.float(), None if k_w is None else k_w.float(),
        1e-6, positions, table.float(), is_neox,
        torch.empty_like(kc0, dtype=torch.float32), torch.empty_like(vc0, dtype=torch.float32),
        slots,
    )  # fmt: skip
    assert_rule10(out_q, ref_q, gold_q, "fused q")
    assert_rule10(out_k, ref_k, gold_k, "fused k")
    # The caches hold exactly the returned k (and the given v), quantized as the reference does,
    # at exactly the mapped slots: replay the reference cache write of (out_k, v) and compare bits.
    ref_cache.reshape_and_cache(out_k, v, kc0, vc0, slots, k_scale, v_scale)
    assert torch.equal(bits(kc), bits(kc0)), "key cache"
    assert torch.equal(bits(vc), bits(vc0)), "value cache"


@pytest.mark.gpu
@pytest.mark.parametrize("cache_kind", CACHE_KINDS)
def test_fused_qwen3_shape_gpu(cache_kind):
    """Qwen3-8B attention at a prefill of 1029 tokens: 32 q heads, 8 kv heads, head 128."""
    tokens, hq, hkv, d, dtype, device = 1029, 32, 8, 128, torch.bfloat16, "cuda"
    q, k, v = make_qkv(tokens, hq, hkv, d, dtype, device, "fused")
    w = (1 + 0.2 * torch.randn(d, device=device)).to(dtype)
    table = make_cos_sin(d, torch.float32, device)
    positions = torch.randint(0, MAX_POSITION, (tokens,), device=device)
    kc, vc = make_caches(tokens // 16 + 2, 16, hkv, d, cache_dtype_of(cache_kind, dtype), device)
    slots = make_slots(tokens, kc.shape[0] * 16, device, False, 2)
    q0, k0, kc0, vc0 = q.clone(), k.clone(), kc.clone(), vc.clone()
    args = (w, w, 1e-6, positions, table, True)
    out_q, out_k = native.fused_qk_norm_rope_cache(q, k, v, *args, kc, vc, slots)
    ref_q, ref_k = ref_cache.fused_qk_norm_rope_cache(q0, k0, v, *args, kc0.clone(), vc0, slots)
    gold_q, gold_k = ref_cache.fused_qk_norm_rope_cache(
        q0.float(), k0.float(), v.float(), w.float(), w.float(), 1e-6, positions, table, True,
        torch.empty_like(kc0, dtype=torch.float32), torch.empty_like(vc0, dtype=torch.float32),
        slots,
    )  # fmt: skip
    assert_rule10(out_q, ref_q, gold_q, "q")
    assert_rule10(out_k, ref_k, gold_k, "k")
    ref_cache.reshape_and_cache(out_k, v, kc0, vc0, slots)
    assert torch.equal(bits(kc), bits(kc0)) and torch.equal(bits(vc), bits(vc0))


def test_bad_inputs_raise_value_error():
    q, k, v = make_qkv(4, 2, 1, 8, torch.float32, "cpu", "separate")
    table = make_cos_sin(8, torch.float32, "cpu")
    kc, vc = make_caches(2, 4, 1, 8, torch.float32, "cpu")
    slots, positions = torch.arange(4), torch.arange(4)
    with pytest.raises(ValueError, match=r"slot_mapping\[3\] = 8 is past the end of the cache"):
        native.reshape_and_cache(k, v, kc, vc, torch.tensor([0, 1, 2, 8]))
    with pytest.raises(ValueError, match="the cache must have the activations' dtype or be fp8"):
        native.reshape_and_cache(k, v, kc.half(), vc.half(), slots)
    with pytest.raises(ValueError, match=r"positions\[1\] = 300 is outside the cos_sin_cache"):
        native.rotary_embedding(torch.tensor([0, 300, 1, 2]), q, k, 8, table, True)
    with pytest.raises(ValueError, match="rot_dim 10 must be even and <= head_size 8"):
        native.rotary_embedding(positions, q, k, 8, make_cos_sin(10, torch.float32, "cpu"), True)
    with pytest.raises(ValueError, match="k_norm_weight has 4 elements for head_size 8"):
        native.fused_qk_norm_rope_cache(
            q, k, v, None, torch.ones(4), 1e-6, positions, table, True, kc, vc, slots
        )
    with pytest.raises(ValueError, match="slot_mapping must be int64 or int32"):
        native.reshape_and_cache(k, v, kc, vc, slots.float())

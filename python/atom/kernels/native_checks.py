"""Argument checks of the compiled ops, run by the wrappers in ``atom.kernels.native`` before
``torch.ops.atom.*`` is called, so that a user mistake raises a clear ValueError here and never
reaches C++.

Why both here and in C++ (csrc/glue.h, csrc/ops_*.cpp): on the H100 machine an error thrown
from inside an extension built there could kill the process instead of raising
(tools/gpu/error_probe.py). The C++ checks stay as the last line for direct ``torch.ops.atom``
calls; these mirror them one for one, in the same order and with the same messages, so the error
a caller sees does not depend on which side caught it.

Everything here reads only metadata (shape, dtype, device, strides), except the range checks of
positions and slots on CPU tensors, which the CPU twins would otherwise raise from C++ (the GPU
kernels skip such entries instead, and a check there would need a device sync). Under
torch.compile those data checks are skipped (the compiled code calls the op the same way).
"""

from __future__ import annotations

from typing import NoReturn

import torch

# The names C++ prints for a ScalarType (c10::toString), so messages match the C++ ones.
_DTYPE_NAMES = {
    torch.float64: "Double",
    torch.float32: "Float",
    torch.bfloat16: "BFloat16",
    torch.float16: "Half",
    torch.int64: "Long",
    torch.int32: "Int",
    torch.int16: "Short",
    torch.int8: "Char",
    torch.uint8: "Byte",
    torch.bool: "Bool",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
    torch.float8_e4m3fn: "Float8_e4m3fn",
    torch.float8_e4m3fnuz: "Float8_e4m3fnuz",
    torch.float8_e5m2: "Float8_e5m2",
}
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
_INDEX_DTYPES = (torch.int64, torch.int32)
# The GPU norm kernels index within a row in 32 bits (csrc/gpu/norm_activation.cu).
_MAX_HIDDEN = 1 << 30
# fused_qk_norm_rope_cache stages 8 rows of head_size fp32 values in 48 KiB of shared memory
# once a row takes 32 lanes (csrc/gpu/rope_cache.cu): head_size <= 48 * 1024 / (8 * 4).
_MAX_FUSED_HEAD_SIZE = 1536


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _fail(*parts: object) -> NoReturn:
    raise ValueError("atom: " + "".join(str(p) for p in parts))


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _tensor(t: object, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        _fail(name, " must be a torch.Tensor, got ", type(t).__name__)
    return t  # type: ignore[return-value]


def _to_dtype(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _FLOATS and t.dtype not in _FP8:
        _fail(name, " has unsupported dtype ", dtype_name(t.dtype),
              " (float32, bfloat16, float16, or fp8 e4m3 for caches)")  # fmt: skip


def float_dtype(t: torch.Tensor, name: str) -> None:
    """Activations, weights and RoPE tables: float32, bfloat16 or float16."""
    _to_dtype(t, name)
    if t.dtype not in _FLOATS:
        _fail(name, " must be float32, bfloat16 or float16, got ", dtype_name(t.dtype))


def check_device(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        _fail(name, " is on ", t.device, " but ", ref_name, " is on ", ref.device)


def check_dim(t: torch.Tensor, name: str, dim: int) -> None:
    if t.dim() != dim:
        _fail(name, " must have ", dim, " dims, got shape ", _shape(t))


def _number(value: object, name: str, kind: type) -> None:
    """A scalar argument of the op's schema (float: int or float; int: int or SymInt)."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float, torch.SymInt, torch.SymFloat))
        ok = ok and not isinstance(value, bool)
    if not ok:
        _fail(name, " must be ", kind.__name__, ", got ", type(value).__name__, " ", value)


def _index(t: object, name: str) -> torch.Tensor:
    """positions / slot_mapping: 1-D int64 or int32."""
    t = _tensor(t, name)
    check_dim(t, name, 1)
    if t.dtype not in _INDEX_DTYPES:
        _fail(name, " must be int64 or int32, got ", dtype_name(t.dtype))
    return t


def _activation_dtypes(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    float_dtype(a, a_name)
    if a.dtype != b.dtype:
        _fail(a_name, " is ", dtype_name(a.dtype), " but ", b_name, " is ", dtype_name(b.dtype))


def _cos_sin(table: object, head_size: int) -> torch.Tensor:
    table = _tensor(table, "cos_sin_cache")
    check_dim(table, "cos_sin_cache", 2)
    float_dtype(table, "cos_sin_cache")
    rot_dim = table.shape[1]
    if rot_dim % 2 != 0 or rot_dim > head_size:
        _fail("cos_sin_cache rot_dim ", rot_dim, " must be even and <= head_size ", head_size)
    return table


def _cache(cache: object, name: str, scale: object) -> torch.Tensor:
    """A paged cache [num_blocks, block_size, heads, head_size], last dim contiguous."""
    cache = _tensor(cache, name)
    check_dim(cache, name, 4)
    if cache.shape[3] > 1 and cache.stride(3) != 1:
        _fail(name, " must be contiguous in its last dim, got strides ", list(cache.stride()))
    _to_dtype(cache, name)
    if cache.dtype in _FP8 and scale is not None:
        scale = _tensor(scale, f"the scale of {name}")
        if scale.numel() != 1:
            _fail("the scale of ", name, " must have one element, got shape ", _shape(scale))
        check_device(scale, "scale", cache, name)
    return cache


def _caches(kc: torch.Tensor, vc: torch.Tensor, heads: int, k_head_size: int,
            v_head_size: int, dtype: torch.dtype) -> None:  # fmt: skip
    if kc.shape[2] != heads or kc.shape[3] != k_head_size:
        _fail("key_cache has ", kc.shape[2], " heads of ", kc.shape[3], " but key has ", heads,
              " of ", k_head_size)  # fmt: skip
    if vc.shape[2] != heads or vc.shape[3] != v_head_size:
        _fail("value_cache has ", vc.shape[2], " heads of ", vc.shape[3], " but value has ",
              heads, " of ", v_head_size)  # fmt: skip
    if kc.shape[0] != vc.shape[0] or kc.shape[1] != vc.shape[1]:
        _fail("key_cache has ", kc.shape[0], " blocks of ", kc.shape[1], " but value_cache has ",
              vc.shape[0], " of ", vc.shape[1])  # fmt: skip
    if kc.dtype != vc.dtype:
        _fail("key_cache and value_cache dtypes differ")
    if kc.dtype != dtype and kc.dtype not in _FP8:
        _fail("the cache must have the activations' dtype or be fp8 e4m3")


def _checks_data(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.numel() > 0 and not torch.compiler.is_compiling()


def _positions_in_range(positions: torch.Tensor, count: int, max_position: int) -> None:
    if not _checks_data(positions):
        return
    pos = positions[:count]
    if pos.numel() == 0:
        return
    lo, hi = torch.aminmax(pos)  # one pass; the offending index is looked up only on failure
    if int(lo) < 0 or int(hi) >= max_position:
        bad = ((pos < 0) | (pos >= max_position)).nonzero()
        t = int(bad[0, 0])
        _fail("positions[", t, "] = ", int(pos[t]), " is outside the cos_sin_cache (",
              max_position, " positions)")  # fmt: skip


def _slots_in_range(slots: torch.Tensor, cache: torch.Tensor) -> None:
    if not _checks_data(slots):
        return
    capacity = cache.shape[0] * cache.shape[1]
    if int(slots.max()) >= capacity:
        bad = (slots >= capacity).nonzero()
        t = int(bad[0, 0])
        _fail("slot_mapping[", t, "] = ", int(slots[t]), " is past the end of the cache (",
              capacity, " slots)")  # fmt: skip


def _norm_weight(weight: object, x: torch.Tensor, name: str) -> None:
    weight = _tensor(weight, name)
    check_dim(weight, name, 1)
    if weight.shape[0] != x.shape[-1]:
        _fail(name, " has ", weight.shape[0], " elements but the hidden size is ", x.shape[-1])
    check_device(weight, name, x, "x")
    float_dtype(weight, name)


def _hidden_fits(x: torch.Tensor, op: str) -> None:
    if x.device.type != "cpu" and x.shape[-1] >= _MAX_HIDDEN:
        _fail(op, ": hidden size ", x.shape[-1], " is too large (>= 2^30)")


def rms_norm(x: object, weight: object, eps: object) -> None:
    x = _tensor(x, "x")
    if x.dim() < 1:
        _fail("rms_norm needs x with at least one dim")
    float_dtype(x, "x")
    _norm_weight(weight, x, "weight")
    _number(eps, "eps", float)
    _hidden_fits(x, "rms_norm")


def fused_add_rms_norm_shapes(x: object, residual: object) -> None:
    """What is checked before the wrapper picks its one-dtype or two-dtype path."""
    x, residual = _tensor(x, "x"), _tensor(residual, "residual")
    if x.dim() < 1:
        _fail("fused_add_rms_norm needs x with at least one dim")
    if x.shape != residual.shape:
        _fail("x has shape ", _shape(x), " but residual has shape ", _shape(residual))
    check_device(residual, "residual", x, "x")
    float_dtype(x, "x")
    float_dtype(residual, "residual")


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: object,
                       eps: object) -> None:  # fmt: skip
    fused_add_rms_norm_shapes(x, residual)
    _norm_weight(weight, x, "weight")
    _number(eps, "eps", float)
    _hidden_fits(x, "fused_add_rms_norm")


def silu_and_mul(x: object) -> None:
    x = _tensor(x, "x")
    if x.dim() < 1 or x.shape[-1] % 2 != 0:
        _fail("silu_and_mul needs x [..., 2 * d], got shape ", _shape(x))
    float_dtype(x, "x")


def _heads(x: object, tokens: int, head_size: int, name: str) -> int:
    """query / key as [T, H * head_size] or [T, H, head_size]; returns H."""
    x = _tensor(x, name)
    if x.dim() not in (2, 3):
        _fail(name, " must be [T, H * head_size] or [T, H, head_size], got shape ", _shape(x))
    if x.shape[0] != tokens:
        _fail(name, " has ", x.shape[0], " tokens but positions has ", tokens)
    features = x.shape[1] if x.dim() == 2 else x.shape[1] * x.shape[2]
    if head_size <= 0 or features % head_size != 0:
        _fail(name, " has ", features, " features per token, not a multiple of head_size ",
              head_size)  # fmt: skip
    return features // head_size


def rotary_embedding(positions: object, query: object, key: object, head_size: object,
                     cos_sin_cache: object, is_neox: object) -> None:  # fmt: skip
    positions = _index(positions, "positions")
    query, key = _tensor(query, "query"), _tensor(key, "key")
    _activation_dtypes(query, "query", key, "key")
    check_device(key, "key", query, "query")
    check_device(positions, "positions", query, "query")
    table = _tensor(cos_sin_cache, "cos_sin_cache")
    check_device(table, "cos_sin_cache", query, "query")
    _number(head_size, "head_size", int)
    _number(is_neox, "is_neox", bool)
    _heads(query, positions.shape[0], head_size, "query")
    _heads(key, positions.shape[0], head_size, "key")
    _cos_sin(table, head_size)
    _positions_in_range(positions, positions.shape[0], table.shape[0])


def reshape_and_cache(key: object, value: object, key_cache: object, value_cache: object,
                      slot_mapping: object, k_scale: object = None,
                      v_scale: object = None) -> None:  # fmt: skip
    slots = _index(slot_mapping, "slot_mapping")
    key, value = _tensor(key, "key"), _tensor(value, "value")
    _activation_dtypes(key, "key", value, "value")
    named = {"value": value, "key_cache": key_cache, "value_cache": value_cache}
    for name, t in named.items():
        check_device(_tensor(t, name), name, key, "key")
    check_device(slots, "slot_mapping", key, "key")
    check_dim(key, "key", 3)
    check_dim(value, "value", 3)
    if key.shape[1] != value.shape[1]:
        _fail("key has ", key.shape[1], " heads but value has ", value.shape[1])
    if slots.shape[0] > key.shape[0] or slots.shape[0] > value.shape[0]:
        _fail("slot_mapping has ", slots.shape[0], " tokens but key has ", key.shape[0],
              " and value ", value.shape[0])  # fmt: skip
    kc = _cache(key_cache, "key_cache", k_scale)
    vc = _cache(value_cache, "value_cache", v_scale)
    _caches(kc, vc, key.shape[1], key.shape[2], value.shape[2], key.dtype)
    _slots_in_range(slots, kc)


def fused_qk_norm_rope_cache(q: object, k: object, v: object, q_norm_weight: object,
                             k_norm_weight: object, eps: object, positions: object,
                             cos_sin_cache: object, is_neox: object, key_cache: object,
                             value_cache: object, slot_mapping: object, k_scale: object = None,
                             v_scale: object = None) -> None:  # fmt: skip
    q, k, v = _tensor(q, "q"), _tensor(k, "k"), _tensor(v, "v")
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        check_dim(t, name, 3)
    _activation_dtypes(q, "q", k, "k")
    _activation_dtypes(q, "q", v, "v")
    named = {"k": k, "v": v, "positions": positions, "cos_sin_cache": cos_sin_cache,
             "key_cache": key_cache, "value_cache": value_cache, "slot_mapping": slot_mapping}  # fmt: skip
    for name, t in named.items():
        check_device(_tensor(t, name), name, q, "q")
    tokens, head_size = q.shape[0], q.shape[2]
    if not (k.shape[0] == tokens == v.shape[0] and k.shape[2] == head_size == v.shape[2]
            and v.shape[1] == k.shape[1]):  # fmt: skip
        _fail("q ", _shape(q), ", k ", _shape(k), " and v ", _shape(v),
              " must be [T, Hq, D], [T, Hkv, D], [T, Hkv, D]")  # fmt: skip
    positions = _index(positions, "positions")
    if positions.shape[0] != tokens:
        _fail("positions has ", positions.shape[0], " entries for ", tokens, " tokens")
    slots = _index(slot_mapping, "slot_mapping")
    if slots.shape[0] > tokens:
        _fail("slot_mapping has ", slots.shape[0], " entries for ", tokens, " tokens")
    for weight, name in ((q_norm_weight, "q_norm_weight"), (k_norm_weight, "k_norm_weight")):
        if weight is None:
            continue
        weight = _tensor(weight, name)
        check_dim(weight, name, 1)
        if weight.shape[0] != head_size:
            _fail(name, " has ", weight.shape[0], " elements for head_size ", head_size)
        check_device(weight, name, q, "q")
        float_dtype(weight, name)
    _number(eps, "eps", float)
    _number(is_neox, "is_neox", bool)
    kc = _cache(key_cache, "key_cache", k_scale)
    vc = _cache(value_cache, "value_cache", v_scale)
    _caches(kc, vc, k.shape[1], head_size, head_size, q.dtype)
    table = _cos_sin(cos_sin_cache, head_size)
    if q.device.type != "cpu" and head_size > _MAX_FUSED_HEAD_SIZE:
        _fail("fused_qk_norm_rope_cache: head_size ", head_size, " is too large")
    _positions_in_range(positions, tokens, table.shape[0])
    _slots_in_range(slots, kc)

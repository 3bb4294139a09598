"""The Python argument checks of the native ops (atom/kernels/native_checks.py) against the C++
ones they mirror: for each bad input, the check raises ValueError before the op runs, and a
direct ``torch.ops.atom`` call (the C++ checks) raises ValueError with the same message. Valid
inputs pass the checks. CPU tensors only (the checks read metadata; the data range checks run on
CPU tensors only)."""

from __future__ import annotations

import pytest
import torch

native = pytest.importorskip("atom.kernels.native", reason="atom._C is not built")
from atom.kernels import native_checks as checks  # noqa: E402

T, HQ, HKV, D, BLOCKS, BLOCK = 4, 2, 1, 8, 2, 4


def _table(rot_dim: int = D, rows: int = 16) -> torch.Tensor:
    return torch.randn(rows, rot_dim)


def _qkv():
    return torch.randn(T, HQ, D), torch.randn(T, HKV, D), torch.randn(T, HKV, D)


def _caches(dtype=torch.float32):
    return tuple(torch.zeros(BLOCKS, BLOCK, HKV, D, dtype=dtype) for _ in range(2))


def _rope_args(**over):
    q, k, _ = _qkv()
    args = dict(positions=torch.arange(T), query=q, key=k, head_size=D,
                cos_sin_cache=_table(), is_neox=True)  # fmt: skip
    args.update(over)
    return args


def _cache_args(**over):
    _, k, v = _qkv()
    kc, vc = _caches()
    args = dict(key=k, value=v, key_cache=kc, value_cache=vc, slot_mapping=torch.arange(T))
    args.update(over)
    return args


def _fused_args(**over):
    q, k, v = _qkv()
    kc, vc = _caches()
    args = dict(q=q, k=k, v=v, q_norm_weight=torch.ones(D), k_norm_weight=torch.ones(D),
                eps=1e-6, positions=torch.arange(T), cos_sin_cache=_table(), is_neox=True,
                key_cache=kc, value_cache=vc, slot_mapping=torch.arange(T))  # fmt: skip
    args.update(over)
    return args


x16 = torch.randn(T, 16)
# (op, kwargs, a piece of the expected message)
BAD = [
    ("rms_norm", dict(x=x16, weight=torch.ones(8), eps=1e-6), "weight has 8 elements"),
    ("rms_norm", dict(x=x16.double(), weight=torch.ones(16), eps=1e-6), "unsupported dtype Double"),
    ("rms_norm", dict(x=x16, weight=torch.ones(4, 4), eps=1e-6), "weight must have 1 dims"),
    (
        "rms_norm",
        dict(x=x16.to(torch.float8_e4m3fn), weight=torch.ones(16), eps=1e-6),
        "x must be float32, bfloat16 or float16, got Float8_e4m3fn",
    ),  # fmt: skip
    ("rms_norm", dict(x=torch.tensor(1.0), weight=torch.ones(1), eps=1e-6), "at least one dim"),
    (
        "fused_add_rms_norm",
        dict(x=x16, residual=torch.randn(T, 8), weight=torch.ones(16), eps=1e-6),
        "residual has shape [4, 8]",
    ),  # fmt: skip
    ("silu_and_mul", dict(x=torch.randn(T, 15)), "silu_and_mul needs x [..., 2 * d]"),
    ("silu_and_mul", dict(x=torch.ones(T, 16, dtype=torch.int32)), "unsupported dtype Int"),
    (
        "rotary_embedding",
        _rope_args(positions=torch.arange(T).float()),
        "positions must be int64 or int32, got Float",
    ),  # fmt: skip
    (
        "rotary_embedding",
        _rope_args(key=torch.randn(T, HKV, D).half()),
        "query is Float but key is Half",
    ),  # fmt: skip
    ("rotary_embedding", _rope_args(query=torch.randn(T + 1, HQ, D)), "query has 5 tokens"),
    ("rotary_embedding", _rope_args(head_size=3), "not a multiple of head_size 3"),
    ("rotary_embedding", _rope_args(cos_sin_cache=_table(10)), "rot_dim 10 must be even"),
    (
        "rotary_embedding",
        _rope_args(positions=torch.tensor([0, 300, 1, 2])),
        "positions[1] = 300 is outside the cos_sin_cache (16 positions)",
    ),  # fmt: skip
    (
        "rotary_embedding",
        _rope_args(positions=torch.tensor([0, 1, -1, 2])),
        "positions[2] = -1 is outside",
    ),  # fmt: skip
    (
        "reshape_and_cache",
        _cache_args(slot_mapping=torch.tensor([0, 1, 2, 8])),
        "slot_mapping[3] = 8 is past the end of the cache (8 slots)",
    ),  # fmt: skip
    (
        "reshape_and_cache",
        _cache_args(key_cache=_caches(torch.half)[0], value_cache=_caches(torch.half)[1]),
        "the cache must have the activations' dtype or be fp8",
    ),  # fmt: skip
    (
        "reshape_and_cache",
        _cache_args(value_cache=torch.zeros(BLOCKS, BLOCK, HKV, 4)),
        "value_cache has 1 heads of 4 but value has 1 of 8",
    ),  # fmt: skip
    (
        "reshape_and_cache",
        _cache_args(slot_mapping=torch.arange(T + 1)),
        "slot_mapping has 5 tokens but key has 4",
    ),  # fmt: skip
    (
        "reshape_and_cache",
        _cache_args(key_cache=torch.zeros(BLOCKS, BLOCK, HKV)),
        "key_cache must have 4 dims",
    ),  # fmt: skip
    (
        "reshape_and_cache",
        _cache_args(
            key_cache=_caches(torch.float8_e4m3fn)[0],
            value_cache=_caches(torch.float8_e4m3fn)[1],
            k_scale=torch.ones(2),
        ),
        "the scale of key_cache must have one element, got shape [2]",
    ),  # fmt: skip
    (
        "fused_qk_norm_rope_cache",
        _fused_args(k_norm_weight=torch.ones(4)),
        "k_norm_weight has 4 elements for head_size 8",
    ),  # fmt: skip
    ("fused_qk_norm_rope_cache", _fused_args(v=torch.randn(T, 2, D)), "must be [T, Hq, D]"),
    (
        "fused_qk_norm_rope_cache",
        _fused_args(positions=torch.arange(T - 1)),
        "positions has 3 entries for 4 tokens",
    ),  # fmt: skip
    (
        "fused_qk_norm_rope_cache",
        _fused_args(slot_mapping=torch.tensor([0, 1, 2, 99])),
        "slot_mapping[3] = 99 is past the end",
    ),  # fmt: skip
]


@pytest.mark.parametrize(
    "op, kwargs, expected", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)]
)
def test_python_check_and_cpp_check_raise_the_same_value_error(op, kwargs, expected):
    snapshot = {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError) as from_python:
        getattr(native, op)(**kwargs)
    assert expected in str(from_python.value)
    # The wrapper raised before the op touched anything (in-place ops included).
    for name, before in snapshot.items():
        assert torch.equal(kwargs[name], before), f"{op} modified {name} before raising"
    # The C++ check, reached by calling the op directly, says the same.
    with pytest.raises(ValueError) as from_cpp:
        getattr(torch.ops.atom, op)(*kwargs.values())
    assert str(from_cpp.value) == str(from_python.value)


def test_valid_inputs_pass_the_checks():
    checks.rms_norm(x16, torch.ones(16, dtype=torch.bfloat16), 1e-6)
    checks.fused_add_rms_norm(x16, x16.clone(), torch.ones(16), 1e-6)
    checks.silu_and_mul(x16)
    checks.rotary_embedding(**_rope_args(query=torch.randn(T, HQ * D), positions=torch.arange(T,
                            dtype=torch.int32)))  # fmt: skip
    checks.reshape_and_cache(**_cache_args(slot_mapping=torch.tensor([0, -1, 7, 3])))
    fp8 = _caches(torch.float8_e4m3fn)
    checks.reshape_and_cache(**_cache_args(key_cache=fp8[0], value_cache=fp8[1],
                                           k_scale=torch.ones(1), v_scale=torch.ones(())))  # fmt: skip
    checks.fused_qk_norm_rope_cache(**_fused_args(q_norm_weight=None, slot_mapping=torch.arange(2)))


def test_scalar_arguments_are_checked():
    with pytest.raises(ValueError, match="eps must be float, got str"):
        native.rms_norm(x16, torch.ones(16), "1e-6")
    with pytest.raises(ValueError, match="head_size must be int, got float"):
        native.rotary_embedding(**_rope_args(head_size=8.0))
    with pytest.raises(ValueError, match="x must be a torch.Tensor, got list"):
        native.silu_and_mul([1.0, 2.0])

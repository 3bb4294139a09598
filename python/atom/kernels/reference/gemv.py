"""Small-batch linear layer with a fused prologue / epilogue, as the plain op sequence it replaces.

    a   = x                                   (plain)
        | rms_norm(x, norm_weight, eps)       (norm_weight given; rounded to x's dtype)
        | silu(x[:, :K]) * x[:, K:]           (act="silu_and_mul"; rounded to x's dtype)
    out = F.linear(a, weight, bias) (+ residual)

x: [M, K] or [M, 2K] (act) fp16 / bf16 / fp32; weight: [N, K] x's dtype; bias: [N] x's dtype;
norm_weight: [K] x's dtype or fp32; residual: [M, N] x's dtype; out: [M, N] in ``out_dtype``.
Returns [M, N] in ``out_dtype`` (``out`` when given, which may be ``residual`` itself when the
dtypes agree). ``out_dtype``: None (= x's dtype) or fp32, an fp32 result of 16-bit operands (the
LM head's logits). The Triton kernel (atom/kernels/triton/gemv.py) computes the same function in
one pass and stores its fp32 accumulator unrounded there; the unfused sequence here computes in
x's dtype and casts (as ``F.linear(x, W).float()`` does), one rounding to x's dtype further off.
``check_gemv_args`` is the contract both enforce.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from atom.kernels.reference.activation import silu_and_mul as silu_and_mul_ref
from atom.kernels.reference.norm import rms_norm_ref
from atom.kernels.registry import register

ACTIVATIONS = (None, "silu_and_mul")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def resolve_out_dtype(x: torch.Tensor, out_dtype: torch.dtype | None) -> torch.dtype:
    """The result's dtype: x's, or fp32 (raises ValueError for anything else)."""
    if out_dtype is None or out_dtype == x.dtype:
        return x.dtype
    if out_dtype != torch.float32:
        raise ValueError(f"out_dtype {out_dtype} is not supported; use None, {x.dtype} or fp32")
    return out_dtype


def check_gemv_args(
    x, weight, bias, norm_weight, act, residual, out, out_dtype=None
) -> tuple[int, int, int]:
    """Raises ValueError naming the offending value; returns (M, N, K)."""
    if act not in ACTIVATIONS:
        raise ValueError(f"act={act!r} is not supported; use one of {ACTIVATIONS}")
    if norm_weight is not None and act is not None:
        raise ValueError(f"norm_weight and act={act!r} are mutually exclusive")
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"x and weight must be 2-D, got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if x.dtype not in DTYPES:
        raise ValueError(f"x dtype {x.dtype} is not supported; use one of {DTYPES}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    m, n, k = x.shape[0], weight.shape[0], weight.shape[1]
    want_x = 2 * k if act is not None else k
    if x.shape[1] != want_x:
        raise ValueError(
            f"x has {x.shape[1]} columns; weight {tuple(weight.shape)} with act={act!r} needs {want_x}"
        )
    expect = {"bias": (bias, (n,)), "norm_weight": (norm_weight, (k,))}
    expect |= {"residual": (residual, (m, n)), "out": (out, (m, n))}
    for name, (t, shape) in expect.items():
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
        allowed = (x.dtype, torch.float32) if name == "norm_weight" else (x.dtype,)
        if name == "out":
            allowed = (resolve_out_dtype(x, out_dtype),)
        if t.dtype not in allowed:
            raise ValueError(f"{name} dtype {t.dtype} must be one of {allowed} (x is {x.dtype})")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device}, x on {x.device}")
    return m, n, k


def compose_gemv(
    x, weight, bias, norm_weight, eps, act, residual, out,
    rms_norm: Callable = rms_norm_ref, silu_and_mul: Callable = silu_and_mul_ref,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:  # fmt: skip
    """The unfused sequence with the given norm and activation ops (the torch references, or
    whatever the registry picks where a fast kernel does not apply), cast to ``out_dtype``."""
    if norm_weight is not None:
        x = rms_norm(x, norm_weight, eps)
    elif act is not None:
        x = silu_and_mul(x)
    y = F.linear(x, weight, bias)
    if residual is not None:
        y = y + residual
    if out is None:
        return y.to(resolve_out_dtype(x, out_dtype))
    return out.copy_(y)


@register("fused_gemv", "torch")
def fused_gemv_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    act: str | None = None,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: object = None,  # the Triton kernel's block config; ignored here
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    check_gemv_args(x, weight, bias, norm_weight, act, residual, out, out_dtype)
    return compose_gemv(x, weight, bias, norm_weight, eps, act, residual, out, out_dtype=out_dtype)

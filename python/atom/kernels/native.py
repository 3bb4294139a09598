"""The compiled ops of ``atom._C`` (csrc/) behind the torch references' signatures.

Importing this module loads the extension, which registers ``torch.ops.atom.*`` (CPU twins
always; CUDA/HIP kernels when the build had a GPU toolchain), and registers each op here as
backend ``native``. It raises ImportError when the extension was not built, so that
``atom.kernels.backends`` falls back to the other backends.

Each function computes the same thing as its reference in ``atom.kernels.reference`` and returns
the same values; where the reference docstring allows it, the result is written in place (the
inputs of fused_add_rms_norm, rotary_embedding and fused_qk_norm_rope_cache). Inputs may be
strided (e.g. q, k, v as views of one fused qkv output) as long as the innermost dim is
contiguous; other layouts are handled through a contiguous copy. Dtypes the kernels take:
activations float32 / bfloat16 / float16; weights and RoPE tables any of those; positions and
slot mappings int64 or int32; KV caches the activations' dtype or fp8 e4m3 (fn / fnuz) with an
optional per-tensor scale. Anything else raises ValueError naming the offending tensor: each
wrapper checks its arguments in Python first (``native_checks``), so a mistake never reaches C++
(on the H100 machine an error thrown inside an extension could crash the process).

On a GPU, positions outside the cos/sin cache and slots past the end of the KV cache are skipped
(a kernel cannot raise); the CPU twins reject them with ValueError, like the reference's
IndexError.
"""

from __future__ import annotations

import torch

import atom._C as _C  # noqa: F401  (raises ImportError when the extension is not built)
from atom.kernels import native_checks as checks
from atom.kernels import native_fake  # noqa: F401  (fake impls for torch.compile)
from atom.kernels.registry import register

#: "cuda", "hip" or "" (a CPU-only build).
GPU_BACKEND: str = _C.gpu_backend
#: The GPU architectures the kernels were compiled for ("90a", "gfx90a;gfx942", ...).
GPU_ARCHS: str = _C.gpu_archs

# ROCm GPUs are "cuda" devices in torch too.
_DEVICES = ("cpu", "cuda") if GPU_BACKEND else ("cpu",)

_ops = torch.ops.atom


@register("rms_norm", "native", devices=_DEVICES)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., hidden]; weight: [hidden]. Returns a new contiguous tensor in x's dtype."""
    checks.rms_norm(x, weight, eps)
    return _ops.rms_norm(x, weight, eps)


@register("fused_add_rms_norm", "native", devices=_DEVICES)
def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: residual <- x + residual (rounded to residual's dtype), x <- rms_norm(residual).
    Returns (x, residual)."""
    checks.fused_add_rms_norm(x, residual, weight, eps)
    if x.dtype != residual.dtype:
        # The kernel takes one dtype. The reference rounds the fp32 sum to residual's dtype and
        # normalizes that, returning it in residual's dtype: do exactly the same in two steps.
        residual.copy_(x.float() + residual.float())
        return _ops.rms_norm(residual, weight, eps), residual
    _ops.fused_add_rms_norm(x, residual, weight, eps)
    return x, residual


@register("silu_and_mul", "native", devices=_DEVICES)
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2 * d] = [gate | up]; returns silu(gate) * up: [..., d]."""
    checks.silu_and_mul(x)
    return _ops.silu_and_mul(x)


@register("rotary_embedding", "native", devices=_DEVICES)
def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """query: [T, Hq * head_size] or [T, Hq, head_size]; key likewise. Rotates both in place and
    returns (query, key)."""
    checks.rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox)
    _ops.rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox)
    return query, key


@register("reshape_and_cache", "native", devices=_DEVICES)
def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Writes key/value [>= T, Hkv, D] into the caches at slot_mapping [T] (-1 = skip)."""
    checks.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, k_scale, v_scale)
    _ops.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, k_scale, v_scale)


@register("fused_qk_norm_rope_cache", "native", devices=_DEVICES)
def fused_qk_norm_rope_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    eps: float,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [T, Hq, D], k/v: [T, Hkv, D]. Normalizes (optional) and rotates q and k in place,
    writes k and v to the caches, and returns (q, k)."""
    checks.fused_qk_norm_rope_cache(
        q, k, v, q_norm_weight, k_norm_weight, eps, positions, cos_sin_cache, is_neox,
        key_cache, value_cache, slot_mapping, k_scale, v_scale,
    )  # fmt: skip
    _ops.fused_qk_norm_rope_cache(
        q, k, v, q_norm_weight, k_norm_weight, eps, positions, cos_sin_cache, is_neox,
        key_cache, value_cache, slot_mapping, k_scale, v_scale,
    )  # fmt: skip
    return q, k

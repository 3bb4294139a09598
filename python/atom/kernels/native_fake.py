"""Fake (meta) implementations of the compiled ``torch.ops.atom`` ops, so that torch.compile and
``torch.library.opcheck`` can trace them without running them: each returns empty tensors of the
real op's shape, dtype, device and (contiguous) layout, and mutating ops return nothing.

The C++ library names this module (``set_python_module``), so torch points here if it is missing.
"""

from __future__ import annotations

import torch


@torch.library.register_fake("atom::rms_norm")
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x.new_empty(x.shape)


@torch.library.register_fake("atom::fused_add_rms_norm")
def _fused_add_rms_norm(x, residual, weight, eps) -> None:
    return None


@torch.library.register_fake("atom::silu_and_mul")
def _silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@torch.library.register_fake("atom::rotary_embedding")
def _rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox) -> None:
    return None


@torch.library.register_fake("atom::reshape_and_cache")
def _reshape_and_cache(
    key, value, key_cache, value_cache, slot_mapping, k_scale=None, v_scale=None
) -> None:
    return None


@torch.library.register_fake("atom::fused_qk_norm_rope_cache")
def _fused_qk_norm_rope_cache(
    q, k, v, q_norm_weight, k_norm_weight, eps, positions, cos_sin_cache, is_neox,
    key_cache, value_cache, slot_mapping, k_scale=None, v_scale=None,
) -> None:  # fmt: skip
    return None

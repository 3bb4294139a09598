"""Rotary position embedding (RoPE) with a precomputed cos/sin cache.

cos_sin_cache: [max_position, rot_dim] fp32, the first rot_dim/2 columns cos(pos * inv_freq_i), the
last rot_dim/2 sin(...). Only the first ``rot_dim`` features of each head rotate (partial rotary, GLM);
the rest pass through. Pairs are (i, i + rot_dim/2) in neox style and (2i, 2i+1) in gpt-j style:
    (a, b) -> (a cos - b sin, b cos + a sin)
"""

from __future__ import annotations

import torch

from atom.kernels.registry import register


def apply_rope_ref(
    x: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool
) -> torch.Tensor:
    """x: [num_tokens, num_heads, head_size]; returns the rotated copy in x's dtype."""
    rot_dim = cos_sin_cache.shape[-1]
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)  # [T, rot_dim/2]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    xf = x.float()
    rot, rest = xf[..., :rot_dim], xf[..., rot_dim:]
    if is_neox:
        a, b = rot.chunk(2, dim=-1)
        rotated = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([rotated, rest], dim=-1).to(x.dtype)


@register("rotary_embedding", "torch")
def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """query: [T, Hq * head_size] or [T, Hq, head_size]; key likewise. Returns (query, key) rotated."""
    q = apply_rope_ref(query.view(query.shape[0], -1, head_size), positions, cos_sin_cache, is_neox)
    k = apply_rope_ref(key.view(key.shape[0], -1, head_size), positions, cos_sin_cache, is_neox)
    return q.view_as(query), k.view_as(key)

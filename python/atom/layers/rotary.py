"""Rotary position embedding: the cos/sin cache that the attention kernels read.

Layout (atom/kernels/reference/rotary.py): ``cos_sin_cache`` [max_position, rotary_dim] fp32, row p
= [cos(p * inv_freq) | sin(p * inv_freq)] * attention_factor, inv_freq of length rotary_dim / 2.

Plain RoPE: inv_freq_i = theta^(-2i / rotary_dim). Scaled variants only change inv_freq (and, for
YaRN, the attention factor); each is one entry of ``_INV_FREQ`` keyed by the HF ``rope_type``:
- "linear": inv_freq / factor (position interpolation).
- "llama3": Llama 3.1's frequency-band rule: wavelengths longer than
  original_max_position / low_freq_factor are divided by factor, shorter than
  original_max_position / high_freq_factor kept, and those between interpolated with
  s = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor):
  inv_freq * ((1 - s) / factor + s).
- "yarn": YaRN (arXiv:2309.00071), in atom.layers.rotary_yarn (frequency ramp and mscale).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from atom.layers.rotary_yarn import yarn_inv_freq


def _plain_inv_freq(rotary_dim: int, theta: float) -> torch.Tensor:
    # Same expression and dtype as transformers, so the caches agree bit for bit.
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    return 1.0 / (theta**exponents)


def _linear(rotary_dim: int, theta: float, scaling: dict[str, Any]) -> tuple[torch.Tensor, float]:
    return _plain_inv_freq(rotary_dim, theta) / scaling["factor"], 1.0


def _llama3(rotary_dim: int, theta: float, scaling: dict[str, Any]) -> tuple[torch.Tensor, float]:
    inv_freq = _plain_inv_freq(rotary_dim, theta)
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, smoothed, scaled), 1.0


# rope_type -> f(rotary_dim, theta, scaling) -> (inv_freq [rotary_dim / 2] fp32, attention_factor)
_INV_FREQ: dict[str, Callable[[int, float, dict[str, Any]], tuple[torch.Tensor, float]]] = {
    "linear": _linear,
    "llama3": _llama3,
    "yarn": yarn_inv_freq,
}


class RotaryEmbedding(nn.Module):
    """Holds ``cos_sin_cache`` (a non-persistent fp32 buffer) and ``is_neox``.

    is_neox=True rotates the pairs (i, i + rotary_dim/2) (HF's rotate_half, Llama and most models);
    False the pairs (2i, 2i+1) (GPT-J style). The attention layer applies it, fused with the
    KV-cache write (atom.kernels.fused_qk_norm_rope_cache).
    """

    def __init__(
        self,
        head_dim: int,
        rotary_dim: int,
        max_position: int,
        theta: float,
        is_neox: bool = True,
        scaling: dict[str, Any] | None = None,
    ):
        super().__init__()
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(
                f"rotary_dim={rotary_dim} must be even and at most head_dim={head_dim}"
            )
        self.head_dim, self.rotary_dim, self.is_neox = head_dim, rotary_dim, is_neox
        rope_type = (scaling or {}).get("rope_type", "default")
        if rope_type == "default":
            inv_freq, attention_factor = _plain_inv_freq(rotary_dim, theta), 1.0
        elif rope_type in _INV_FREQ:
            inv_freq, attention_factor = _INV_FREQ[rope_type](rotary_dim, theta, scaling)
        else:
            raise ValueError(
                f"rope_type {rope_type!r} is not supported; supported: "
                f"{sorted(['default', *_INV_FREQ])} (add it to atom.layers.rotary._INV_FREQ)"
            )
        positions = torch.arange(max_position, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]  # [max_position, rotary_dim / 2]
        cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1) * attention_factor
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(self, positions, q, k):
        """q: [T, Hq, head_dim], k: [T, Hkv, head_dim] -> rotated (q, k). Attention layers use the
        fused kernel instead; this is for models that rotate outside of attention."""
        from atom import kernels

        return kernels.rotary_embedding(
            positions, q, k, self.head_dim, self.cos_sin_cache, self.is_neox
        )

    def extra_repr(self) -> str:
        positions, dim = self.cos_sin_cache.shape
        return f"rotary_dim={dim}, max_position={positions}, is_neox={self.is_neox}"


def get_rope(
    head_dim: int,
    rotary_dim: int,
    max_position: int,
    theta: float,
    is_neox: bool = True,
    scaling: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> RotaryEmbedding:
    """A RotaryEmbedding with its cache built in fp32 on ``device`` (whatever the default dtype)."""
    with torch.device(device or "cpu"):
        rope = RotaryEmbedding(head_dim, rotary_dim, max_position, theta, is_neox, scaling)
    return rope.to(torch.float32)

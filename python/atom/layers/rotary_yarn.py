"""YaRN rope scaling (Peng et al., "YaRN: Efficient Context Window Extension of Large Language
Models", arXiv:2309.00071), as transformers computes it (modeling_rope_utils._compute_yarn_parameters)
for DeepSeek-V3 / Kimi-K2, GPT-OSS and Qwen long-context configs.

Frequencies. With d = rotary_dim, base b, scale s = factor and L = original_max_position_embeddings,
pair i (i < d/2) has the unscaled frequency f_i = b^(-2i/d). YaRN keeps f_i for fast-rotating pairs
("extrapolation"), uses f_i / s for slow ones ("interpolation") and ramps linearly in between:
    inv_freq_i = f_i / s * (1 - e_i) + f_i * e_i,   e_i = 1 - clamp((i - lo) / (hi - lo), 0, 1)
where lo/hi are the pair indices that complete beta_fast / beta_slow rotations over L positions:
    dim(r) = d * ln(L / (2 pi r)) / (2 ln b),  lo = dim(beta_fast), hi = dim(beta_slow)
(floored/ceiled when ``truncate``, the default; clipped to [0, d - 1]).

Magnitude. cos/sin are multiplied by the attention factor: ``attention_factor`` if given, else
mscale(s, mscale) / mscale(s, mscale_all_dim) when both are set (DeepSeek), else mscale(s), with
mscale(s, m) = 0.1 * m * ln(s) + 1 for s > 1 (1 otherwise). DeepSeek's MLA additionally multiplies
the softmax scale by mscale(s, mscale_all_dim)^2 (``softmax_scale_multiplier``).
"""

from __future__ import annotations

import math
from typing import Any

import torch


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _factor(scaling: dict[str, Any]) -> float:
    factor = scaling.get("factor")
    if factor is None:
        raise ValueError(f"yarn rope scaling needs a 'factor'; got {scaling}")
    return float(factor)


def yarn_inv_freq(
    rotary_dim: int, theta: float, scaling: dict[str, Any]
) -> tuple[torch.Tensor, float]:
    """(inv_freq [rotary_dim / 2] fp32, attention_factor) for a "yarn" rope_scaling dict."""
    factor = _factor(scaling)
    if "original_max_position_embeddings" not in scaling:
        raise ValueError(
            f"yarn rope scaling needs 'original_max_position_embeddings'; got {scaling}"
        )
    original_len = scaling["original_max_position_embeddings"]
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def pair_index(rotations: float) -> float:  # which pair turns `rotations` times over L
        return (
            rotary_dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))
        )

    lo, hi = pair_index(beta_fast), pair_index(beta_slow)
    if scaling.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, rotary_dim - 1)
    if lo == hi:
        hi += 0.001  # a one-point ramp would divide by zero

    # Same expressions and dtypes as transformers, so the cos/sin caches agree bit for bit.
    pos_freqs = theta ** (torch.arange(0, rotary_dim, 2).to(dtype=torch.float) / rotary_dim)
    extrapolated = 1.0 / pos_freqs
    interpolated = 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(rotary_dim // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1)
    keep = 1 - ramp  # e_i: 1 for fast pairs (kept), 0 for slow ones (divided by the factor)
    inv_freq = interpolated * (1 - keep) + extrapolated * keep
    return inv_freq, float(attention_factor)


def softmax_scale_multiplier(scaling: dict[str, Any] | None) -> float:
    """DeepSeek's extra softmax-scale factor mscale(factor, mscale_all_dim)^2 (transformers'
    deepseek_v3 yarn_apply_mscale): 1 without rope scaling or without ``mscale_all_dim``."""
    if not scaling or scaling.get("rope_type", "default") == "default":
        return 1.0
    mscale_all_dim = scaling.get("mscale_all_dim", 0)
    if not mscale_all_dim:
        return 1.0
    m = yarn_mscale(_factor(scaling), mscale_all_dim)
    return m * m

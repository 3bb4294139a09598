"""Gated activation: x = [gate | up] along the last dim; y = silu(gate) * up."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atom.kernels.registry import register


@register("silu_and_mul", "torch")
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return (F.silu(x[..., :d].float()) * x[..., d:].float()).to(x.dtype)

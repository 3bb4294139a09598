"""Gated activations of the MLP: the input holds [gate | up] side by side."""

from __future__ import annotations

import torch
from torch import nn

from atom import kernels


class SiluAndMul(nn.Module):
    """x: [..., 2 * d] = [gate | up] -> silu(gate) * up: [..., d] (SwiGLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.silu_and_mul(x)


_ACTIVATIONS = {"silu": SiluAndMul}


def gated_activation(hidden_act: str) -> nn.Module:
    """The gated activation module for an HF ``hidden_act`` name."""
    if hidden_act not in _ACTIVATIONS:
        raise ValueError(
            f"unsupported hidden_act {hidden_act!r}; supported: {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[hidden_act]()

"""RMSNorm, optionally fused with the residual add that precedes it in a transformer block."""

from __future__ import annotations

import torch
from torch import nn

from atom import kernels


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 (atom.kernels.rms_norm).

    ``forward(x)`` returns y. ``forward(x, residual)`` first adds: r = x + residual, and returns
    (rms_norm(r), r), the pre-norm block's "normed input, new residual" pair in one kernel.
    x, residual: [num_tokens, hidden_size].
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return kernels.rms_norm(x, self.weight, self.eps)
        return kernels.fused_add_rms_norm(x, residual, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"

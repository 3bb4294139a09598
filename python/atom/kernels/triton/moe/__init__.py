"""Fused mixture-of-experts in Triton: expert alignment, grouped gate-up/down GEMMs, k-reduction.

Importing registers ``fused_moe`` for backend ``triton`` (CUDA/ROCm devices; on the CPU the tests
call ``fused_moe_triton`` directly under TRITON_INTERPRET=1).
"""

from atom.kernels.triton.moe.align import moe_align_block_size
from atom.kernels.triton.moe.config import CANDIDATES, MoeBlockConfig, pick_config
from atom.kernels.triton.moe.fused_moe import fused_moe_triton

__all__ = [
    "CANDIDATES",
    "MoeBlockConfig",
    "fused_moe_triton",
    "moe_align_block_size",
    "pick_config",
]

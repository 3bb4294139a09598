"""Triton kernels. Importing this package registers them with atom.kernels.registry.

Registered for CUDA (and ROCm, which torch also calls "cuda"): ``paged_attention`` (unified
prefill/mixed kernel and split-K decode kernel). On the CPU the kernels run under
``TRITON_INTERPRET=1``; tests call them directly there, the registry keeps the torch reference.

For CUDA graphs, ``paged_decode_attention`` with a persistent ``DecodeWorkspace`` and a fixed
``num_splits`` is the decode entry (see attention_decode for the capture/replay contract).
"""

import triton  # noqa: F401  (raises ImportError where triton is missing; backends.py catches it)

from atom.kernels.triton.attention_decode import (
    DecodeConfig,
    DecodeWorkspace,
    default_num_splits,
)
from atom.kernels.triton.attention_unified import UnifiedConfig
from atom.kernels.triton.paged_attention import paged_attention, paged_decode_attention

__all__ = [
    "DecodeConfig",
    "DecodeWorkspace",
    "UnifiedConfig",
    "default_num_splits",
    "paged_attention",
    "paged_decode_attention",
]

from atom.kernels.triton import mla_cache, mla_decode  # noqa: E402, F401, I001  (the MLA ops)
from atom.kernels.triton import moe  # noqa: E402, F401  (registers fused_moe)
from atom.kernels.triton import gemv  # noqa: E402, F401, I001  (registers fused_gemv)

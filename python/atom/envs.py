"""Every environment variable ATOM reads, in one place. Settings flow from here into the config
dataclasses; nothing else in the package reads ``os.environ`` for ATOM's own variables.

| variable                   | meaning                                                         |
|----------------------------|-----------------------------------------------------------------|
| ATOM_TORCH_PROFILER_DIR    | default of ``--torch-profiler-dir`` (traces in ``{dir}/rank_0``) |
| ATOM_PROFILER_MORE=1       | the profiler also records shapes, stacks and memory             |
| ATOM_CACHE_DIR             | cache root (the converted embedded model); ~/.cache/atom        |
| ATOM_API_KEY               | default of the server's ``--api-key``                           |
| OPENAI_API_KEY             | the serving benchmark's bearer token (as OpenAI clients do)     |
| SAVE_TO_PYTORCH_BENCHMARK_FORMAT | benchmark_serving also writes PyTorch-benchmark records   |
| ATOM_SMALL_BATCH_TOKENS    | GPU steps of at most this many tokens run the fused small-batch |
|                            | decoder layers (atom/layers/small_batch.py); 0 turns them off    |
| ATOM_PDL=0                 | Triton and native kernels launch without programmatic dependent  |
|                            | launch (atom/kernels/triton/pdl.py, csrc/gpu/pdl.cuh; on by      |
|                            | default on sm90+ CUDA; the native side reads it once per process)|
| ATOM_ATTN_TMA=0            | prefill attention reads the step's new K/V through pointers, not |
|                            | TMA tensor descriptors (attention_unified.descriptors_usable)    |
| ATOM_DECODE_ROPE=0         | decode steps run the QK-norm/RoPE/cache-write op before the      |
|                            | attention instead of inside the decode kernel (layers/attention) |
| ATOM_L2_PREFETCH=0         | the GPU decode attention kernel does not ask L2 for the          |
|                            | o-projection weight (atom/kernels/triton/l2_prefetch.py)         |
| TRITON_INTERPRET=1         | (Triton's) kernels run in its CPU interpreter: no PDL, no TMA    |
"""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = ("1", "true", "yes", "on")


def torch_profiler_dir() -> str | None:
    return os.environ.get("ATOM_TORCH_PROFILER_DIR") or None


def profiler_more() -> bool:
    return os.environ.get("ATOM_PROFILER_MORE", "0").strip().lower() in _TRUE


def cache_dir() -> Path:
    return Path(os.environ.get("ATOM_CACHE_DIR") or Path.home() / ".cache" / "atom")


def api_key() -> str | None:
    return os.environ.get("ATOM_API_KEY") or None


def openai_api_key() -> str | None:
    return os.environ.get("OPENAI_API_KEY") or None


def save_pytorch_benchmark_format() -> bool:
    return bool(os.environ.get("SAVE_TO_PYTORCH_BENCHMARK_FORMAT"))


def small_batch_tokens(default: int) -> int:
    value = os.environ.get("ATOM_SMALL_BATCH_TOKENS", "").strip()
    if not value:
        return default
    try:
        tokens = int(value)
    except ValueError:
        raise ValueError(f"ATOM_SMALL_BATCH_TOKENS={value!r} is not an integer") from None
    if tokens < 0:
        raise ValueError(f"ATOM_SMALL_BATCH_TOKENS={tokens} must be >= 0")
    return tokens


def pdl() -> bool:
    """Programmatic dependent launch for Triton and native kernels (default on; ``ATOM_PDL=0``
    turns it off; csrc/gpu/pdl.cuh parses the variable the same way)."""
    return os.environ.get("ATOM_PDL", "1").strip().lower() in _TRUE


def attn_tma() -> bool:
    """Prefill attention reads contiguous new K/V through TMA descriptors where it can (default
    on; ``ATOM_ATTN_TMA=0`` for the pointer loads)."""
    return os.environ.get("ATOM_ATTN_TMA", "1").strip().lower() in _TRUE


def decode_rope() -> bool:
    """The GPU decode kernel does QK-norm, RoPE and the cache write itself (default on;
    ``ATOM_DECODE_ROPE=0`` runs fused_qk_norm_rope_cache first, as prefill steps do)."""
    return os.environ.get("ATOM_DECODE_ROPE", "1").strip().lower() in _TRUE


def l2_prefetch() -> bool:
    """The GPU decode attention kernel asks L2 for the start of the o-projection weight (default
    on; ``ATOM_L2_PREFETCH=0`` turns it off)."""
    return os.environ.get("ATOM_L2_PREFETCH", "1").strip().lower() in _TRUE


def triton_interpreter() -> bool:
    """Triton kernels run in its CPU interpreter (``TRITON_INTERPRET`` set and not 0): GPU-only
    launch features (PDL, TMA descriptors) stay off."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

"""L2 prefetch of a weight: keep HBM busy while the decode attention waits on latency.

In a batch-1 decode step every weight is streamed once, but the attention between the qkv and the
o-projection GEMVs reads almost nothing (a short KV cache): for a few microseconds per layer it
waits on dependent loads and HBM is idle. The o-projection weight does not depend on the step's
activations, so the attention kernel may ask L2 for its first bytes meanwhile; the GEMV that
follows then finds them in L2. The request is ``cp.async.bulk.prefetch.L2`` (sm90+), carried out
by the TMA unit: no register holds the data and no thread waits for it. It is a hint: results
never depend on it. The CPU interpreter and ROCm never see it; ``ATOM_L2_PREFETCH=0`` turns it
off.

How much: at most L2_PREFETCH_BYTES. A program whose bulk prefetches are outstanding does not
retire, so a large request stretches the attention kernel that the combine and the GEMV wait for.
Measured on the H100 (Llama-3-8B shape, batch 1, graph replay of a step; o-projection 33.5 MB):
none 5.562 ms, 2 MiB 5.541, 4 MiB 5.526, 6 MiB 5.521, 8 MiB 5.514 (5.521 repeated), 12 MiB 5.529,
the whole weight 5.544. With PDL off the o-projection GEMV took 10.6 us instead of 13.5 whether
half or all of its weight was prefetched: its own ramp and tail, not bandwidth, are then its cost.
Tried and dropped: each fused-GEMV program prefetching its own weight rows before its
``gdc_wait`` (per-line ``prefetch.global.L2``: 6.41 ms a step; bulk: 6.27 ms).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from atom import envs

L2_PREFETCH_BYTES = 8 << 20  # the most a decode attention kernel asks L2 for (see above)
LINE_BYTES = tl.constexpr(128)  # one L2 line: shares are whole lines


@functools.cache
def _bulk_prefetch_device(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def l2_prefetch_enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` issue L2 prefetches: an NVIDIA GPU of compute capability
    9.0+ (the bulk prefetch), not the interpreter, and ``ATOM_L2_PREFETCH`` not 0."""
    if device.type != "cuda" or torch.version.hip is not None or envs.triton_interpreter():
        return False
    if not envs.l2_prefetch():
        return False
    return _bulk_prefetch_device(
        torch.cuda.current_device() if device.index is None else device.index
    )


def prefetch_extent(weight: torch.Tensor | None, device: torch.device) -> int:
    """How many leading elements of ``weight`` a kernel on ``device`` should ask L2 for: 0 when
    prefetching is off or the weight is not a 16-byte-aligned contiguous tensor, else up to
    L2_PREFETCH_BYTES of it."""
    if weight is None or not l2_prefetch_enabled(device):
        return 0
    if not weight.is_contiguous() or weight.data_ptr() % 16 != 0:
        return 0
    return min(weight.numel(), L2_PREFETCH_BYTES // weight.element_size())


@triton.jit
def prefetch_l2(base, begin, end, SLOTS: tl.constexpr):
    """Asks L2 for elements [begin, end) of ``base`` (int64 offsets; base 16-byte aligned) in SLOTS
    bulk requests, one contiguous 16-byte-aligned chunk each (SLOTS = the program's thread count:
    one request per thread). A few bytes at the ends may be left out: it is a hint."""
    ELEM_BYTES: tl.constexpr = base.dtype.element_ty.primitive_bitwidth // 8
    ALIGN: tl.constexpr = 16 // ELEM_BYTES  # elements per 16 bytes
    first = tl.cdiv(begin, ALIGN) * ALIGN
    chunk = tl.cdiv(tl.cdiv(tl.maximum(end - first, 0), SLOTS), ALIGN) * ALIGN
    starts = first + tl.arange(0, SLOTS).to(tl.int64) * chunk
    ends = tl.minimum(starts + chunk, end)
    nbytes = (tl.maximum(ends - starts, 0) * ELEM_BYTES // 16 * 16).to(tl.int32)
    tl.inline_asm_elementwise(
        "{\n\t.reg .pred p;\n\tsetp.ne.s32 p, $2, 0;\n\t"
        "@p cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.u32 $0, 0;\n\t}",
        "=r,l,r",
        [base + tl.minimum(starts, end), nbytes],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit
def prefetch_share_l2(base, numel, program, num_programs, SLOTS: tl.constexpr):
    """Program ``program`` of ``num_programs`` asks L2 for its equal, line-aligned share of
    elements [0, numel) of ``base``."""
    ELEMS: tl.constexpr = LINE_BYTES // (base.dtype.element_ty.primitive_bitwidth // 8)
    share = tl.cdiv(tl.cdiv(numel, ELEMS), num_programs) * ELEMS
    begin = program.to(tl.int64) * share
    prefetch_l2(base, begin, tl.minimum(begin + share, numel), SLOTS)

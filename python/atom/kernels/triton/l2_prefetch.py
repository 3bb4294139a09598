"""L2 prefetch of weights: keep HBM busy while a decode kernel waits on something else.

A batch-1 decode step streams every weight once, and HBM is idle wherever a kernel waits on
latency instead: at each kernel boundary (the next kernel's first loads go out only after the
previous one completed, ``gdc_wait``), and through the whole attention of a layer (a few
microseconds of dependent loads over a short KV cache). A weight does not depend on the step's
activations, so a kernel may ask L2 for it early, as ``prefetch.global.L2`` requests: no register
holds the data and nothing waits for it; the kernel that reads the weight later finds its lines in
L2 (or in flight). Two uses (``ATOM_L2_PREFETCH``, envs.l2_prefetch):
  - ``gemv``: each fused-GEMV program asks for its own weight rows before its ``gdc_wait``, so the
    programs launched early by PDL start streaming during the previous kernel's tail;
  - ``attn``: the decode attention kernel asks for the o-projection weight that the next GEMV
    reads (33.5 MB for a Llama-3-8B layer, within the H100's 50 MB L2), spread over its programs.
A prefetch is a hint: the result never depends on it. The instruction is PTX (NVIDIA only); the
CPU interpreter and ROCm never see it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from atom import envs

LINE_BYTES = tl.constexpr(128)  # one L2 line


def l2_prefetch_enabled(device: torch.device, part: str) -> bool:
    """Whether kernels on ``device`` issue the prefetches of ``part`` ("gemv" or "attn"): an
    NVIDIA GPU of compute capability 9.0+ (the bulk prefetch), not the interpreter, and ``part``
    in ATOM_L2_PREFETCH."""
    if device.type != "cuda" or torch.version.hip is not None or envs.triton_interpreter():
        return False
    if part not in envs.l2_prefetch():
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    return torch.cuda.get_device_capability(index)[0] >= 9


@triton.jit
def prefetch_l2(base, begin, end, SLOTS: tl.constexpr):
    """Asks L2 for elements [begin, end) of ``base`` (int64 offsets; base 16-byte aligned): SLOTS
    bulk requests (``cp.async.bulk.prefetch.L2``, carried out by the TMA unit, so the threads do
    not wait), one contiguous 16-byte-aligned chunk each; SLOTS = the program's thread count gives
    one request per thread. A few bytes at the ends may be left out (it is a hint)."""
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
    lines = tl.cdiv(numel, ELEMS)
    share = tl.cdiv(lines, num_programs) * ELEMS
    begin = program.to(tl.int64) * share
    end = tl.minimum(begin + share, numel)
    prefetch_l2(base, begin, end, SLOTS)

"""Greedy argmax of the logits: [B, V] -> [B] int64, the same result as torch.argmax(dim=-1).

Why a kernel: at batch 1 the logits are one long row (V = 128256 for Llama-3), and torch's reduce
kernel spreads a row over few blocks (27.8 us on the H100, ~10x the time to read 0.5 MB). Here the
row is split over many programs in two launches:
    stage 1, grid (B, cdiv(V, CHUNK)): program (b, c) reduces logits[b, c*CHUNK : (c+1)*CHUNK] to
             (max, lowest index of the max) in a [B, num_chunks] fp32 / int32 workspace;
    stage 2, grid (B,): program b reduces row b of the workspace the same way -> out[b].
CHUNK = 512 gives 251 programs for V = 128256 (about 2 per H100 SM, one 2 KB load each).

Order (torch's): a NaN is above every number, so the result is the index of the row's first NaN
when it has one; else of the largest value; ties go to the lowest index (-0.0 == 0.0 ties too).
Each reduction computes "has a NaN" and the max of the non-NaN values, marks the lanes that hold
the winner (the NaNs, or the values equal to the max) and takes the smallest marked index. A chunk
with a NaN reports NaN as its value, so stage 2 applies the same rule to the chunk results; chunk
indices grow with the chunk number, so the smallest index of the winners is the row's first.
Masked lanes read -inf and never win against a valid lane: stage 1's masked lanes come after the
row's last column, stage 2's carry an index above every column (every chunk has a valid lane).

No host reads of device values, shapes fixed by (B, V): capturable in a CUDA graph (the workspace
comes from the graph's memory pool when captured).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from atom.kernels.registry import register

CHUNK = 512  # stage 1's columns per program (the default for V up to MAX_CHUNKS * CHUNK)
MAX_CHUNKS = 1024  # stage 2 reduces at most this many chunk results per row in one load
MAX_VOCAB = 2**31 - 2  # column indices are int32 in the workspace
_NO_INDEX = tl.constexpr(2**31 - 1)  # above every column index


@triton.jit
def _max_and_first_index(v, idx, ok):
    """(max of v, smallest idx holding it) over the lanes ``ok`` of a 1-D block, in torch.argmax's
    order: any NaN is the max (and is returned as the value)."""
    is_nan = v != v
    has_nan = tl.max(is_nan.to(tl.int32), 0) > 0
    v_max = tl.max(tl.where(is_nan, float("-inf"), v), 0)
    wins = tl.where(has_nan, is_nan, v == v_max) & ok
    first = tl.min(tl.where(wins, idx, _NO_INDEX), 0)
    return tl.where(has_nan, float("nan"), v_max), first


@triton.jit
def _chunk_argmax_kernel(
    logits_ptr,  # [B, V], last dim contiguous
    chunk_max_ptr,  # [B, num_chunks] fp32
    chunk_idx_ptr,  # [B, num_chunks] int32
    V,
    stride_b,
    num_chunks,
    CHUNK: tl.constexpr,
):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    ok = cols < V
    v = tl.load(logits_ptr + row.to(tl.int64) * stride_b + cols, mask=ok, other=float("-inf"))
    best, first = _max_and_first_index(v.to(tl.float32), cols, ok)
    tl.store(chunk_max_ptr + row * num_chunks + chunk, best)
    tl.store(chunk_idx_ptr + row * num_chunks + chunk, first)


@triton.jit
def _final_argmax_kernel(
    chunk_max_ptr,  # [B, num_chunks] fp32
    chunk_idx_ptr,  # [B, num_chunks] int32
    out_ptr,  # [B] int64
    num_chunks,
    CHUNKS_PAD: tl.constexpr,  # next power of two >= num_chunks
):
    row = tl.program_id(0)
    c = tl.arange(0, CHUNKS_PAD)
    ok = c < num_chunks
    v = tl.load(chunk_max_ptr + row * num_chunks + c, mask=ok, other=float("-inf"))
    idx = tl.load(chunk_idx_ptr + row * num_chunks + c, mask=ok, other=_NO_INDEX)
    _, first = _max_and_first_index(v, idx, ok)
    tl.store(out_ptr + row, first.to(tl.int64))


def chunk_for(vocab: int) -> int:
    """Stage 1's chunk: CHUNK, smaller for a short row (one chunk), larger for a row of more than
    MAX_CHUNKS * CHUNK columns (so that stage 2 stays one load per row)."""
    wide = triton.next_power_of_2(triton.cdiv(vocab, MAX_CHUNKS))
    return max(16, min(CHUNK, triton.next_power_of_2(vocab)), wide)


def greedy_argmax(logits: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """logits [B, V] (fp32 / bf16 / fp16, last dim contiguous, row stride free) -> [B] int64,
    torch.argmax(logits, dim=-1) (module docstring). ``chunk`` (a power of two) overrides
    stage 1's columns per program (tests use small ones to get many chunk borders)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point or logits.dtype == torch.float64:
        raise ValueError(f"logits dtype {logits.dtype} is not supported (fp32, bf16, fp16)")
    batch, vocab = logits.shape
    if not 0 < vocab <= MAX_VOCAB:
        raise ValueError(f"logits have {vocab} columns; need 1 .. {MAX_VOCAB}")
    if vocab > 1 and logits.stride(1) != 1:
        raise ValueError(f"logits must be contiguous in their last dim, got {logits.stride()}")
    out = torch.empty(batch, dtype=torch.int64, device=logits.device)
    if batch == 0:
        return out
    chunk = chunk_for(vocab) if chunk is None else chunk
    if chunk & (chunk - 1) or chunk < 16:
        raise ValueError(f"chunk={chunk} must be a power of two >= 16")
    num_chunks = triton.cdiv(vocab, chunk)
    if num_chunks > MAX_CHUNKS:
        raise ValueError(f"chunk={chunk} leaves {num_chunks} chunks (at most {MAX_CHUNKS})")
    chunk_max = torch.empty(batch, num_chunks, dtype=torch.float32, device=logits.device)
    chunk_idx = torch.empty(batch, num_chunks, dtype=torch.int32, device=logits.device)
    _chunk_argmax_kernel[(batch, num_chunks)](
        logits, chunk_max, chunk_idx, vocab, logits.stride(0), num_chunks,
        CHUNK=chunk, num_warps=4,
    )  # fmt: skip
    _final_argmax_kernel[(batch,)](
        chunk_max, chunk_idx, out, num_chunks,
        CHUNKS_PAD=max(16, triton.next_power_of_2(num_chunks)), num_warps=4,
    )  # fmt: skip
    return out


@register("greedy_argmax", "triton", devices=("cuda",))
def greedy_argmax_registered(logits: torch.Tensor) -> torch.Tensor:
    return greedy_argmax(logits)

"""moe_align_block_size: group the T*k (token, slot) pairs by expert, padded to the GEMM's BLOCK_M.

The grouped GEMMs give every program BLOCK_M rows that all use ONE expert's weights. So the pairs
are laid out expert after expert, each expert's run padded up to a multiple of BLOCK_M:

    topk_ids (T=3, k=2)  = [[2, 0], [2, 1], [0, 2]]        pair p = t * k + j
    BLOCK_M = 4          ->  expert 0: pairs 1, 5 + 2 pads | expert 1: pair 3 + 3 pads |
                             expert 2: pairs 0, 2, 4 + 1 pad
    sorted_pairs         = [1, 5, N, N, 3, N, N, N, 0, 2, 4, N, N, ...]   (N = T*k: padding)
    block_experts        = [0, 1, 2, -1, ...]                            (-1: no work)
    num_padded           = [12]

Outputs have sizes that depend only on (T*k, E, BLOCK_M), never on the routing, so nothing syncs
with the host and CUDA graphs can capture it:
    max_padded = roundup(N + min(E, N) * (BLOCK_M - 1), BLOCK_M)  (each non-empty expert wastes at
    most BLOCK_M - 1 rows; empty experts take no blocks at all).

Two launches: a single-program "plan" (histogram of expert ids, padded exclusive cumsum, the expert
of every block, padding fill), then a parallel scatter that claims each pair's slot with an atomic
increment of its expert's cursor. The order of pairs inside an expert's run is therefore arbitrary,
which is harmless: each row of a GEMM tile is computed independently of the others, so results are
the same whatever the order. Ids outside [0, E) (experts of another expert-parallel rank, marked -1)
are dropped: they take no slot and the k-reduction skips them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _moe_align_plan_kernel(
    ids_ptr,  # [N] int32/int64 expert id of each pair
    cursor_ptr,  # [E] int32 out: first padded row of each expert (the scatter's cursors)
    block_experts_ptr,  # [max_blocks] int32 out
    num_padded_ptr,  # [1] int32 out
    sorted_pairs_ptr,  # [max_padded] int32 out: filled with the padding marker N here
    num_pairs,
    num_experts,
    max_padded,
    BLOCK_M: tl.constexpr,
    E_POW2: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_CHUNK: tl.constexpr,  # blocks per step of the owner search: a [BLOCK_CHUNK, E_POW2] compare
):
    counts = tl.zeros([E_POW2], dtype=tl.int32)
    for start in range(0, num_pairs, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        in_range = offs < num_pairs
        ids = tl.load(ids_ptr + offs, mask=in_range, other=0).to(tl.int32)
        valid = in_range & (ids >= 0) & (ids < num_experts)
        counts += tl.histogram(ids, E_POW2, mask=valid)

    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    padded_end = tl.cumsum(padded, 0)
    total = tl.sum(padded, 0)
    experts = tl.arange(0, E_POW2)
    tl.store(cursor_ptr + experts, padded_end - padded, mask=experts < num_experts)
    tl.store(num_padded_ptr, total)

    # Block b starts at row b * BLOCK_M; its expert is the number of experts whose padded run
    # ends at or before that row (runs are contiguous and ordered by expert id).
    max_blocks = max_padded // BLOCK_M
    for b0 in range(0, max_blocks, BLOCK_CHUNK):
        blocks = b0 + tl.arange(0, BLOCK_CHUNK)
        row = blocks * BLOCK_M
        owner = tl.sum((padded_end[None, :] <= row[:, None]).to(tl.int32), axis=1)
        owner = tl.where(row < total, owner, -1)
        tl.store(block_experts_ptr + blocks, owner, mask=blocks < max_blocks)

    for p0 in range(0, max_padded, CHUNK):
        rows = p0 + tl.arange(0, CHUNK)
        tl.store(
            sorted_pairs_ptr + rows,
            tl.full([CHUNK], 0, tl.int32) + num_pairs,
            mask=rows < max_padded,
        )


@triton.jit
def _moe_align_scatter_kernel(
    ids_ptr, cursor_ptr, sorted_pairs_ptr, num_pairs, num_experts, CHUNK: tl.constexpr
):
    pairs = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
    in_range = pairs < num_pairs
    ids = tl.load(ids_ptr + pairs, mask=in_range, other=0).to(tl.int32)
    valid = in_range & (ids >= 0) & (ids < num_experts)
    slot = tl.atomic_add(cursor_ptr + ids, 1, mask=valid)
    tl.store(sorted_pairs_ptr + slot, pairs, mask=valid)


def max_padded_rows(num_pairs: int, num_experts: int, block_m: int) -> int:
    bound = num_pairs + min(num_experts, num_pairs) * (block_m - 1)
    return triton.cdiv(bound, block_m) * block_m


def moe_align_block_size(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """topk_ids: [T, k] int32/int64. Returns (sorted_pairs [max_padded] int32,
    block_experts [max_padded // block_m] int32, num_padded [1] int32), see the module docstring."""
    if block_m < 1 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two, got {block_m}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    ids = topk_ids.reshape(-1)
    if not ids.is_contiguous():
        ids = ids.contiguous()
    num_pairs = ids.numel()
    max_padded = max_padded_rows(num_pairs, num_experts, block_m)
    device = ids.device
    sorted_pairs = torch.empty(max_padded, dtype=torch.int32, device=device)
    block_experts = torch.empty(max_padded // block_m, dtype=torch.int32, device=device)
    num_padded = torch.empty(1, dtype=torch.int32, device=device)
    cursor = torch.empty(num_experts, dtype=torch.int32, device=device)
    chunk = 256
    e_pow2 = triton.next_power_of_2(num_experts)
    _moe_align_plan_kernel[(1,)](
        ids, cursor, block_experts, num_padded, sorted_pairs,
        num_pairs, num_experts, max_padded,
        BLOCK_M=block_m, E_POW2=e_pow2, CHUNK=chunk,
        BLOCK_CHUNK=max(16, 8192 // e_pow2),
    )  # fmt: skip
    _moe_align_scatter_kernel[(triton.cdiv(max(num_pairs, 1), chunk),)](
        ids, cursor, sorted_pairs, num_pairs, num_experts, CHUNK=chunk
    )
    return sorted_pairs, block_experts, num_padded

"""Block configurations of the fused MoE kernels, chosen by the average rows per expert.

Decode (a few tokens): each touched expert gets only a handful of rows, so BLOCK_M is the smallest
tile the tensor cores take (16) and the work is spread over N; the kernel is bound by reading the
touched experts' weights. Prefill: many rows per expert, so larger M tiles reuse each weight tile
across more rows (compute bound). tools/bench_moe.py times every entry of CANDIDATES at each size
and prints the best, which is how the table below is meant to be revised on a new GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MoeBlockConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    def kernel_kwargs(self) -> dict:
        d = asdict(self)
        return {
            "BLOCK_M": d["block_m"],
            "BLOCK_N": d["block_n"],
            "BLOCK_K": d["block_k"],
            "GROUP_M": d["group_m"],
            "num_warps": d["num_warps"],
            "num_stages": d["num_stages"],
        }


DECODE = MoeBlockConfig(block_m=16, block_n=64, block_k=128, group_m=1, num_warps=4, num_stages=4)
SMALL_BATCH = MoeBlockConfig(
    block_m=32, block_n=64, block_k=64, group_m=4, num_warps=4, num_stages=4
)
PREFILL = MoeBlockConfig(block_m=64, block_n=128, block_k=64, group_m=8, num_warps=8, num_stages=3)

# What the benchmark sweeps (the three above plus neighbours).
CANDIDATES = (
    DECODE,
    MoeBlockConfig(block_m=16, block_n=32, block_k=128, group_m=1, num_warps=4, num_stages=4),
    MoeBlockConfig(block_m=16, block_n=128, block_k=64, group_m=1, num_warps=4, num_stages=4),
    SMALL_BATCH,
    PREFILL,
    MoeBlockConfig(block_m=128, block_n=128, block_k=64, group_m=8, num_warps=8, num_stages=3),
)


def pick_config(num_pairs: int, num_experts: int) -> MoeBlockConfig:
    """num_pairs = T * k routed rows. Rows per expert on average decides the M tile."""
    rows_per_expert = num_pairs / max(num_experts, 1)
    if rows_per_expert <= 4:
        return DECODE
    if rows_per_expert <= 32:
        return SMALL_BATCH
    return PREFILL

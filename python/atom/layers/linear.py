"""Linear layers that own their tensor-parallel sharding and their weight loaders.

Weights are [output_size, input_size] like ``torch.nn.Linear``; y = x @ W.T + b.
- ReplicatedLinear: every rank holds all of W.
- ColumnParallelLinear: rank r holds output rows [r * out/tp, (r+1) * out/tp); outputs stay sharded.
- MergedColumnParallelLinear: several column-parallel outputs stored as one matrix (gate_up_proj =
  [gate | up]); each checkpoint part is loaded into its own slice of every rank's shard.
- QKVParallelLinear: q, k, v heads as one matrix [q | k | v]; with more ranks than KV heads each
  KV head is replicated on tp / num_kv_heads ranks.
- RowParallelLinear: rank r holds input columns [r * in/tp, ...); partial outputs are summed
  (all-reduce) and the bias is added once, after the sum.

A checkpoint tensor always arrives whole; ``param.weight_loader(param, tensor[, shard_id])`` cuts
out this rank's piece, so tensor parallelism needs no loader changes. ``tp_rank``/``tp_size`` come
from the constructor (1 rank by default); ``tp_group`` is the process group of the all-reduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_divisible(value: int, tp_size: int, what: str) -> int:
    if value % tp_size:
        raise ValueError(f"{what}={value} is not divisible by tensor_parallel_size={tp_size}")
    return value // tp_size


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    """Copies a whole tensor into a parameter of the same shape (casting the dtype)."""
    if param.shape != loaded.shape:
        raise ValueError(
            f"weight of shape {tuple(loaded.shape)} does not fit parameter {tuple(param.shape)}"
        )
    param.data.copy_(loaded)


class LinearBase(nn.Module):
    """Holds ``weight`` [out_per_rank, in_per_rank] and an optional ``bias`` [out_per_rank]."""

    def __init__(
        self,
        in_per_rank: int,
        out_per_rank: int,
        bias: bool,
        tp_rank: int = 0,
        tp_size: int = 1,
        tp_group=None,
    ):
        super().__init__()
        if not 0 <= tp_rank < tp_size:
            raise ValueError(f"tp_rank={tp_rank} is outside tensor_parallel_size={tp_size}")
        self.tp_rank, self.tp_size, self.tp_group = tp_rank, tp_size, tp_group
        self.weight = nn.Parameter(torch.empty(out_per_rank, in_per_rank), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_per_rank), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        default_weight_loader(param, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_per_rank] -> [..., out_per_rank]."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        out, inp = self.weight.shape
        return f"in_per_rank={inp}, out_per_rank={out}, bias={self.bias is not None}, tp={self.tp_rank}/{self.tp_size}"


class ReplicatedLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False, **tp):
        super().__init__(input_size, output_size, bias, **tp)


class ColumnParallelLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False, **tp):
        tp_size = tp.get("tp_size", 1)
        super().__init__(
            input_size, _check_divisible(output_size, tp_size, "output_size"), bias, **tp
        )

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        rows = param.shape[0]
        default_weight_loader(param, loaded.narrow(0, self.tp_rank * rows, rows))


class MergedColumnParallelLinear(LinearBase):
    """Outputs ``[part 0 | part 1 | ...]`` (e.g. [gate | up]); shard_id is the part's index."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False, **tp):
        tp_size = tp.get("tp_size", 1)
        self.output_sizes = list(output_sizes)
        self.part_sizes = [_check_divisible(s, tp_size, "output_size") for s in output_sizes]
        super().__init__(input_size, sum(self.part_sizes), bias, **tp)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:  # an already merged checkpoint tensor: load each part in turn
            for part, piece in enumerate(loaded.split(self.output_sizes, dim=0)):
                self.weight_loader(param, piece, part)
            return
        if not 0 <= shard_id < len(self.part_sizes):
            raise ValueError(f"shard_id={shard_id} is not a part of {self.output_sizes}")
        size = self.part_sizes[shard_id]
        offset = sum(self.part_sizes[:shard_id])
        if loaded.shape[0] != self.output_sizes[shard_id]:
            raise ValueError(
                f"part {shard_id} has {loaded.shape[0]} rows, expected {self.output_sizes[shard_id]}"
            )
        default_weight_loader(
            param.data.narrow(0, offset, size), loaded.narrow(0, self.tp_rank * size, size)
        )


class QKVParallelLinear(LinearBase):
    """Outputs ``[q heads | k heads | v heads]`` of this rank: [(Hq + 2 Hkv) / tp * head_dim]."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool = False,
        **tp,
    ):
        tp_size = tp.get("tp_size", 1)
        self.head_dim = head_dim
        self.num_heads = _check_divisible(num_heads, tp_size, "num_attention_heads")
        if num_kv_heads >= tp_size:
            self.num_kv_heads = _check_divisible(num_kv_heads, tp_size, "num_key_value_heads")
        else:  # fewer KV heads than ranks: each rank keeps one, shared by tp / num_kv_heads ranks
            if tp_size % num_kv_heads:
                raise ValueError(
                    f"tensor_parallel_size={tp_size} is not a multiple of num_key_value_heads={num_kv_heads}"
                )
            self.num_kv_heads = 1
        self.kv_replicas = max(1, tp_size // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim
        super().__init__(hidden_size, out, bias, **tp)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id not in ("q", "k", "v"):
            raise ValueError(
                f"QKVParallelLinear shard_id must be 'q', 'k' or 'v', got {shard_id!r}"
            )
        q_rows = self.num_heads * self.head_dim
        kv_rows = self.num_kv_heads * self.head_dim
        if shard_id == "q":
            offset, rows, src = 0, q_rows, self.tp_rank * q_rows
        else:
            offset = q_rows if shard_id == "k" else q_rows + kv_rows
            rows, src = kv_rows, (self.tp_rank // self.kv_replicas) * kv_rows
        if src + rows > loaded.shape[0]:
            raise ValueError(f"{shard_id} weight with {loaded.shape[0]} rows is too small")
        default_weight_loader(param.data.narrow(0, offset, rows), loaded.narrow(0, src, rows))


class RowParallelLinear(LinearBase):
    """Input sharded over ranks; ``reduce_results=False`` leaves the partial sum to the caller
    (e.g. to fuse the all-reduce with the next norm)."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = False, reduce_results=True, **tp
    ):
        tp_size = tp.get("tp_size", 1)
        super().__init__(
            _check_divisible(input_size, tp_size, "input_size"), output_size, bias, **tp
        )
        self.reduce_results = reduce_results

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if param.dim() == 1:  # the bias is not sharded
            default_weight_loader(param, loaded)
            return
        cols = param.shape[1]
        default_weight_loader(param, loaded.narrow(1, self.tp_rank * cols, cols))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.tp_size > 1 and self.reduce_results:
            torch.distributed.all_reduce(y, group=self.tp_group)
        if self.bias is not None and (self.reduce_results or self.tp_rank == 0):
            y = y + self.bias
        return y

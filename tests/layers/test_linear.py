"""Tensor-parallel linear layers: every rank's shard, loaded from the whole checkpoint tensor,
recombines into the unsharded layer (column outputs concatenated, row partial sums added)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from atom.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)

HIDDEN = 24


def _load(layer, **tensors_by_shard):
    for shard, tensor in tensors_by_shard.items():
        layer.weight_loader(layer.weight, tensor, shard)


@pytest.mark.parametrize("tp_size", [1, 2, 3])
def test_column_parallel_concatenates(tp_size):
    w, b, x = torch.randn(12, HIDDEN), torch.randn(12), torch.randn(5, HIDDEN)
    outs = []
    for rank in range(tp_size):
        layer = ColumnParallelLinear(HIDDEN, 12, bias=True, tp_rank=rank, tp_size=tp_size)
        layer.weight.weight_loader(layer.weight, w)
        layer.bias.weight_loader(layer.bias, b)
        outs.append(layer(x))
    torch.testing.assert_close(torch.cat(outs, -1), F.linear(x, w, b))


@pytest.mark.parametrize("tp_size", [1, 2, 4])
def test_merged_column_parallel_keeps_parts_apart(tp_size):
    gate, up, x = torch.randn(8, HIDDEN), torch.randn(8, HIDDEN), torch.randn(3, HIDDEN)
    gates, ups = [], []
    for rank in range(tp_size):
        layer = MergedColumnParallelLinear(HIDDEN, [8, 8], tp_rank=rank, tp_size=tp_size)
        layer.weight_loader(layer.weight, up, 1)  # order of arrival must not matter
        layer.weight_loader(layer.weight, gate, 0)
        g, u = layer(x).chunk(2, dim=-1)
        gates.append(g)
        ups.append(u)
    torch.testing.assert_close(torch.cat(gates, -1), x @ gate.T)
    torch.testing.assert_close(torch.cat(ups, -1), x @ up.T)
    merged = MergedColumnParallelLinear(HIDDEN, [8, 8])
    merged.weight_loader(merged.weight, torch.cat([gate, up]))  # a pre-merged checkpoint tensor
    torch.testing.assert_close(merged(x), x @ torch.cat([gate, up]).T)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "tp_size"), [(4, 2, 1), (4, 2, 2), (8, 2, 4), (4, 1, 4)]
)
def test_qkv_parallel_shards_heads_and_replicates_kv(heads, kv_heads, tp_size):
    d = 6
    wq, wk, wv = (torch.randn(n * d, HIDDEN) for n in (heads, kv_heads, kv_heads))
    x = torch.randn(2, HIDDEN)
    q_parts = []
    for rank in range(tp_size):
        layer = QKVParallelLinear(HIDDEN, d, heads, kv_heads, tp_rank=rank, tp_size=tp_size)
        _load(layer, v=wv, q=wq, k=wk)
        q, k, v = layer(x).split(
            [layer.num_heads * d, layer.num_kv_heads * d, layer.num_kv_heads * d], dim=-1
        )
        q_parts.append(q)
        # This rank's query heads must see the KV head they are grouped with.
        first_q_head = rank * layer.num_heads
        kv_head = first_q_head // (heads // kv_heads)
        rows = slice(kv_head * d, kv_head * d + layer.num_kv_heads * d)
        torch.testing.assert_close(k, x @ wk[rows].T)
        torch.testing.assert_close(v, x @ wv[rows].T)
    torch.testing.assert_close(torch.cat(q_parts, -1), x @ wq.T)


@pytest.mark.parametrize("tp_size", [1, 2, 3])
def test_row_parallel_partial_sums_add_up(tp_size):
    w, b, x = torch.randn(10, 18), torch.randn(10), torch.randn(4, 18)
    total = 0
    for rank in range(tp_size):
        layer = RowParallelLinear(
            18, 10, bias=True, reduce_results=False, tp_rank=rank, tp_size=tp_size
        )
        layer.weight.weight_loader(layer.weight, w)
        layer.bias.weight_loader(layer.bias, b)
        cols = slice(rank * 18 // tp_size, (rank + 1) * 18 // tp_size)
        total = total + layer(x[:, cols])  # bias only from rank 0, so it is added once
    torch.testing.assert_close(total, F.linear(x, w, b))


def test_bad_shapes_and_settings_are_value_errors():
    with pytest.raises(ValueError, match="output_size=10"):
        ColumnParallelLinear(4, 10, tp_size=3, tp_rank=0)
    with pytest.raises(ValueError, match="num_key_value_heads=3"):
        QKVParallelLinear(8, 2, 8, 3, tp_size=4, tp_rank=0)
    with pytest.raises(ValueError, match="tp_rank=2"):
        ReplicatedLinear(4, 4, tp_rank=2, tp_size=2)
    layer = ReplicatedLinear(4, 4)
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        layer.weight.weight_loader(layer.weight, torch.zeros(4, 5))
    qkv = QKVParallelLinear(8, 2, 2, 2)
    with pytest.raises(ValueError, match="'x'"):
        qkv.weight_loader(qkv.weight, torch.zeros(4, 8), "x")

"""The decode kernel's L2 prefetch of the o-projection weight (atom.kernels.triton.l2_prefetch).

A prefetch is a hint: with and without it the decode output is bit-identical and the weight is
left as it was. On the CPU: the extent rules, the switches, and that the interpreter ignores the
argument; on a GPU (marked): the prefetching kernel itself, for weights below and above the byte
cap, of odd sizes and of 1-, 2- and 4-byte elements.
"""

from __future__ import annotations

import pytest
import torch

from atom import envs
from atom.kernels.triton import l2_prefetch
from atom.kernels.triton.l2_prefetch import L2_PREFETCH_BYTES, prefetch_extent
from atom.kernels.triton.paged_attention import paged_attention
from atom.kernels.triton.paged_testing import make_paged_batch

CPU = torch.device("cpu")


def test_extent_is_capped_and_needs_an_aligned_contiguous_weight(monkeypatch):
    monkeypatch.setattr(l2_prefetch, "l2_prefetch_enabled", lambda device: True)
    big = torch.zeros(2048, 4096, dtype=torch.bfloat16)  # 16 MiB
    assert prefetch_extent(big, CPU) == L2_PREFETCH_BYTES // 2
    small = torch.zeros(7, 13, dtype=torch.float32)
    assert prefetch_extent(small, CPU) == 7 * 13
    assert prefetch_extent(small.t(), CPU) == 0  # not contiguous
    assert prefetch_extent(big.view(-1)[1:], CPU) == 0  # 2 bytes past an aligned start
    assert prefetch_extent(None, CPU) == 0


def test_switches(monkeypatch):
    assert not l2_prefetch.l2_prefetch_enabled(CPU)
    monkeypatch.setenv("ATOM_L2_PREFETCH", "0")
    assert not envs.l2_prefetch()
    monkeypatch.setenv("ATOM_L2_PREFETCH", "1")
    assert envs.l2_prefetch()


def check_prefetch_changes_nothing(device, weight: torch.Tensor, num_splits: int) -> None:
    batch = make_paged_batch([1, 1, 1], [5, 70, 33], 8, 2, 64, 16, torch.bfloat16, device=device)
    args = (batch.q, batch.key_cache, batch.value_cache, batch.meta, 0.125)
    before = weight.clone()
    plain = paged_attention(*args, num_splits=num_splits)
    hinted = paged_attention(*args, num_splits=num_splits, l2_prefetch=weight)
    assert torch.equal(plain, hinted)
    assert torch.equal(weight.view(torch.uint8), before.view(torch.uint8))


@pytest.mark.parametrize("num_splits", [1, 3])
def test_interpreter_ignores_the_hint(num_splits):
    check_prefetch_changes_nothing("cpu", torch.randn(300, 64).to(torch.bfloat16), num_splits)


GPU_WEIGHTS = {
    "bf16-above-cap": ((4096, 4096), torch.bfloat16),
    "fp32-odd": ((7, 13), torch.float32),
    "fp8": ((300, 64), torch.float8_e4m3fn),
    "bf16-one-line": ((1, 64), torch.bfloat16),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("num_splits", [1, 4])
@pytest.mark.parametrize("name", sorted(GPU_WEIGHTS))
def test_gpu_prefetch_changes_nothing(name, num_splits):
    shape, dtype = GPU_WEIGHTS[name]
    weight = torch.randn(shape, device="cuda").to(dtype)
    if torch.cuda.get_device_capability()[0] >= 9:
        assert prefetch_extent(weight, weight.device) > 0  # the kernel really prefetches
    check_prefetch_changes_nothing("cuda", weight, num_splits)

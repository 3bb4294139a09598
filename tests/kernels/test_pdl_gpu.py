"""Programmatic dependent launch (atom.kernels.triton.pdl) in the decode-path Triton kernels.

CPU: the switch (``pdl_enabled``) is off on the CPU and under the interpreter, follows ATOM_PDL on
every call, and ``launch_options`` adds the launch keyword only when on.
GPU (Hopper+; run on the device): a decode layer's chain of PDL kernels, repeated over a few
layers, gives bit-identical results with PDL on and off, eagerly and as CUDA-graph replays with
new inputs, also with a plain torch kernel between two PDL kernels. A kernel that read an
activation before its ``gdc_wait`` (or stored before it) would race with the kernel before it and
show up here as a mismatch, most likely in the graph replays, where launches are back to back.
"""

from __future__ import annotations

import random

import pytest
import torch

from atom.kernels.triton import pdl
from atom.kernels.triton.pdl import launch_options, pdl_enabled

# --------------------------------------------------------------------------- CPU: the switch


def test_pdl_is_off_on_the_cpu(monkeypatch):
    monkeypatch.delenv("ATOM_PDL", raising=False)
    assert not pdl_enabled(torch.device("cpu"))
    assert launch_options(False) == {}
    assert launch_options(True) == {"launch_pdl": True}


def test_pdl_follows_the_environment_on_every_call(monkeypatch):
    """On a (pretended) Hopper GPU with a PDL-capable Triton: on by default, off with ATOM_PDL=0
    or under the interpreter, and read again on each call (not cached)."""
    monkeypatch.setattr(pdl, "_triton_supports_pdl", lambda: True)
    monkeypatch.setattr(pdl, "_device_supports_pdl", lambda index: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gpu = torch.device("cuda", 0)  # an explicit index: no CUDA call is made
    monkeypatch.delenv("ATOM_PDL", raising=False)
    assert pdl_enabled(gpu)
    monkeypatch.setenv("ATOM_PDL", "0")
    assert not pdl_enabled(gpu)
    monkeypatch.setenv("ATOM_PDL", "1")
    assert pdl_enabled(gpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl_enabled(gpu)
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(pdl, "_device_supports_pdl", lambda index: False)  # pre-Hopper
    assert not pdl_enabled(gpu)


# --------------------------------------------------------------------------- GPU: a decode chain
SHAPES = {
    # name: (hidden, Hq, Hkv, head_dim, intermediate)
    "awkward": (328, 6, 2, 64, 200),  # K not a multiple of any block: masked K tails
    "smollm2": (576, 9, 3, 64, 1536),
}
LAYERS = 3


class DecodeChain:
    """LAYERS decoder layers of M decode tokens with static buffers, as a captured step has them:
        qkv  = fused_gemv(h, W_qkv, bias, norm_weight=w_in)          (PDL, parameters prefetched)
        attn = decode_attention(q = qkv[:, :Hq*D], the fixed KV cache) (PDL, split + combine)
        [attn += 1, a plain torch kernel between two PDL kernels, when torch_between]
        h    = fused_gemv(attn, W_o, residual=h)                     (PDL, in place)
        gu   = fused_gemv(h, W_gu, norm_weight=w_post)
        h    = fused_gemv(gu, W_down, act="silu_and_mul", residual=h) (in place)
    Inputs per step: h and seq_lens (each at most the context the cache was built with)."""

    def __init__(self, shape: str, m: int, num_splits: int, torch_between: bool):
        from atom.kernels.triton.attention_decode import DecodeWorkspace
        from atom.kernels.triton.paged_testing import make_paged_batch

        hidden, hq, hkv, d, inter = SHAPES[shape]
        self.m, self.hq, self.d, self.num_splits = m, hq, d, num_splits
        self.torch_between = torch_between
        dev, dt = "cuda", torch.bfloat16
        g = torch.Generator(device=dev).manual_seed(m * 100 + num_splits)

        def rnd(*shape, scale=1.0):
            return (torch.randn(*shape, device=dev, generator=g) * scale).to(dt)

        qkv = (hq + 2 * hkv) * d
        self.layers = [
            dict(
                w_qkv=rnd(qkv, hidden, scale=hidden**-0.5),
                b_qkv=rnd(qkv, scale=0.1),
                w_in=rnd(hidden).abs() + 0.5,
                w_post=rnd(hidden).abs() + 0.5,
                w_o=rnd(hidden, hq * d, scale=(hq * d) ** -0.5),
                w_gu=rnd(2 * inter, hidden, scale=hidden**-0.5),
                w_down=rnd(hidden, inter, scale=inter**-0.5),
            )
            for _ in range(LAYERS)
        ]
        self.max_lens = [random.Random(m + i).randint(1, 700) for i in range(m)]
        batch = make_paged_batch([1] * m, self.max_lens, hq, hkv, d, 16, dt, device=dev, seed=m)
        self.key_cache, self.value_cache = batch.key_cache, batch.value_cache
        self.block_tables = batch.meta.block_tables
        self.cu_seqlens_q = torch.arange(m + 1, dtype=torch.int32, device=dev)
        self.seq_lens = batch.meta.seq_lens.clone()
        self.workspace = DecodeWorkspace(m, hq, d, num_splits, dev) if num_splits > 1 else None
        self.h = torch.empty(m, hidden, device=dev, dtype=dt)
        self.qkv = torch.empty(m, qkv, device=dev, dtype=dt)
        self.attn = torch.empty(m, hq * d, device=dev, dtype=dt)
        self.gu = torch.empty(m, 2 * inter, device=dev, dtype=dt)
        self.gen = g
        torch.cuda.synchronize()  # weights are written before any PDL kernel reads them

    def new_inputs(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = random.Random(1000 + step)
        lens = [rng.randint(1, n) for n in self.max_lens]
        h = torch.randn(self.h.shape, device="cuda", generator=self.gen).to(self.h.dtype)
        return h, torch.tensor(lens, dtype=torch.int32, device="cuda")

    def load(self, inputs) -> None:
        self.h.copy_(inputs[0])
        self.seq_lens.copy_(inputs[1])

    def step(self) -> None:
        from atom.kernels.triton.attention_decode import decode_attention
        from atom.kernels.triton.gemv import fused_gemv

        q = self.qkv[:, : self.hq * self.d].view(self.m, self.hq, self.d)
        attn = self.attn.view(self.m, self.hq, self.d)
        for p in self.layers:
            fused_gemv(self.h, p["w_qkv"], p["b_qkv"], norm_weight=p["w_in"], eps=1e-5,
                       out=self.qkv)  # fmt: skip
            decode_attention(
                q, self.key_cache, self.value_cache, attn, self.cu_seqlens_q, self.seq_lens,
                self.block_tables, self.d**-0.5, None, None, None, None, self.num_splits,
                self.workspace,
            )  # fmt: skip
            if self.torch_between:
                self.attn.add_(1)
            fused_gemv(self.attn, p["w_o"], residual=self.h, out=self.h)
            fused_gemv(self.h, p["w_gu"], norm_weight=p["w_post"], eps=1e-5, out=self.gu)
            fused_gemv(self.gu, p["w_down"], act="silu_and_mul", residual=self.h, out=self.h)

    def outputs(self) -> list[torch.Tensor]:
        return [t.clone() for t in (self.h, self.qkv, self.attn, self.gu)]


def _run(chain: DecodeChain, inputs: list, graph: bool) -> list[list[torch.Tensor]]:
    """The chain's outputs for each input: eager calls, or one capture replayed per input."""
    results = []
    if not graph:
        for x in inputs:
            chain.load(x)
            chain.step()
            torch.cuda.synchronize()
            results.append(chain.outputs())
        return results
    chain.load(inputs[0])
    chain.step()  # compile outside the capture (per USE_PDL value)
    torch.cuda.synchronize()
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        chain.step()
    for x in inputs:
        chain.load(x)
        cuda_graph.replay()
        torch.cuda.synchronize()
        results.append(chain.outputs())
    return results


@pytest.mark.gpu
@pytest.mark.parametrize("torch_between", [False, True])
@pytest.mark.parametrize("m, num_splits", [(1, 4), (3, 1), (7, 3)])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_decode_chain_is_bit_identical_with_pdl(monkeypatch, shape, m, num_splits, torch_between):
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    monkeypatch.delenv("ATOM_PDL", raising=False)
    if not pdl_enabled(torch.device("cuda")):
        assert torch.cuda.get_device_capability()[0] < 9, "Hopper+ but PDL off: Triton too old?"
        pytest.skip("PDL needs compute capability 9.0+")
    chain = DecodeChain(shape, m, num_splits, torch_between)
    inputs = [chain.new_inputs(step) for step in range(3)]

    monkeypatch.setenv("ATOM_PDL", "0")
    assert not pdl_enabled(torch.device("cuda"))
    want = _run(chain, inputs, graph=False)
    for outs in want:
        assert all(t.isfinite().all() for t in outs)
    runs = {"no PDL, graph": _run(chain, inputs, graph=True)}
    monkeypatch.setenv("ATOM_PDL", "1")
    assert pdl_enabled(torch.device("cuda"))
    runs["PDL, eager"] = _run(chain, inputs, graph=False)
    runs["PDL, graph"] = _run(chain, inputs, graph=True)
    names = ["h", "qkv", "attn", "gu"]
    for run, got in runs.items():
        for step, (outs, refs) in enumerate(zip(got, want)):
            for name, out, ref in zip(names, outs, refs):
                assert torch.equal(out, ref), f"{run}, input {step}: {name} differs"

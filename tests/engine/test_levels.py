"""torch.compile of the decode step (levels 2 and 3) on the CPU: it traces as one graph, the
native ops and the opaque custom ops (Triton launchers, references) included, and it computes
what the eager step computes, KV-cache writes included. The inductor run also checks that the
generated code writes the cache in place (no copy of it)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from atom import SamplingParams
from atom.engine.compile import compile_decode_step
from atom.forward_context import AttentionMetadata
from atom.kernels import opaque

from .test_cuda_graph import install_padded_decode


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 40000) for _ in range(rng.randint(3, 20))] for _ in range(n)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_decode_step_traces_as_one_graph_and_matches_eager(make_engine):
    """backend="eager": dynamo only (fast); fullgraph=True makes any graph break an error."""
    sp = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (4, 6, 9)]
    batch = prompts(3)
    want = [o["token_ids"] for o in make_engine().generate(batch, sp)]
    engine = make_engine()
    runner = engine.runner
    install_padded_decode(
        engine, forward=compile_decode_step(runner.decode_step_forward, backend="eager")
    )
    assert [o["token_ids"] for o in engine.generate(batch, sp)] == want


def test_one_compile_serves_every_batch_size_but_one(make_engine):
    """Sizes 8, 4, 2 share one dynamic-shape graph (no duck-sizing ties, no view-of-whole-buffer
    guard); only B = 1 is specialized: two graphs. Each engine compiles its own (they do not
    share dynamo's per-code-object cache, so many engines never exhaust it)."""
    from torch._dynamo.utils import counters

    from atom.engine.compile import warm_up_settings

    for expected_new_graphs in (2, 2, 2, 2, 2):
        runner = make_engine(block_size=4).runner
        before = counters["stats"]["unique_graphs"]
        forward = compile_decode_step(runner.decode_step_forward, backend="eager")
        with warm_up_settings(compiled=True):
            install_padded_decode(SimpleNamespace(runner=runner), forward=forward)
        assert counters["stats"]["unique_graphs"] - before == expected_new_graphs


def _decode_inputs(runner, n: int):
    """A decode batch of n sequences of lengths 3..: blocks 0.. in order (cache prefilled)."""
    bs = runner.block_size
    lens = [3 + 2 * i for i in range(n)]
    tables, first = [], 0
    for length in lens:
        count = -(-length // bs)
        tables.append(list(range(first, first + count)))
        first += count
    width = max(len(t) for t in tables)
    meta = AttentionMetadata(
        cu_seqlens_q=torch.arange(n + 1, dtype=torch.int32),
        seq_lens=torch.tensor(lens, dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        slot_mapping=torch.tensor(
            [t[(length - 1) // bs] * bs + (length - 1) % bs for t, length in zip(tables, lens)]
        ),
        max_seqlen_q=1,
        max_seqlen_k=64,
    )
    ids = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(n))
    return ids, torch.tensor([length - 1 for length in lens]), meta


@pytest.mark.slow
def test_inductor_decode_step_writes_the_cache_in_place(make_engine):
    """The real compile (inductor, C++ on the CPU): same logits, greedy ids and KV-cache
    contents as the eager step, and no copy of any tensor in the generated code (a functional
    rewrite of the in-place cache write would copy the whole cache every step)."""
    from torch._inductor.utils import run_and_get_code

    engine = make_engine(cpu_kv_cache_bytes=1 << 20, block_size=4)
    runner = engine.runner
    for k, v in runner.kv_caches:
        k.normal_(generator=torch.Generator().manual_seed(1))
        v.normal_(generator=torch.Generator().manual_seed(2))
    start = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    ids, pos, meta = _decode_inputs(runner, 4)
    with torch.inference_mode():
        want_logits, want_ids = runner.decode_step_forward(ids, pos, meta)
        want_cache = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
        for (k, v), (k0, v0) in zip(runner.kv_caches, start):
            k.copy_(k0)
            v.copy_(v0)
        compiled = compile_decode_step(runner.decode_step_forward)
        (got_logits, got_ids), codes = run_and_get_code(compiled, ids, pos, meta)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_ids, want_ids)
    for (k, v), (wk, wv) in zip(runner.kv_caches, want_cache):
        torch.testing.assert_close(k, wk, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(v, wv, atol=1e-6, rtol=1e-6)
    code = "\n".join(codes)
    assert "fused_qk_norm_rope_cache" in code and "atom_py.paged_attention" in code
    assert "copy_(" not in code and "clone" not in code


def test_opaque_ops_pass_opcheck():
    """Schema, fake impl and declared mutation of the opaque attention op (torch reference
    behind it on the CPU)."""
    torch.manual_seed(0)
    num_blocks, block_size, hkv, hq, d = 6, 4, 2, 4, 16
    k_cache = torch.randn(num_blocks, block_size, hkv, d)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(3, hq, d)
    out = torch.zeros_like(q)
    args = (
        q, k_cache, v_cache, out, torch.tensor([0, 1, 2, 3], dtype=torch.int32),
        torch.tensor([5, 2, 7], dtype=torch.int32),
        torch.tensor([[0, 1], [2, 0], [3, 4]], dtype=torch.int32), torch.tensor([4, 9, 17]),
        1, 7, 0.25, 0, None, None, None,
    )  # fmt: skip
    torch.library.opcheck(opaque._paged_attention_op, args)

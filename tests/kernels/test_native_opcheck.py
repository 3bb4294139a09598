"""The registered ``torch.ops.atom`` ops are well-formed for torch's tooling: torch.library.opcheck
(schema vs. actual mutation/aliasing, fake-tensor implementation, autograd registration, AOT
dispatch) for every op, and a torch.compile(fullgraph=True) trace through the native wrappers
that matches eager execution (functionalization of the in-place ops included).
"""

from __future__ import annotations

import pytest
import torch

native = pytest.importorskip("atom.kernels.native", reason="atom._C is not built")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def sample_args(device: str, dtype=torch.bfloat16, cache_dtype=None) -> dict[str, tuple]:
    """Small arguments for every op: T=5 tokens, 4 q heads, 2 kv heads, head 16, q/k/v as views
    of one fused qkv output, an fp8-capable cache with 3 blocks of 4 slots."""
    t, hq, hkv, d = 5, 4, 2, 16
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device=device).to(dtype)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q, k, v = q.view(t, hq, d), k.view(t, hkv, d), v.view(t, hkv, d)
    cache_dtype = cache_dtype or dtype
    kc = torch.zeros(3, 4, hkv, d, device=device).to(cache_dtype)
    vc = torch.zeros(3, 4, hkv, d, device=device).to(cache_dtype)
    slots = torch.tensor([3, -1, 0, 11, 7], device=device)
    positions = torch.tensor([4, 0, 2, 9, 1], device=device)
    table = torch.randn(12, d, device=device)
    x = torch.randn(t, 24, device=device).to(dtype)
    w = torch.randn(24, device=device).to(dtype)
    scale = torch.tensor([0.5], device=device)
    return {
        "rms_norm": (x, w, 1e-6),
        "fused_add_rms_norm": (x.clone(), torch.randn_like(x), w, 1e-6),
        "silu_and_mul": (x,),
        "rotary_embedding": (positions, q.clone(), k.clone(), d, table, True),
        "reshape_and_cache": (k, v, kc, vc, slots, scale, scale),
        "fused_qk_norm_rope_cache": (
            q.clone(),
            k.clone(),
            v,
            torch.ones(d, device=device),
            None,
            1e-6,
            positions,
            table,
            False,
            kc.clone(),
            vc.clone(),
            slots,
            scale,
            None,
        ),  # fmt: skip
    }


CASES = [
    ("rms_norm", None),
    ("fused_add_rms_norm", None),
    ("silu_and_mul", None),
    ("rotary_embedding", None),
    ("reshape_and_cache", None),
    ("reshape_and_cache", torch.float8_e4m3fn),
    ("fused_qk_norm_rope_cache", None),
    ("fused_qk_norm_rope_cache", torch.float8_e4m3fn),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, cache_dtype", CASES)
def test_opcheck(device, op, cache_dtype):
    utils = [
        "test_schema",
        "test_autograd_registration",
        "test_faketensor",
        "test_aot_dispatch_dynamic",
    ]
    if cache_dtype is not None:
        # test_schema compares results with arithmetic that torch lacks for fp8 on the CPU.
        utils.remove("test_schema")
    torch.library.opcheck(
        getattr(torch.ops.atom, op),
        sample_args(device, cache_dtype=cache_dtype)[op],
        test_utils=utils,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_matches_eager(device):
    """One attention-block-like step through the native wrappers, compiled without graph breaks."""

    def step(x, residual, w, qkv_w, positions, table, kc, vc, slots):
        h, residual = native.fused_add_rms_norm(x, residual, w, 1e-6)
        qkv = h @ qkv_w  # [T, (4 + 2 + 2) * 16]
        q, k, v = qkv.split([64, 32, 32], dim=-1)
        q, k, v = q.view(-1, 4, 16), k.view(-1, 2, 16), v.view(-1, 2, 16)
        q, k = native.fused_qk_norm_rope_cache(
            q, k, v, None, None, 1e-6, positions, table, True, kc, vc, slots
        )
        gate_up = torch.cat([q.flatten(1), k.flatten(1)], dim=-1)  # [T, 96]
        return native.silu_and_mul(gate_up), residual

    torch.manual_seed(0)
    t = 5
    inputs = (
        torch.randn(t, 24, device=device), torch.randn(t, 24, device=device),
        torch.randn(24, device=device), torch.randn(24, 128, device=device) / 5,
        torch.tensor([4, 0, 2, 9, 1], device=device), torch.randn(12, 16, device=device),
        torch.zeros(3, 4, 2, 16, device=device), torch.zeros(3, 4, 2, 16, device=device),
        torch.tensor([3, -1, 0, 11, 7], device=device),
    )  # fmt: skip
    eager_inputs = [a.clone() for a in inputs]
    compiled_inputs = [a.clone() for a in inputs]
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_out = step(*eager_inputs)
    compiled_out = compiled(*compiled_inputs)
    for e, c in zip(eager_out, compiled_out):
        torch.testing.assert_close(c, e)
    # The mutated arguments (residual, caches) are updated in the compiled run too.
    for e, c in zip(eager_inputs, compiled_inputs):
        torch.testing.assert_close(c, e, equal_nan=True)


@pytest.mark.gpu
def test_cuda_graph_capture_and_replay():
    """The ops run on torch's current stream and allocate nothing that breaks capture: a captured
    graph replayed on new input values gives what eager execution gives on those values."""
    device = "cuda"
    static = sample_args(device, cache_dtype=torch.float8_e4m3fn)
    norm_args, fused_args = static["rms_norm"], static["fused_qk_norm_rope_cache"]

    def step():
        out = torch.ops.atom.rms_norm(*norm_args)
        torch.ops.atom.fused_qk_norm_rope_cache(*fused_args)
        return out

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_out = step()

    fresh = sample_args(device, cache_dtype=torch.float8_e4m3fn)  # new values, same shapes
    for static_t, fresh_t in zip(
        [*norm_args, *fused_args], [*fresh["rms_norm"], *fresh["fused_qk_norm_rope_cache"]]
    ):
        if isinstance(static_t, torch.Tensor):
            static_t.copy_(fresh_t)
    graph.replay()
    eager_out = torch.ops.atom.rms_norm(*fresh["rms_norm"])
    torch.ops.atom.fused_qk_norm_rope_cache(*fresh["fused_qk_norm_rope_cache"])
    torch.testing.assert_close(graph_out, eager_out)
    for name, i in [("q", 0), ("k", 1), ("key_cache", 9), ("value_cache", 10)]:
        got, want = fused_args[i], fresh["fused_qk_norm_rope_cache"][i]
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name

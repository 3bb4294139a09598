"""Triton fused GEMV (norm / SiLU prologue, bias + residual epilogue) vs its torch reference.

CPU interpreter in CI (TRITON_INTERPRET=1), the GPU on the device. Tolerance (DESIGN.md rule 10):
against an fp32 ground truth (the reference on fp32 copies of the inputs) the kernel may be at most
~2x as far off as the torch reference run at the kernel's precision. Inputs are column slices of
NaN-filled buffers (rule 11): the kernel must read only the [M, K] / [M, N] views.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from atom.kernels.reference.gemv import fused_gemv_reference
from conftest import ROOT, run_real_compiler


def _poisoned(rows: int, cols: int, values: torch.Tensor, pad: int = 8) -> torch.Tensor:
    """values [rows, cols] as a view with row stride cols + pad into a NaN-filled buffer."""
    buf = torch.full((rows, cols + pad), float("nan"), dtype=values.dtype, device=values.device)
    view = buf[:, :cols]
    view.copy_(values)
    return view


# option name -> (norm, act, residual, bias)
OPTIONS = {
    "plain": (False, False, False, False),
    "norm": (True, False, False, False),
    "silu": (False, True, False, False),
    "residual": (False, False, True, False),
    "norm+residual": (True, False, True, False),
    "bias": (False, False, False, True),
    "silu+residual": (False, True, True, False),
    "norm+bias+residual": (True, False, True, True),
}


def _problem(m, k, n, option, dtype, device, seed=0):
    """(args, kwargs) of one fused_gemv call; x and residual are poisoned strided views."""
    norm, act, residual, bias = OPTIONS[option]
    g = torch.Generator().manual_seed(seed)
    kx = 2 * k if act else k
    x = torch.randn(m, kx, generator=g)
    if norm:
        x = 3 * x + 1  # an RMS far from 1, so a missing norm shows
    w = torch.randn(n, k, generator=g) / k**0.5
    kwargs = {}
    if norm:
        kwargs["norm_weight"] = (0.5 + torch.rand(k, generator=g)).to(device, dtype)
        kwargs["eps"] = 1e-5
    if act:
        kwargs["act"] = "silu_and_mul"
    if residual:
        r = 4 * torch.randn(m, n, generator=g)
        kwargs["residual"] = _poisoned(m, n, r.to(device, dtype))
    b = torch.randn(n, generator=g).to(device, dtype) if bias else None
    return (_poisoned(m, kx, x.to(device, dtype)), w.to(device, dtype), b), kwargs


def _f32(v):
    return v.float() if isinstance(v, torch.Tensor) else v


def _assert_close_to_truth(out, args, kwargs):
    x = args[0]
    truth = fused_gemv_reference(*map(_f32, args), **{k: _f32(v) for k, v in kwargs.items()})
    assert out.dtype == x.dtype and out.shape == truth.shape
    assert torch.isfinite(out).all()
    if x.dtype == torch.float32:
        torch.testing.assert_close(out, truth, rtol=2e-5, atol=2e-5)
        return
    torch_lowp = fused_gemv_reference(*args, **kwargs)
    ref_err = (torch_lowp.float() - truth).abs().max().item()
    err = (out.float() - truth).abs().max().item()
    ulp = 2.0**-8 if x.dtype == torch.bfloat16 else 2.0**-11
    floor = ulp * truth.abs().max().item()
    assert err <= 2 * ref_err + floor, f"kernel err {err:.3g} vs torch-{x.dtype} err {ref_err:.3g}"


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(m, k, n) for m in (1, 3, 16) for k, n in ((64, 40), (72, 200), (568, 96))]


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matches_reference(device, m, k, n, dtype, option):
    from atom.kernels.triton.gemv import fused_gemv

    args, kwargs = _problem(m, k, n, option, dtype, device, seed=m + k + n)
    residual_before = kwargs["residual"].clone() if "residual" in kwargs else None
    out = fused_gemv(*args, **kwargs)
    _assert_close_to_truth(out, args, kwargs)
    if residual_before is not None:  # an input, not an output, unless passed as out
        assert torch.equal(kwargs["residual"], residual_before)


def _configs(m, n, k, dtype):
    from atom.kernels.triton.gemv import GemvConfig, default_gemv_config, interpreter_config

    return {
        "gpu-default": default_gemv_config(m, n, k, dtype),
        "interpreter": interpreter_config(m, n, k),
        "reduce": GemvConfig(block_n=8, block_k=32, num_warps=2),
        "dot": GemvConfig(block_n=16, block_k=32, num_stages=3, use_dot=True),
        "dot-wide": GemvConfig(block_n=64, block_k=128, num_warps=8, num_stages=2, use_dot=True),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m,k,n", [(1, 576, 72), (2, 96, 130), (4, 64, 40), (7, 72, 48)])
def test_every_config_agrees(device, m, k, n, dtype):
    """Both product paths at every M, tails in N and K, even K (no column masks), and the GPU
    default configs (small BLOCK_N, one K step) under the interpreter."""
    from atom.kernels.triton.gemv import fused_gemv

    for option in ("norm+bias+residual", "silu+residual"):
        args, kwargs = _problem(m, k, n, option, dtype, device, seed=m * k)
        for name, cfg in _configs(m, n, k, dtype).items():
            out = fused_gemv(*args, **kwargs, config=cfg)
            try:
                _assert_close_to_truth(out, args, kwargs)
            except AssertionError as e:
                raise AssertionError(f"config {name} = {cfg}: {e}") from None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_out_aliases_residual(device, dtype):
    """h = fused_gemv(attn, W_o, residual=h, out=h): the in-place residual update."""
    from atom.kernels.triton.gemv import GemvConfig, fused_gemv

    for option in ("residual", "silu+residual", "norm+bias+residual"):
        args, kwargs = _problem(3, 72, 200, option, dtype, device, seed=5)
        expected = fused_gemv_reference(*args, **kwargs)
        h = kwargs["residual"]
        for cfg in (None, GemvConfig(block_n=16, block_k=32, use_dot=True)):
            h_run = h.clone()
            got = fused_gemv(*args, **{**kwargs, "residual": h_run}, out=h_run, config=cfg)
            assert got is h_run
            _assert_close_to_truth(got, args, kwargs)
            assert (got.float() - expected.float()).abs().max() <= 0.02 * expected.abs().max()


def test_out_with_row_stride_keeps_its_gaps(device):
    from atom.kernels.triton.gemv import fused_gemv

    args, kwargs = _problem(3, 64, 40, "norm+residual", torch.float32, device)
    buf = torch.full((3, 48), -7.0, device=device)
    got = fused_gemv(*args, **kwargs, out=buf[:, :40])
    assert got.data_ptr() == buf.data_ptr()
    assert (buf[:, 40:] == -7.0).all()
    _assert_close_to_truth(got, args, kwargs)


def test_empty_batch(device):
    from atom.kernels.triton.gemv import fused_gemv

    w = torch.randn(40, 64, device=device)
    assert fused_gemv(torch.randn(0, 64, device=device), w).shape == (0, 40)


def test_rejects_bad_input(device):
    from atom.kernels.triton.gemv import MAX_M, GemvConfig, fused_gemv

    x = torch.randn(3, 64, device=device)
    w = torch.randn(40, 64, device=device)
    nw = torch.ones(64, device=device)
    cases = [
        (dict(x=torch.randn(3, 63, device=device)), "63 columns"),
        (dict(x=torch.randn(3, 64, device=device), act="silu_and_mul"), "needs 128"),
        (dict(x=torch.randn(3, 1, 64, device=device)), "2-D"),
        (dict(x=torch.randn(MAX_M + 1, 64, device=device)), f"M={MAX_M + 1}"),
        (dict(x=x.double(), w=w.double()), "float64"),
        (dict(x=x.half()), "differs"),
        (dict(norm_weight=nw, act="silu_and_mul", x=torch.randn(3, 128, device=device)), "exclus"),
        (dict(act="gelu"), "'gelu'"),
        (dict(bias=torch.zeros(41, device=device)), r"bias has shape \(41,\)"),
        (dict(norm_weight=torch.ones(63, device=device)), r"norm_weight has shape \(63,\)"),
        (dict(residual=torch.zeros(3, 41, device=device)), r"residual has shape \(3, 41\)"),
        (dict(residual=torch.zeros(3, 40, device=device).half()), "residual dtype"),
        (dict(out=torch.zeros(2, 40, device=device)), r"out has shape \(2, 40\)"),
        (dict(x=torch.randn(64, 3, device=device).t()), "x must be contiguous in its last dim"),
        (dict(w=torch.randn(64, 40, device=device).t()), "weight must be contiguous"),
        (dict(config=GemvConfig(block_n=8, block_k=32, use_dot=True)), "block_n and block_k >= 16"),
    ]
    for overrides, match in cases:
        kw = dict(x=x, w=w) | overrides
        xx, ww = kw.pop("x"), kw.pop("w")
        with pytest.raises(ValueError, match=match):
            fused_gemv(xx, ww, **kw)
    # out must not overlap an input other than (exactly) residual
    buf = torch.randn(3, 64, device=device)
    with pytest.raises(ValueError, match="out overlaps x"):
        fused_gemv(buf, torch.randn(64, 64, device=device), out=buf)
    res = torch.randn(4, 40, device=device)
    with pytest.raises(ValueError, match="partially overlaps residual"):
        fused_gemv(x, w, residual=res[1:], out=res[:3])


def test_registry_entries(device):
    """atom.kernels.fused_gemv dispatches through the registry (the torch reference on the CPU);
    the Triton entry runs the kernel up to MAX_M rows and the unfused ops above."""
    import atom.kernels as kernels
    from atom.kernels.registry import available
    from atom.kernels.triton.gemv import MAX_M, fused_gemv_registered

    assert available("fused_gemv") == {"torch": {"cpu", "cuda"}, "triton": {"cuda"}}
    for m in (2, MAX_M + 5):
        args, kwargs = _problem(m, 72, 40, "silu+residual", torch.float32, device, seed=m)
        expected = fused_gemv_reference(*args, **kwargs)
        torch.testing.assert_close(fused_gemv_registered(*args, **kwargs), expected)
        torch.testing.assert_close(kernels.fused_gemv(*args, **kwargs), expected)


# --------------------------------------------------------------------------- torch.compile
def test_opaque_op_passes_opcheck():
    from atom.kernels import opaque

    torch.manual_seed(0)
    x, w, nw, r = torch.randn(3, 24), torch.randn(8, 24), torch.rand(24), torch.randn(3, 8)
    torch.library.opcheck(opaque._fused_gemv_op, (x, w, None, nw, 1e-6, "", r))
    torch.library.opcheck(
        opaque._fused_gemv_op,
        (torch.randn(2, 48), w, torch.randn(8), None, 1e-6, "silu_and_mul", None),
    )


def test_compiled_call_is_one_opaque_node():
    import atom.kernels as kernels

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def layer(h, attn, w_o, w_gu, w_down, w_post):
        h = kernels.fused_gemv(attn, w_o, residual=h)
        gu = kernels.fused_gemv(h, w_gu, norm_weight=w_post, eps=1e-5)
        return kernels.fused_gemv(gu, w_down, act="silu_and_mul", residual=h)

    torch.manual_seed(0)
    inputs = (torch.randn(2, 16), torch.randn(2, 16), torch.randn(16, 16), torch.randn(48, 16))
    inputs += (torch.randn(16, 24), torch.rand(16))
    got = torch.compile(layer, backend=backend, fullgraph=True)(*inputs)
    torch.testing.assert_close(got, layer(*inputs))
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("atom_py.fused_gemv" in t for t in targets) == 3, targets


# --------------------------------------------------------------------------- GPU, real shapes
# (K, N, fusion) of SmolLM2-135M and Llama-3-8B: qkv, o, gate_up, down (the benchmark's table)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from bench_gemv import SHAPES as REAL_SHAPES  # noqa: E402


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 8])
@pytest.mark.parametrize("shape", list(REAL_SHAPES))
def test_real_shapes_gpu(shape, m):
    from atom.kernels.triton.gemv import fused_gemv

    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    k, n, option = REAL_SHAPES[shape]
    args, kwargs = _problem(m, k, n, option, torch.bfloat16, "cuda", seed=m)
    _assert_close_to_truth(fused_gemv(*args, **kwargs), args, kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8])
def test_cuda_graph_replay_gpu(m):
    """One decoder layer's four calls captured in a CUDA graph; new inputs written into the same
    buffers replay to the eager result."""
    from atom.kernels.triton.gemv import fused_gemv

    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    hidden, inter, qkv = 576, 1536, 960
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device=dev, dtype=dt, generator=g)  # noqa: E731
    w_qkv, w_o = rnd(qkv, hidden) / 24, rnd(hidden, hidden) / 24
    w_gu, w_down = rnd(2 * inter, hidden) / 24, rnd(hidden, inter) / 40
    w_in, w_post = rnd(hidden).abs() + 0.5, rnd(hidden).abs() + 0.5
    h, attn = rnd(m, hidden), rnd(m, hidden)
    outs = {"qkv": torch.empty(m, qkv, device=dev, dtype=dt)}

    def layer():
        fused_gemv(h, w_qkv, norm_weight=w_in, eps=1e-5, out=outs["qkv"])
        fused_gemv(attn, w_o, residual=h, out=h)
        outs["gu"] = fused_gemv(h, w_gu, norm_weight=w_post, eps=1e-5)
        fused_gemv(outs["gu"], w_down, act="silu_and_mul", residual=h, out=h)

    def eager(h0, attn0):
        qkv_out = fused_gemv(h0, w_qkv, norm_weight=w_in, eps=1e-5)
        h1 = fused_gemv(attn0, w_o, residual=h0)
        gu = fused_gemv(h1, w_gu, norm_weight=w_post, eps=1e-5)
        return qkv_out, fused_gemv(gu, w_down, act="silu_and_mul", residual=h1)

    h_init = h.clone()
    layer()  # compile outside the capture
    h.copy_(h_init)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        layer()
    for step in range(2):
        new_h, new_attn = rnd(m, hidden), rnd(m, hidden)
        h.copy_(new_h)
        attn.copy_(new_attn)
        graph.replay()
        torch.cuda.synchronize()
        want_qkv, want_h = eager(new_h, new_attn)
        assert torch.equal(outs["qkv"], want_qkv), step
        assert torch.equal(h, want_h), step


# --------------------------------------------------------------------------- sm90 compile
def test_default_configs_compile_for_sm90_without_spills(tmp_path):
    """The interpreter accepts code the compiler rejects: compile the default config of every real
    shape at M = 1..32 through Triton's real pipeline for the H100 (bundled ptxas, no GPU), in a
    subprocess with TRITON_INTERPRET unset, and require no register spills."""
    bench = str(ROOT / "tools" / "bench_gemv.py")
    report = run_real_compiler([bench, "--compile-check", "defaults"], tmp_path, timeout=600)
    assert sum(line.startswith("ok ") for line in report.splitlines()) >= 20, report


def test_large_weights_at_several_rows_take_the_unfused_sequence(monkeypatch):
    """The registry entry runs the kernel at one row, and the unfused sequence (same result) for a
    weight above SMALL_WEIGHT at M > 1, where cuBLAS is faster (tools/bench_gemv.py on the H100)."""
    from atom.kernels.reference.gemv import fused_gemv_reference
    from atom.kernels.triton import gemv

    calls = []
    monkeypatch.setattr(gemv, "SMALL_WEIGHT", 64 * 40 - 1)
    monkeypatch.setattr(gemv, "fused_gemv", lambda *a, **k: calls.append(a[0].shape[0]))
    torch.manual_seed(0)
    weight, norm_w = torch.randn(40, 64), torch.rand(64) + 0.5
    x2 = torch.randn(2, 64)
    got = gemv.fused_gemv_registered(x2, weight, norm_weight=norm_w, eps=1e-6)
    want = fused_gemv_reference(x2, weight, norm_weight=norm_w, eps=1e-6)
    torch.testing.assert_close(got, want)
    gemv.fused_gemv_registered(torch.randn(1, 64), weight, norm_weight=norm_w, eps=1e-6)
    assert calls == [1]  # only the one-row call reached the kernel


# --------------------------------------------------------------------------- fp32 output
def _truth_after_prologue(args, kwargs):
    """The fp32 GEMM (+ bias + residual) of the prologue's output rounded to x's dtype, as the
    kernel computes it: what out_dtype=fp32 stores, up to the fp32 summation order."""
    from atom.kernels.reference.activation import silu_and_mul
    from atom.kernels.reference.norm import rms_norm_ref

    x, w, b = args
    if "norm_weight" in kwargs:
        x = rms_norm_ref(x, kwargs["norm_weight"], kwargs["eps"])
    elif "act" in kwargs:
        x = silu_and_mul(x)
    residual = kwargs.get("residual")
    return fused_gemv_reference(
        x.float(), w.float(), None if b is None else b.float(),
        residual=None if residual is None else residual.float(),
    )  # fmt: skip


@pytest.mark.parametrize("option", ["plain", "norm", "silu+residual", "norm+bias+residual"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,k,n", [(1, 72, 200), (3, 568, 96), (7, 64, 40)])
def test_fp32_output(device, m, k, n, dtype, option):
    """out_dtype=fp32 (the LM head's logits): 16-bit operands, the fp32 sum stored unrounded, both
    product paths (M = 7: tl.dot). Against the fp32 GEMM of the rounded prologue the only
    difference is the summation order; the torch reference casts its 16-bit result instead."""
    from atom.kernels.triton.gemv import fused_gemv

    args, kwargs = _problem(m, k, n, option, dtype, device, seed=m + k + n)
    out = fused_gemv(*args, **kwargs, out_dtype=torch.float32)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    truth = _truth_after_prologue(args, kwargs)
    scale = truth.abs().max().item()
    torch.testing.assert_close(out, truth, rtol=1e-4, atol=1e-4 * scale)
    assert (out != out.to(dtype).float()).any(), "the result was rounded to x's dtype"
    lowp = fused_gemv_reference(*args, **kwargs, out_dtype=torch.float32)
    assert lowp.dtype == torch.float32
    ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    torch.testing.assert_close(out, lowp, rtol=2 * ulp, atol=2 * ulp * scale)
    # into a given fp32 buffer, through the registry's entry and through atom.kernels (the torch
    # reference on the CPU)
    buf = torch.full((m, n + 3), -7.0, device=device)
    got = fused_gemv(*args, **kwargs, out=buf[:, :n], out_dtype=torch.float32)
    assert got.data_ptr() == buf.data_ptr() and torch.equal(got, out) and (buf[:, n:] == -7).all()


def test_fp32_output_dispatch_and_checks(device):
    import atom.kernels as kernels
    from atom.kernels.triton.gemv import MAX_M, fused_gemv, fused_gemv_registered

    for m in (1, MAX_M + 5):  # the kernel, and the unfused sequence above MAX_M rows
        args, kwargs = _problem(m, 72, 40, "silu+residual", torch.bfloat16, device, seed=m)
        want = fused_gemv_reference(*args, **kwargs, out_dtype=torch.float32)
        got = fused_gemv_registered(*args, **kwargs, out_dtype=torch.float32)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2**-7, atol=2**-7 * want.abs().max().item())
        eager = kernels.fused_gemv(*args, **kwargs, out_dtype=torch.float32)
        assert eager.dtype == torch.float32
    x, w = (
        torch.randn(2, 64, device=device).bfloat16(),
        torch.randn(40, 64, device=device).bfloat16(),
    )
    assert fused_gemv(x, w, out_dtype=torch.bfloat16).dtype == torch.bfloat16  # x's own dtype
    with pytest.raises(ValueError, match="out_dtype torch.float16"):
        fused_gemv(x, w, out_dtype=torch.float16)
    with pytest.raises(ValueError, match="out dtype torch.bfloat16"):
        fused_gemv(x, w, out=torch.empty(2, 40, device=device).bfloat16(), out_dtype=torch.float32)
    with pytest.raises(ValueError, match="out dtype torch.float32"):
        fused_gemv(x, w, out=torch.empty(2, 40, device=device))  # fp32 out needs out_dtype


def test_fp32_output_opaque_op():
    """The torch.compile custom op takes out_dtype; its fake gives the fp32 result's dtype."""
    import atom.kernels as kernels
    from atom.kernels import opaque

    torch.manual_seed(0)
    x, w = torch.randn(1, 24).bfloat16(), torch.randn(8, 24).bfloat16()
    r = torch.randn(1, 8).bfloat16()
    torch.library.opcheck(opaque._fused_gemv_op, (x, w, None, None, 1e-6, "", r, torch.float32))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def head(h, weight):
        return kernels.fused_gemv(h, weight, out_dtype=torch.float32)

    got = torch.compile(head, backend=backend, fullgraph=True)(x, w)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, head(x, w))
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("atom_py.fused_gemv" in t for t in targets) == 1, targets


_COMPILE_FP32_OUT_SM90 = """
import torch, triton
from triton.compiler import ASTSource
from atom.kernels.triton.compile_check import TARGETS, _resource_usage
from atom.kernels.triton.gemv import _gemv_kernel, default_gemv_config

target = TARGETS["sm90"]
for m, n, k in ((1, 128256, 4096), (1, 49152, 576), (4, 1000, 256)):  # LM heads
    cfg = default_gemv_config(m, n, k, torch.bfloat16)
    consts = dict(M_PAD=m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SUMSQ_BLOCK=cfg.block_k,
                  HAS_BIAS=False, HAS_NORM=False, GATED=False, HAS_RESIDUAL=False, USE_DOT=False,
                  EVEN_K=k % cfg.block_k == 0, DOT_PRECISION="tf32", CPU_BF16=False, USE_PDL=True,
                  PREFETCH=n * k <= (1 << 22))
    sig, attrs = {}, {}
    for i, a in enumerate(_gemv_kernel.arg_names):
        ptr = "*fp32" if a == "out_ptr" else "*bf16"
        sig[a] = "constexpr" if a in consts else ptr if a.endswith("_ptr") else "fp32" if a == "eps" else "i32"
        if a.endswith("_ptr") or a.startswith("stride") or a in ("N", "K"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    opts = triton.compiler.make_backend(target).parse_options(
        dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)).__dict__
    c = triton.compile(ASTSource(_gemv_kernel, sig, consts, attrs), target=target, options=opts)
    usage = _resource_usage(c.asm["cubin"])
    stores = [ln for ln in c.asm["ptx"].splitlines() if "st.global" in ln]
    fp32 = all(".b16" not in ln for ln in stores)
    print("ok" if usage.get("stack", 0) == 0 and fp32 else "BAD", m, n, k, cfg, usage, stores[:2])
"""


def test_fp32_output_compiles_for_sm90(tmp_path):
    """The LM-head variants (bf16 operands, fp32 out, default configs) through Triton's real
    pipeline for the H100, no GPU: no spills, 32-bit stores."""
    report = run_real_compiler(["-c", _COMPILE_FP32_OUT_SM90], tmp_path)
    assert sum(line.startswith("ok ") for line in report.splitlines()) == 3, report

"""Triton greedy argmax (two-stage, many programs per row) vs torch.argmax(dim=-1): the same index
exactly, ties to the lowest index, the first NaN above everything.

CPU interpreter in CI (TRITON_INTERPRET=1), the GPU on the device. Rows are views with a row
stride into NaN-filled buffers (DESIGN.md rule 11): a read past V would win the argmax.
"""

from __future__ import annotations

import pytest
import torch

from conftest import run_real_compiler

NAN, INF = float("nan"), float("inf")


def _rows(values: torch.Tensor, device, dtype=None, pad: int = 5) -> torch.Tensor:
    """values [B, V] as a view with row stride V + pad into a NaN-filled buffer."""
    dtype = dtype or values.dtype
    b, v = values.shape
    buf = torch.full((b, v + pad), NAN, dtype=dtype, device=device)
    view = buf[:, :v]
    view.copy_(values)
    return view


def _check(logits: torch.Tensor, chunk=None) -> None:
    from atom.kernels.triton.argmax import greedy_argmax

    got = greedy_argmax(logits, chunk)
    want = torch.argmax(logits.cpu().float(), dim=-1).to(logits.device)
    assert got.dtype == torch.int64 and got.shape == (logits.shape[0],)
    assert torch.equal(got, want), f"{got.tolist()} vs {want.tolist()}"


# (B, V, chunk): V < chunk, V not a multiple of the chunk, one column, many chunks per row
SHAPES = [(1, 7, None), (3, 83, 16), (17, 769, 64), (1, 5125, None), (3, 1, None), (2, 512, 16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("b,v,chunk", SHAPES)
def test_matches_torch(device, b, v, chunk, dtype):
    g = torch.Generator().manual_seed(b * v)
    _check(_rows(4 * torch.randn(b, v, generator=g), device, dtype), chunk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_ties_go_to_the_lowest_index(device, dtype):
    v, chunk = 100, 16  # chunk borders at 16, 32, 48, ...
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 3, (6, v), generator=g).float()  # many equal maxima per row
    rows[1] = 1.0  # all equal: 0
    rows[2] = 0.0
    rows[2, [31, 32]] = 5.0  # the two sides of a border: 31
    rows[3] = 0.0
    rows[3, [47, 80, 99]] = 5.0  # in different chunks: 47
    rows[4] = 0.0
    rows[4, 0] = -0.0  # -0.0 == 0.0: still 0
    rows[5] = -1.0
    rows[5, [63, 64]] = 0.0
    rows[5, 63] = -0.0  # a -0.0 / 0.0 tie across the border at 64: 63
    logits = _rows(rows, device, dtype)
    _check(logits, chunk)
    assert logits.shape[0] == 6


def test_infinities(device):
    v, chunk = 70, 16
    rows = torch.randn(5, v)
    rows[0] = -INF  # all -inf: 0
    rows[1] = -INF
    rows[1, 50] = -1e30  # one finite value in a later chunk
    rows[2, [20, 40]] = INF  # +inf twice: the first
    rows[3, :] = -INF
    rows[3, 69] = 0.0  # the only finite value is the last column (a partial chunk)
    rows[4, 33] = torch.finfo(torch.float32).max
    _check(_rows(rows, device), chunk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nan_is_the_max(device, dtype):
    """torch.argmax returns the first NaN's index: above +inf, and the first of several NaNs,
    also when an earlier chunk has none and a later one has several."""
    v, chunk = 90, 16
    rows = torch.randn(5, v)
    rows[0, 40] = NAN
    rows[1, 10] = INF
    rows[1, [60, 75]] = NAN  # after a +inf, in two chunks
    rows[2, [89, 17]] = NAN
    rows[3] = -INF
    rows[3, 5] = NAN
    rows[4] = NAN  # all NaN: 0
    _check(_rows(rows, device, dtype), chunk)


def test_empty_batch_and_bad_input(device):
    from atom.kernels.triton.argmax import greedy_argmax

    assert greedy_argmax(torch.zeros(0, 10, device=device)).shape == (0,)
    cases = [
        (torch.zeros(10, device=device), "must be \\[B, V\\]"),
        (torch.zeros(2, 0, device=device), "0 columns"),
        (torch.zeros(2, 10, dtype=torch.int32, device=device), "int32"),
        (torch.zeros(2, 10, dtype=torch.float64, device=device), "float64"),
        (torch.zeros(10, 2, device=device).t(), "contiguous in their last dim"),
    ]
    for logits, match in cases:
        with pytest.raises(ValueError, match=match):
            greedy_argmax(logits)
    with pytest.raises(ValueError, match="power of two"):
        greedy_argmax(torch.zeros(2, 10, device=device), chunk=24)


def test_chunk_for_spreads_a_long_row():
    from atom.kernels.triton.argmax import MAX_CHUNKS, chunk_for

    assert chunk_for(128256) == 512 and -(-128256 // 512) == 251  # a few hundred programs
    assert chunk_for(7) == 16 and chunk_for(300) == 512
    for vocab in (1, 1000, 151936, 262144, 2_000_003):
        assert -(-vocab // chunk_for(vocab)) <= MAX_CHUNKS


def test_registry_and_compiled_call():
    """atom.kernels.greedy_argmax: torch's argmax on the CPU (the registry's torch entry), the
    Triton kernel registered for CUDA; under torch.compile a plain argmax node."""
    import atom.kernels as kernels
    from atom.kernels.registry import available

    assert available("greedy_argmax") == {"torch": {"cpu", "cuda"}, "triton": {"cuda"}}
    logits = torch.randn(3, 50)
    assert torch.equal(kernels.greedy_argmax(logits), logits.argmax(dim=-1))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(kernels.greedy_argmax, backend=backend, fullgraph=True)
    assert torch.equal(compiled(logits), logits.argmax(dim=-1))
    targets = [
        str(n.target) for n in graphs[0].graph.nodes if n.op in ("call_function", "call_method")
    ]
    assert any("argmax" in t for t in targets) and not any("atom_py" in t for t in targets), targets


_COMPILE_SM90 = """
import triton
from triton.compiler import ASTSource
from atom.kernels.triton.compile_check import TARGETS, _resource_usage
from atom.kernels.triton.argmax import CHUNK, _chunk_argmax_kernel, _final_argmax_kernel

target = TARGETS["sm90"]
options = triton.compiler.make_backend(target).parse_options({"num_warps": 4}).__dict__

def compile(fn, types, consts):
    sig = {a: "constexpr" if a in consts else types[a] for a in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if a.endswith("_ptr")}
    c = triton.compile(ASTSource(fn, sig, consts, attrs), target=target, options=options)
    usage = _resource_usage(c.asm["cubin"])
    print("ok" if usage.get("stack", 0) == 0 else "SPILL", fn.__name__, sig, usage)

ints = {"V": "i32", "stride_b": "i32", "num_chunks": "i32"}
for dt in ("fp32", "bf16", "fp16"):
    compile(_chunk_argmax_kernel, {"logits_ptr": "*" + dt, "chunk_max_ptr": "*fp32",
            "chunk_idx_ptr": "*i32", **ints}, {"CHUNK": CHUNK})
compile(_final_argmax_kernel, {"chunk_max_ptr": "*fp32", "chunk_idx_ptr": "*i32",
        "out_ptr": "*i64", "num_chunks": "i32"}, {"CHUNKS_PAD": 256})
"""


def test_kernels_compile_for_sm90_without_spills(tmp_path):
    """The interpreter accepts code the compiler rejects: both stages through Triton's real
    pipeline for the H100 (bundled ptxas, no GPU), in a subprocess without TRITON_INTERPRET."""
    report = run_real_compiler(["-c", _COMPILE_SM90], tmp_path)
    assert sum(line.startswith("ok ") for line in report.splitlines()) == 4, report


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("b", [1, 3, 64])
def test_real_vocab_gpu(b, dtype):
    """Llama-3's vocab (128256) at decode batch sizes, with NaN / tie rows mixed in."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    v = 128256
    g = torch.Generator().manual_seed(b)
    rows = 8 * torch.randn(b, v, generator=g)
    rows[0, [70000, 511, 512]] = 100.0  # a tie across a chunk border wins over a later equal
    if b > 1:
        rows[1, [128255, 90000]] = NAN
    _check(_rows(rows, "cuda", dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("b", [1, 8])
def test_cuda_graph_replay_gpu(b):
    """greedy_argmax captured in a CUDA graph (workspace from the graph's pool) and replayed
    with new logits written into the same buffer: the new rows' argmax each time."""
    from atom.kernels.triton.argmax import greedy_argmax

    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    v = 128256
    logits = torch.randn(b, v, device="cuda")
    greedy_argmax(logits)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ids = greedy_argmax(logits)
    for step in range(3):
        new = torch.randn(b, v, device="cuda")
        new[0, (step * 40009) % v] = 50.0  # a known winner in a different chunk each time
        logits.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(ids, new.argmax(dim=-1)), step
        assert ids[0].item() == (step * 40009) % v

"""Native (atom._C) rms_norm, fused_add_rms_norm and silu_and_mul against their torch references:
hypothesis over awkward sizes, dtypes, weight dtypes and memory layouts (row-strided slices,
misaligned starts, transposed), on the CPU twins and (marked gpu) the CUDA/HIP kernels.

Tolerance (DESIGN rule 10): gold = the reference on fp32 upcasts of the same inputs; the kernel may
be at most 2x as far from gold as the reference at the kernel's dtype, plus one ulp of the dtype
at gold's scale (8 ulps for fp32, where the reference *is* gold and only summation order differs).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atom.kernels.reference import activation as ref_act
from atom.kernels.reference import norm as ref_norm

native = pytest.importorskip("atom.kernels.native", reason="atom._C is not built")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SIZES = [1, 7, 8, 64, 83, 769, 1024, 5125]
LAYOUTS = ["contiguous", "row_strided", "misaligned", "transposed", "3d"]
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))


def make(rows: int, cols: int, dtype, device, layout: str, scale: float = 1.0) -> torch.Tensor:
    """A [rows, cols] tensor (or [2, rows/2, cols] for "3d") in the given memory layout."""
    if layout == "row_strided":  # a column slice of a wider buffer: row stride > cols
        return (torch.randn(rows, cols + 24, device=device) * scale).to(dtype)[:, :cols]
    if layout == "misaligned":  # starts one element in: no 16-byte vectors
        return (torch.randn(rows, cols + 1, device=device) * scale).to(dtype)[:, 1:]
    if layout == "transposed":  # last dim not contiguous
        return (torch.randn(cols, rows, device=device) * scale).to(dtype).t()
    x = (torch.randn(rows, cols, device=device) * scale).to(dtype)
    if layout == "3d" and rows % 2 == 0:
        return x.view(2, rows // 2, cols)
    return x


def assert_rule10(out: torch.Tensor, ref: torch.Tensor, gold: torch.Tensor, what: str) -> None:
    assert out.shape == gold.shape and out.dtype == ref.dtype, what
    out64, ref64, gold64 = out.double(), ref.double(), gold.double()
    err = (out64 - gold64).abs().max().item() if out.numel() else 0.0
    ref_err = (ref64 - gold64).abs().max().item() if out.numel() else 0.0
    ulps = 8 if out.dtype == torch.float32 else 1
    floor = ulps * torch.finfo(out.dtype).eps * max(1.0, gold64.abs().max().item())
    assert err <= 2 * ref_err + floor, f"{what}: error {err:.3g} > 2 * {ref_err:.3g} + {floor:.3g}"


norm_cases = st.fixed_dictionaries(
    {
        "rows": st.sampled_from([1, 2, 7, 8, 83]),
        "hidden": st.sampled_from(SIZES),
        "dtype": st.sampled_from(DTYPES),
        "weight_fp32": st.booleans(),
        "layout": st.sampled_from(LAYOUTS),
        "eps": st.sampled_from([1e-6, 1e-5]),
        "scale": st.sampled_from([1.0, 30.0]),
    }
)


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=norm_cases)
def test_rms_norm(device, case):
    x = make(case["rows"], case["hidden"], case["dtype"], device, case["layout"], case["scale"])
    w_dtype = torch.float32 if case["weight_fp32"] else case["dtype"]
    w = (1 + 0.1 * torch.randn(case["hidden"], device=device)).to(w_dtype)
    out = native.rms_norm(x, w, case["eps"])
    assert out.is_contiguous()
    ref = ref_norm.rms_norm(x, w, case["eps"])
    gold = ref_norm.rms_norm(x.float(), w.float(), case["eps"])
    assert_rule10(out, ref, gold, f"rms_norm {case}")


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=norm_cases, residual_fp32=st.booleans())
def test_fused_add_rms_norm(device, case, residual_fp32):
    rows, hidden, dtype = case["rows"], case["hidden"], case["dtype"]
    x = make(rows, hidden, dtype, device, case["layout"], case["scale"])
    r_dtype = torch.float32 if residual_fp32 else dtype  # mixed dtypes take the two-step path
    residual = make(rows, hidden, r_dtype, device, "contiguous", case["scale"]).view(x.shape)
    w_dtype = torch.float32 if case["weight_fp32"] else dtype
    w = (1 + 0.1 * torch.randn(hidden, device=device)).to(w_dtype)
    x0, r0 = x.clone(), residual.clone()

    out, new_residual = native.fused_add_rms_norm(x, residual, w, case["eps"])
    ref_out, ref_residual = ref_norm.fused_add_rms_norm(x0, r0, w, case["eps"])
    # The residual sum is rounded once from fp32, exactly as the reference does: bit-identical.
    assert new_residual is residual and torch.equal(new_residual, ref_residual)
    if r_dtype == dtype:
        assert out is x  # in place
    gold = ref_norm.rms_norm(ref_residual.float(), w.float(), case["eps"])
    assert_rule10(out, ref_out, gold, f"fused_add_rms_norm {case}")


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(
    rows=st.sampled_from([1, 7, 83]),
    d=st.sampled_from(SIZES),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
)
def test_silu_and_mul(device, rows, d, dtype, layout):
    x = make(rows, 2 * d, dtype, device, layout, scale=4.0)
    out = native.silu_and_mul(x)
    assert out.is_contiguous() and out.shape == (*x.shape[:-1], d)
    assert_rule10(out, ref_act.silu_and_mul(x), ref_act.silu_and_mul(x.float()), "silu_and_mul")


# Row widths around each block-shape change of the GPU launcher (csrc/gpu/norm_kernels.cuh,
# norm_shape; 16-bit elements per vector: 8): 2 vectors a thread up to 16384 (1024 threads), 4 up
# to 32768, then a re-read tail; 40001 takes the unvectorized path (1 element per vector).
LARGE_HIDDEN = [4096, 5120, 16384, 16392, 32768, 40000, 40001]


@pytest.mark.gpu
@pytest.mark.parametrize("weight_fp32", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", LARGE_HIDDEN)
def test_norms_large_rows_gpu(dtype, hidden, weight_fp32):
    x = torch.randn(33, hidden, device="cuda").to(dtype)
    residual = torch.randn(33, hidden, device="cuda").to(dtype)
    w = torch.randn(hidden, device="cuda").to(torch.float32 if weight_fp32 else dtype)
    assert_rule10(
        native.rms_norm(x, w, 1e-6),
        ref_norm.rms_norm(x, w, 1e-6),
        ref_norm.rms_norm(x.float(), w.float(), 1e-6),
        "rms_norm",
    )
    ref_out, ref_residual = ref_norm.fused_add_rms_norm(x.clone(), residual.clone(), w, 1e-6)
    out, new_residual = native.fused_add_rms_norm(x, residual, w, 1e-6)
    assert torch.equal(new_residual, ref_residual)
    gold = ref_norm.rms_norm(ref_residual.float(), w.float(), 1e-6)
    assert_rule10(out, ref_out, gold, "fused_add_rms_norm")


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    w = torch.ones(16, device=device)
    assert native.rms_norm(torch.empty(0, 16, device=device), w, 1e-6).shape == (0, 16)
    assert native.silu_and_mul(torch.empty(0, 16, device=device)).shape == (0, 8)
    x, r = torch.empty(0, 16, device=device), torch.empty(0, 16, device=device)
    assert native.fused_add_rms_norm(x, r, w, 1e-6)[0].shape == (0, 16)


def test_bad_inputs_raise_value_error():
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="weight has 8 elements but the hidden size is 16"):
        native.rms_norm(x, torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="x has unsupported dtype Double"):
        native.rms_norm(x.double(), torch.ones(16), 1e-6)
    with pytest.raises(ValueError, match=r"residual has shape \[4, 8\]"):
        native.fused_add_rms_norm(x, torch.randn(4, 8), torch.ones(16), 1e-6)
    with pytest.raises(ValueError, match="silu_and_mul needs x"):
        native.silu_and_mul(torch.randn(4, 15))

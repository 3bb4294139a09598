"""The GPU kernels' hand-written conversions (csrc/gpu/numerics.cuh: fp32 -> bf16, and the fp8
e4m3fn / e4m3fnuz cache quantization clamp(x / scale) -> fp8) agree bit for bit with torch's, on
every kind of input: random bit patterns (subnormals, NaN, inf), every fp8 value, the midpoints
between neighbours (round-half-to-even ties) and their neighbours. The header is plain host C++
too, so a small harness built with the host compiler checks it here, without a GPU.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("numerics_harness.cpp")
FP8 = [torch.float8_e4m3fn, torch.float8_e4m3fnuz]


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no host C++ compiler")
    exe = tmp_path_factory.mktemp("numerics") / "harness"
    subprocess.run(
        [compiler, "-std=c++17", "-O2", f"-I{REPO / 'csrc'}", str(HARNESS), "-o", str(exe)],
        check=True,
    )
    return exe


def interesting_floats() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-(2**31), 2**31 - 1, (200_000,), generator=g, dtype=torch.int64)
    values = [random_bits.to(torch.int32).view(torch.float32)]
    for dtype in FP8:  # every fp8 value, the ties between neighbours, and the ties' neighbours
        grid = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()
        grid = grid[grid.isfinite()].unique().sort().values
        mids = (grid[1:] + grid[:-1]) / 2
        inf = torch.full_like(mids, np.inf)
        values += [grid, mids, mids.nextafter(inf), mids.nextafter(-inf)]
    bf16 = torch.randn(10_000, generator=g).bfloat16().float()  # bf16 ties and neighbours
    half_ulp = bf16.abs() * 2.0**-8
    values += [bf16 + half_ulp, bf16 - half_ulp, bf16 * 300.0]
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 448.0, 464.0, 480.0, 240.0]
    values.append(torch.tensor(specials, dtype=torch.float32))
    return torch.cat(values)


def run_harness(exe: Path, x: torch.Tensor, scale: float) -> np.ndarray:
    out = subprocess.run(
        [str(exe), repr(scale)], input=x.numpy().tobytes(), capture_output=True, check=True
    ).stdout
    return np.frombuffer(out, dtype=np.dtype([("bf16", "<u2"), ("fn", "u1"), ("fnuz", "u1")]))


@pytest.mark.parametrize("scale", [1.0, 0.37, 4.0])
def test_conversions_match_torch(harness, scale):
    x = interesting_floats()
    codes = run_harness(harness, x, scale)
    nan = x.isnan()

    bf16 = torch.from_numpy(codes["bf16"].astype(np.int32))
    expected = x.bfloat16().view(torch.int16).to(torch.int32) & 0xFFFF
    assert torch.equal(bf16[~nan], expected[~nan]), "bf16 rounding differs from torch"
    assert torch.equal(bf16[nan], torch.full_like(bf16[nan], 0x7FC0)), "bf16 NaN"

    for dtype, field in zip(FP8, ["fn", "fnuz"]):
        finfo = torch.finfo(dtype)
        # The reference quantize_for_cache: clamp(x / scale, min, max) then round to fp8.
        expected = (x / scale).clamp(finfo.min, finfo.max).to(dtype).view(torch.uint8)
        got = torch.from_numpy(codes[field].copy())
        bad = (got != expected) & ~nan
        assert not bad.any(), f"{dtype}: {x[bad][:5].tolist()} -> {got[bad][:5].tolist()}"
        assert got[nan].view(dtype).float().isnan().all(), f"{dtype} NaN"

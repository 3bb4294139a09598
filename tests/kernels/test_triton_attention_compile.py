"""The attention kernels compile through Triton's real compiler for the H100 (sm90, no register
spills) and the MI300 (gfx942).

The CPU interpreter that runs the other attention tests accepts code the compiler rejects, so this
compiles every feature variant ahead of time (atom.kernels.triton.compile_check) in a subprocess
with TRITON_INTERPRET unset. Needs Triton's bundled backends (ptxas, the AMD backend), no GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import triton

from atom.kernels.triton.compile_check import VARIANTS
from conftest import run_real_compiler

BACKENDS = Path(triton.__file__).parent / "backends"
AMD_SUBSET = ["prefill fp8 cache + window + sinks", "decode bf16 split 8 + window + sinks"]


@pytest.mark.parametrize(
    "target, only, backend",
    [
        ("sm90", None, BACKENDS / "nvidia" / "bin" / "ptxas"),
        ("gfx942", AMD_SUBSET, BACKENDS / "amd"),
    ],
)
def test_attention_kernels_compile(tmp_path, target, only, backend):
    """Every variant for the H100 (and no register spills); a subset for the MI300."""
    if not backend.exists():
        pytest.skip(f"this triton has no {backend}")
    report = run_real_compiler(
        ["-m", "atom.kernels.triton.compile_check", "--target", target]
        + (["--only", *only] if only else []),
        tmp_path, timeout=600, needs_ptxas=target == "sm90",
    )  # fmt: skip
    compiled = sum(line.startswith("ok ") for line in report.splitlines())
    assert compiled == (len(only) if only else len(VARIANTS)), report

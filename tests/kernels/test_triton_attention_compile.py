"""The attention kernels compile for the H100 (sm90) through Triton's real compiler, without spills.

The CPU interpreter that runs the other attention tests accepts code the compiler rejects, so this
compiles every feature variant ahead of time (atom.kernels.triton.compile_check) in a subprocess
with TRITON_INTERPRET unset. Needs Triton's bundled NVIDIA backend (ptxas), not a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[2]
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="triton without its bundled NVIDIA ptxas")
def test_attention_kernels_compile_for_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier cache
    run = subprocess.run(
        [sys.executable, "-m", "atom.kernels.triton.compile_check"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = run.stdout + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert report.count("\nok ") + report.startswith("ok ") >= 11, report

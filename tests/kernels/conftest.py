"""Fixtures of the kernel tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def triton_device() -> str:
    """Where the Triton kernels can run: the GPU, else the CPU under TRITON_INTERPRET=1; skips
    the test otherwise."""
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    pytest.skip("needs a GPU or TRITON_INTERPRET=1")


@pytest.fixture(scope="module")
def device() -> str:
    return triton_device()


def run_real_compiler(
    args: list[str], tmp_path: Path, timeout: int = 300, needs_ptxas: bool = True
) -> str:
    """Runs ``python *args`` with Triton's real compiler (TRITON_INTERPRET unset, the repo's
    python/ on the path, a fresh cache under tmp_path) and returns its output; asserts it
    succeeded. Skips when an sm90 check (needs_ptxas) finds no bundled ptxas."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if needs_ptxas and not ptxas.exists():
        pytest.skip("this triton has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier cache
    run = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    report = run.stdout + run.stderr[-3000:]
    assert run.returncode == 0, report
    return report

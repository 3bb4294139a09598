"""The GPU kernel sources (csrc/gpu/*.cu: kernels + launchers, which need only the GPU runtime)
compile warning-free for NVIDIA with nvcc (sm_90a, the H100 target) and for AMD with hipcc
(gfx90a, MI200), on this CPU machine: one source, two toolchains. CI installs Debian's hipcc
(`apt-get install hipcc`, ROCm 5.2); a test skips, with the reason, only when a toolchain is
missing or cannot compile even a trivial kernel (then our sources are not the problem).

nvcc's resource report also shows that every kernel can launch with the most threads its launcher
gives it (registers x threads within the 64K-register file; the norm kernels once took 80-122
registers and failed to launch at 1024 threads on the H100) and spills nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted((REPO / "csrc" / "gpu").glob("*.cu"))
TRIVIAL_KERNEL = "__global__ void probe(float* x) { x[threadIdx.x] *= 2.0f; }\n"
RUNTIME_HEADER = {"nvcc": "", "hipcc": "#include <hip/hip_runtime.h>\n"}


def nvcc_command(src: Path, out: Path) -> list[str]:
    return [
        "nvcc", "-std=c++17", "-O3", "--generate-code=arch=compute_90a,code=sm_90a",
        "-Xcompiler=-Wall,-Wextra,-Werror", "--resource-usage", "-c", str(src), "-o", str(out),
    ]  # fmt: skip


# The most threads per block each kernel's launcher uses (csrc/gpu/*.cu).
LAUNCH_THREADS = {
    "rms_norm_kernel": 1024,  # kNormMaxThreads
    "fused_add_rms_norm_kernel": 1024,
    "silu_and_mul_kernel": 256,
    "rotary_embedding_kernel": 512,
    "reshape_and_cache_kernel": 512,
    "qk_norm_rope_cache_kernel": 256,
}
REGISTER_FILE = 65536  # 32-bit registers per block (and per SM) on sm_70..sm_90


def kernel_resources(ptxas_report: str) -> dict[str, tuple[int, int]]:
    """Mangled kernel name -> (registers per thread, spilled bytes) from nvcc --resource-usage."""
    resources, name = {}, None
    for line in ptxas_report.splitlines():
        if m := re.search(r"(?:Compiling entry function|Function properties for) '?(_Z\w+)", line):
            name = m.group(1)
        if name and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            regs, _ = resources.get(name, (0, 0))
            resources[name] = (regs, int(m.group(1)) + int(m.group(2)))
        if name and (m := re.search(r"Used (\d+) registers", line)):
            _, spilled = resources.get(name, (0, 0))
            resources[name] = (int(m.group(1)), spilled)
    return resources


def hipcc_command(src: Path, out: Path) -> list[str]:
    return [
        "hipcc", "-x", "hip", "-std=c++17", "-O3", "--offload-arch=gfx90a",
        "-Wall", "-Wextra", "-Werror", "-c", str(src), "-o", str(out),
    ]  # fmt: skip


TOOLCHAINS = {"nvcc": nvcc_command, "hipcc": hipcc_command}


def toolchain_env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    if name == "hipcc":
        env["HIP_PLATFORM"] = "amd"  # with nvcc also installed, hipcc would pick NVIDIA
    return env


@pytest.fixture(scope="module")
def working_toolchains(tmp_path_factory) -> dict[str, str | None]:
    """name -> None if it compiles a trivial kernel, else why it cannot be used here."""
    tmp = tmp_path_factory.mktemp("probe")
    status = {}
    for name, command in TOOLCHAINS.items():
        if shutil.which(name) is None:
            status[name] = f"{name} is not installed"
            continue
        probe = tmp / f"probe_{name}.cu"
        probe.write_text(RUNTIME_HEADER[name] + TRIVIAL_KERNEL)
        result = subprocess.run(
            command(probe, tmp / f"probe_{name}.o"),
            capture_output=True, text=True, env=toolchain_env(name),
        )  # fmt: skip
        status[name] = None if result.returncode == 0 else (
            f"{name} cannot compile a trivial kernel here: {result.stderr.strip()[-400:]}"
        )  # fmt: skip
    return status


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
@pytest.mark.parametrize("toolchain", sorted(TOOLCHAINS))
def test_gpu_source_compiles(toolchain, source, working_toolchains, tmp_path):
    if working_toolchains[toolchain] is not None:
        pytest.skip(working_toolchains[toolchain])
    result = subprocess.run(
        TOOLCHAINS[toolchain](source, tmp_path / "out.o"),
        capture_output=True, text=True, env=toolchain_env(toolchain), cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, f"{toolchain} {source.name}:\n{result.stderr[-4000:]}"
    assert (tmp_path / "out.o").stat().st_size > 0
    if toolchain == "nvcc":
        check_launchable(result.stdout + result.stderr, source.name)


def check_launchable(ptxas_report: str, source: str) -> None:
    resources = kernel_resources(ptxas_report)
    assert resources, f"no kernels in nvcc's resource report of {source}"
    for mangled, (regs, spilled) in resources.items():
        kernel = next((k for k in LAUNCH_THREADS if f"{len(k)}{k}" in mangled), None)
        assert kernel is not None, f"{source}: {mangled} is missing from LAUNCH_THREADS"
        allocated = -(-regs // 8) * 8  # registers are allocated in steps of 8 per thread
        threads = LAUNCH_THREADS[kernel]
        assert allocated * threads <= REGISTER_FILE, (
            f"{mangled}: {regs} registers x {threads} threads exceed the register file"
        )
        assert spilled == 0, f"{mangled} spills {spilled} bytes"


def test_kernel_sources_need_only_the_gpu_runtime():
    """Kernel headers and launchers stay torch-free (so both toolchains build them alone)."""
    for path in sorted((REPO / "csrc" / "gpu").iterdir()):
        if path.suffix in (".cu", ".cuh", ".h"):
            text = path.read_text()
            for banned in ("#include <torch", "#include <ATen", "#include <c10", "cuda_bf16.h"):
                assert banned not in text, f"{path.name} includes {banned}"

"""Prints, as CMake `set()` commands, what the build needs to know about the installed torch:
where its headers and libraries are, its C++ ABI, whether it is a CUDA or ROCm build, and the GPU
architectures to compile for by default. Run by CMakeLists.txt with the build's Python.

Default architectures, first match wins:
  CUDA: $TORCH_CUDA_ARCH_LIST ("8.0;9.0a", "8.6+PTX" -> 80;90a / 86), the visible GPUs'
        capabilities (9.0 -> 90a: Hopper gets its arch-specific target), torch.cuda.get_arch_list().
  ROCm: $PYTORCH_ROCM_ARCH ("gfx90a;gfx942"), the visible GPUs' gcnArchName, torch's arch list.
"""

from __future__ import annotations

import os
import re

import torch


def cuda_arch(capability: str) -> str:
    """'9.0' / '9.0a' / '8.6+PTX' / 'sm_90' -> '90' / '90a' / '86' / '90'."""
    return capability.replace("+PTX", "").replace("sm_", "").replace(".", "").strip()


def default_cuda_archs() -> list[str]:
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return sorted({cuda_arch(a) for a in re.split(r"[;\s]+", env) if a})
    if torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        # Hopper (9.0) gets its arch-specific target sm_90a, a superset of sm_90.
        return sorted(
            f"{major}{minor}" + ("a" if (major, minor) == (9, 0) else "") for major, minor in caps
        )
    return [a.removeprefix("sm_") for a in torch.cuda.get_arch_list() if a.startswith("sm_")]


def default_hip_archs() -> list[str]:
    env = os.environ.get("PYTORCH_ROCM_ARCH", "").strip()
    if env:
        return [a for a in re.split(r"[;\s]+", env) if a]
    if torch.cuda.is_available():
        names = {
            torch.cuda.get_device_properties(i).gcnArchName.split(":")[0]
            for i in range(torch.cuda.device_count())
        }
        return sorted(names)
    return [a for a in torch.cuda.get_arch_list() if a.startswith("gfx")]


def main() -> None:
    root = os.path.dirname(torch.__file__)
    facts = {
        "TORCH_VERSION": torch.__version__,
        "TORCH_INCLUDE_DIR": os.path.join(root, "include"),
        "TORCH_LIB_DIR": os.path.join(root, "lib"),
        "TORCH_CXX11_ABI": str(int(torch._C._GLIBCXX_USE_CXX11_ABI)),
        "TORCH_CUDA_VERSION": torch.version.cuda or "",
        "TORCH_HIP_VERSION": torch.version.hip or "",
        "TORCH_DEFAULT_CUDA_ARCHS": ";".join(default_cuda_archs()) if torch.version.cuda else "",
        "TORCH_DEFAULT_HIP_ARCHS": ";".join(default_hip_archs()) if torch.version.hip else "",
    }
    for key, value in facts.items():
        print(f'set({key} "{value}")')


if __name__ == "__main__":
    main()

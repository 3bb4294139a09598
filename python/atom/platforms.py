"""The one place that knows what hardware we run on.

Everything else asks here (``current_platform()``) instead of sniffing torch itself, so a new
backend is a change to this file only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Platform:
    kind: str  # "cuda" | "rocm" | "cpu"
    device_name: str
    capability: tuple[int, int] | None  # (major, minor) on a GPU, None on the CPU

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"

    @property
    def device_type(self) -> str:
        """The torch device type: ROCm GPUs also answer to "cuda" in torch."""
        return "cpu" if self.kind == "cpu" else "cuda"

    @property
    def fp8_dtype(self) -> torch.dtype:
        """e4m3fn everywhere except MI300 (gfx94x), whose hardware fp8 is the "fnuz" variant."""
        if self.kind == "rocm" and "gfx94" in self.device_name:
            return torch.float8_e4m3fnuz
        return torch.float8_e4m3fn


@functools.cache
def current_platform() -> Platform:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        if torch.version.hip is not None:
            return Platform("rocm", getattr(props, "gcnArchName", props.name), None)
        return Platform("cuda", props.name, (props.major, props.minor))
    return Platform("cpu", "cpu", None)

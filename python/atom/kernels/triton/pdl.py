"""Programmatic dependent launch (PDL): let a kernel start before the one before it has finished.

In a decode step of a small model the GPU runs ~200 short kernels back to back, and each boundary
costs the launch of the next grid after the last block of the previous one has retired (a couple of
microseconds under a CUDA graph). On Hopper and later a kernel launched with PDL
(``launch_pdl=True``) may be scheduled as soon as every block of the previous kernel has called
``griddepcontrol.launch_dependents`` (``tl.extra.cuda.gdc_launch_dependents``) or exited, and it
blocks in ``griddepcontrol.wait`` (``gdc_wait``) until the previous kernel has completed and its
memory is visible. What comes before the wait overlaps the previous kernel's tail: the launch
itself, index math, and loads of data no earlier kernel writes (weights).

The rule every PDL kernel here follows, so that chains stay correct whatever launched before
(a plain torch / cuBLAS kernel, or another PDL kernel):
  * every program calls ``gdc_wait`` before it reads anything a previous kernel may have written
    (activations, KV cache, metadata buffers filled by a copy) and before it writes anything, and
    before it exits early: a kernel completes only after all its programs passed the wait, so
    completion still implies that every earlier kernel completed;
  * ``gdc_launch_dependents`` may come anywhere (it is a hint): calling it early lets the next
    kernel's blocks fill SMs that this kernel's tail leaves idle.
Both instructions are no-ops in a kernel launched without PDL. CUDA graphs captured from a stream
keep the programmatic edges (CUDA 12.3+).

Usage in a launcher (``USE_PDL`` a constexpr guarding the two calls; the CPU interpreter and
ROCm never see them):

    pdl = pdl_enabled(x.device)
    _kernel[grid](..., USE_PDL=pdl, **launch_options(pdl))
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from atom import envs


@functools.cache
def _triton_supports_pdl() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in {f.name for f in dataclasses.fields(CUDAOptions)}


@functools.cache
def _device_supports_pdl(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with PDL: an NVIDIA GPU of compute capability 9.0+,
    a Triton that knows the launch option, not the interpreter, and ``ATOM_PDL`` not 0."""
    if device.type != "cuda" or torch.version.hip is not None:
        return False
    if envs.triton_interpreter() or not envs.pdl():
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    return _triton_supports_pdl() and _device_supports_pdl(index)


def launch_options(enabled: bool) -> dict:
    """Extra launch keyword arguments: ``launch_pdl=True`` when enabled, nothing otherwise (the
    interpreter's launcher does not take the option)."""
    return {"launch_pdl": True} if enabled else {}

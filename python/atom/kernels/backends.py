"""Imports every backend module; each registers its ops only where it can run."""

from atom.kernels import batched_attention, reference  # noqa: F401  (torch: always)

try:  # the compiled ops (atom._C); absent in a source checkout that was not built
    from atom.kernels import native  # noqa: F401
except ImportError:  # pragma: no cover - depends on the build
    native = None

try:  # Triton kernels: on GPUs, and on the CPU under TRITON_INTERPRET=1 (tests call them directly)
    from atom.kernels import triton as triton_kernels  # noqa: F401
except ImportError:  # pragma: no cover - triton not installed
    triton_kernels = None

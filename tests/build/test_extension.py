"""The built extension atom._C: it loads, says what it was built for, registers the `atom` op
schemas (with their mutations declared), and atom.kernels picks its ops as backend "native" on
every device type the build supports (cpu always; cuda when built with CUDA/HIP, marked gpu).
"""

from __future__ import annotations

import pytest
import torch

from atom.kernels import registry

native = pytest.importorskip("atom.kernels.native", reason="atom._C is not built")

OPS = [
    "rms_norm",
    "fused_add_rms_norm",
    "silu_and_mul",
    "rotary_embedding",
    "reshape_and_cache",
    "fused_qk_norm_rope_cache",
]
MUTATED = {
    "fused_add_rms_norm": {"x", "residual"},
    "rotary_embedding": {"query", "key"},
    "reshape_and_cache": {"key_cache", "value_cache"},
    "fused_qk_norm_rope_cache": {"q", "k", "key_cache", "value_cache"},
}


def test_build_facts():
    import atom._C as ext

    assert ext.gpu_backend in ("", "cuda", "hip")
    assert ext.gpu_backend == native.GPU_BACKEND
    if torch.version.cuda is None and torch.version.hip is None:
        assert ext.gpu_backend == "" and ext.gpu_archs == ""  # a CPU torch gives a CPU build


@pytest.mark.parametrize("op", OPS)
def test_schema_declares_mutations(op):
    schema = getattr(torch.ops.atom, op).default._schema
    written = {
        a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write
    }
    assert written == MUTATED.get(op, set())


@pytest.mark.parametrize("op", OPS)
def test_native_is_picked_on_cpu(op):
    assert "cpu" in registry.available(op)["native"]
    assert registry.pick(op, "cpu") is registry.get(op, "native")


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
def test_native_is_registered_on_gpu(op):
    assert native.GPU_BACKEND in ("cuda", "hip"), "atom._C was built without GPU support"
    assert "cuda" in registry.available(op)["native"]
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"atom::{op}", "CUDA")

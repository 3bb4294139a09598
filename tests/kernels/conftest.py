"""Fixtures of the kernel tests."""

from __future__ import annotations

import os

import pytest
import torch


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

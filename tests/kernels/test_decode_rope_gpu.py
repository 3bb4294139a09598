"""test_decode_rope's cases on a GPU, the fp8 cache included. Run on the device machine; the
engine's CUDA-graph tests (tests/engine/test_cuda_graph_gpu.py) run the fused decode in graphs."""

from __future__ import annotations

import pytest
import torch
from test_decode_rope import CASES, check_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU"),
]


@pytest.mark.parametrize("case", sorted(CASES))
def test_gpu_decode_rope_matches_the_unfused_path(case):
    check_case(case, "cuda")

"""LlamaForCausalLM on a GPU (whatever kernels atom.kernels picks there) against transformers on
the same GPU: tiny random checkpoints, prefill + chunked prefill + decode over the paged cache."""

from __future__ import annotations

import pytest
import torch

from atom.model_config import ModelConfig
from atom.models import build_model

pytestmark = pytest.mark.gpu

# GPU attention kernels may run their fp32 dot products in TF32 (10-bit mantissa).
FP32_ATOL = 2e-3


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True, "num_key_value_heads": 1}])
def test_llama_on_gpu_matches_transformers(make_tiny_llama, paged_runner, overrides):
    from transformers import AutoModelForCausalLM

    folder = make_tiny_llama(**overrides)
    model = build_model(ModelConfig.from_pretrained(folder, dtype="float32"), "cuda")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda().eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (7, 13, 33)]
    runner = paged_runner(model, block_size=16, num_blocks=32, device="cuda")

    first = runner.step([(0, seqs[0]), (1, seqs[1]), (2, seqs[2][:20])])
    second = runner.step([(2, seqs[2][20:])])
    prefill = [first[0], first[1], torch.cat([first[2], second[0]])]
    with torch.no_grad():
        for seq, logits in zip(seqs, prefill):
            ref = hf(torch.tensor([seq], device="cuda")).logits[0].float()
            torch.testing.assert_close(logits, ref, atol=FP32_ATOL, rtol=0)
        last = [p[-1] for p in prefill]
        for _ in range(4):
            tokens = [int(x.argmax()) for x in last]
            for seq, t in zip(seqs, tokens):
                seq.append(t)
            last = [
                o[0] for o in runner.step([(i, [t]) for i, t in enumerate(tokens)], num_padding=3)
            ]
            for seq, ours in zip(seqs, last):
                ref = hf(torch.tensor([seq], device="cuda")).logits[0, -1].float()
                torch.testing.assert_close(ours, ref, atol=FP32_ATOL, rtol=0)

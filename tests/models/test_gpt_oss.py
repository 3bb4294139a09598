"""ATOM's GptOssForCausalLM against transformers' on tiny random checkpoints: attention sinks,
layers alternating a 4-token sliding window with full attention (prompts far longer than the
window), YaRN RoPE, biased top-k-softmax router and clamped SwiGLU experts with biases. Logits
over the paged cache and greedy tokens through LLMEngine."""

from __future__ import annotations

import os

import pytest
import torch
from hf_compare import (
    REPO,
    atom_model,
    check_bf16_prefill,
    check_engine_greedy,
    check_on_gpu,
    check_prefill_and_decode,
    hf_logits,
    hf_model,
    variant_folders,
)

CONFIG = REPO / "models" / "gpt_oss" / "tiny_config.json"
VARIANTS = {
    "base": {},  # sliding (window 4), full, sliding; 2 KV heads
    "mqa-window7": {"num_key_value_heads": 1, "sliding_window": 7},
    # Same weights as "base" (the layer types change no shape): shows that the window matters.
    "all-full": {"layer_types": ["full_attention"] * 3},
}


folder = variant_folders("gpt_oss", CONFIG, VARIANTS)


@pytest.mark.parametrize("variant", ["base", "mqa-window7"])
def test_prefill_and_decode_match_transformers(folder, variant):
    check_prefill_and_decode(folder(variant))


def test_engine_greedy_matches_transformers(folder):
    check_engine_greedy(folder("base"))


def test_window_and_sinks_matter_on_these_prompts(folder):
    """Without its window (or its sinks) transformers' own model gives other logits, so the
    comparisons above test both."""
    tokens = list(range(3, 40))
    base = hf_logits(hf_model(folder("base")), tokens)
    assert (base - hf_logits(hf_model(folder("all-full")), tokens)).abs().max() > 1e-2
    no_sinks = hf_model(folder("base"))
    sinks = [layer.self_attn.sinks for layer in no_sinks.model.layers]
    saved = [s.detach().clone() for s in sinks]
    try:
        with torch.no_grad():
            for s in sinks:
                s.fill_(-1e4)  # exp(-1e4) = 0: no sink
        assert (base - hf_logits(no_sinks, tokens)).abs().max() > 1e-2
    finally:
        with torch.no_grad():
            for s, v in zip(sinks, saved):
                s.copy_(v)


def test_layout(folder):
    model = atom_model(folder("base"))
    layers = model.attention_layers()
    assert [a.sliding_window for a in layers] == [4, None, 4]
    assert all(a.sinks is not None and a.sinks.dtype == torch.float32 for a in layers)
    experts = model.model.layers[0].mlp.experts
    assert experts.activation == "gptoss_swiglu" and experts.b13 is not None
    assert model.model.layers[0].self_attn.o_proj.bias is not None
    # YaRN: the cache is scaled by the attention factor 0.1 ln(4) + 1.
    cache = layers[0].rotary_emb.cos_sin_cache
    half = cache.shape[1] // 2
    assert torch.allclose(
        cache[0, :half], torch.full((half,), 0.1 * torch.log(torch.tensor(4.0)) + 1)
    )


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton kernels on the CPU"
)
def test_through_the_triton_kernels_under_the_interpreter(folder, monkeypatch):
    """The GPU path on the CPU: paged attention (window + sinks) and the fused MoE (clamped
    SwiGLU with biases) from their Triton kernels, run by the Triton interpreter."""
    import atom.kernels
    import atom.kernels.triton  # noqa: F401  (registers the Triton implementations)
    from atom.kernels import registry

    triton_ops = ("paged_attention", "fused_moe")

    def pick(op: str, device_type: str):
        return registry.get(op, "triton") if op in triton_ops else registry.pick(op, device_type)

    monkeypatch.setattr(atom.kernels, "pick", pick)
    check_prefill_and_decode(folder("base"), atol=5e-5, decode_steps=1)


def test_bf16_is_as_close_to_fp32_as_transformers_bf16(folder):
    check_bf16_prefill(folder("base"))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["base", "mqa-window7"])
def test_on_gpu_fp32_greedy_and_bf16_logits(folder, variant):
    check_on_gpu(folder(variant))

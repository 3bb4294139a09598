"""ATOM's Qwen3ForCausalLM against transformers' on tiny random checkpoints: logits over the
paged cache (prefill, chunked prefill, decode in mixed batches) and greedy tokens through
LLMEngine (batching, chunked prefill, prefix caching). Variants: attention bias with tied
embeddings and one KV head; sliding-window layers (layer_types)."""

from __future__ import annotations

import pytest
from hf_compare import (
    REPO,
    check_bf16_prefill,
    check_engine_greedy,
    check_on_gpu,
    check_prefill_and_decode,
    hf_logits,
    hf_model,
    variant_folders,
)

CONFIG = REPO / "models" / "qwen3" / "tiny_config.json"
VARIANTS = {
    "base": {},
    "bias+tied+mqa": {
        "attention_bias": True,
        "tie_word_embeddings": True,
        "num_key_value_heads": 1,
    },
    # Layers >= max_window_layers slide: layer 0 full, layers 1-2 a 6-token window.
    "sliding": {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
}


folder = variant_folders("qwen3", CONFIG, VARIANTS)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_and_decode_match_transformers(folder, variant):
    check_prefill_and_decode(folder(variant))


@pytest.mark.parametrize("variant", ["base", "sliding"])
def test_engine_greedy_matches_transformers(folder, variant):
    check_engine_greedy(folder(variant))


def test_sliding_layers_come_from_layer_types(folder):
    from atom.model_config import ModelConfig
    from atom.models import build_model

    model = build_model(ModelConfig.from_pretrained(folder("sliding")), "cpu")
    assert [a.sliding_window for a in model.attention_layers()] == [None, 6, 6]
    assert all(a.q_norm is not None for a in model.attention_layers())
    # The window changes transformers' own logits on these prompts, so the test above needs it.
    tokens = list(range(3, 40))
    full = hf_logits(hf_model(folder("base")), tokens)
    windowed = hf_logits(hf_model(folder("sliding")), tokens)
    assert (full[10:] - windowed[10:]).abs().max() > 1e-2
    assert (full[:6] - windowed[:6]).abs().max() < 1e-5  # same weights: equal inside the window


def test_bf16_is_as_close_to_fp32_as_transformers_bf16(folder):
    check_bf16_prefill(folder("base"))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["base", "sliding"])
def test_on_gpu_fp32_greedy_and_bf16_logits(folder, variant):
    check_on_gpu(folder(variant))

"""RoPE caches equal transformers' cos/sin for plain, linear, llama3 and YaRN scaling."""

from __future__ import annotations

import pytest
import torch

from atom.kernels.reference.rotary import apply_rope_ref
from atom.layers.rotary import get_rope

SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    # GPT-OSS style: no truncation of the correction range.
    "yarn": {
        "rope_type": "yarn",
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 64,
    },
    # DeepSeek-V3 style: mscale / mscale_all_dim set the attention factor (here != 1).
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 40.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
        "original_max_position_embeddings": 64,
    },
}


@pytest.mark.parametrize("name", list(SCALINGS))
def test_cos_sin_cache_equals_transformers(name):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    head_dim, positions, theta = 32, 300, 50000.0
    params = {"rope_type": "default", **(SCALINGS[name] or {}), "rope_theta": theta}
    config = LlamaConfig(
        hidden_size=head_dim * 2,
        num_attention_heads=2,
        head_dim=head_dim,
        max_position_embeddings=positions,
        rope_parameters=params,
    )
    hf = LlamaRotaryEmbedding(config)
    cos, sin = hf(torch.zeros(1, dtype=torch.float32), torch.arange(positions)[None])
    rope = get_rope(head_dim, head_dim, positions, theta, scaling=SCALINGS[name])
    half = head_dim // 2
    torch.testing.assert_close(rope.cos_sin_cache[:, :half], cos[0, :, :half], atol=1e-6, rtol=0)
    torch.testing.assert_close(rope.cos_sin_cache[:, half:], sin[0, :, :half], atol=1e-6, rtol=0)


def test_partial_rotary_leaves_the_tail_alone():
    rope = get_rope(16, 8, 32, 10000.0)
    x = torch.randn(5, 2, 16)
    y = apply_rope_ref(x, torch.arange(5), rope.cos_sin_cache, rope.is_neox)
    torch.testing.assert_close(y[..., 8:], x[..., 8:])
    assert not torch.allclose(y[1:, :, :8], x[1:, :, :8])


def test_unsupported_rope_type_names_it():
    with pytest.raises(ValueError, match="'longrope'.*_INV_FREQ"):
        get_rope(16, 16, 32, 10000.0, scaling={"rope_type": "longrope", "factor": 4.0})
    with pytest.raises(ValueError, match="rotary_dim=7"):
        get_rope(16, 7, 32, 10000.0)


def test_cache_is_fp32_whatever_the_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        rope = get_rope(16, 16, 32, 10000.0)
    finally:
        torch.set_default_dtype(previous)
    assert rope.cos_sin_cache.dtype == torch.float32
    assert "cos_sin_cache" not in rope.state_dict()  # never expected from a checkpoint

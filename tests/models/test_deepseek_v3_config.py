"""DeepSeek-V3 pieces checked on their own: YaRN (frequencies, attention factor, MLA's softmax
mscale) against transformers' functions, the MLA layer's cache contract and its errors, and the
model's loading rules (fp32 gate, MTP layers skipped, missing weights named)."""

from __future__ import annotations

import math

import pytest
import torch

from atom.forward_context import AttentionMetadata
from atom.layers.mla import MultiHeadLatentAttention
from atom.layers.rotary import get_rope
from atom.layers.rotary_yarn import softmax_scale_multiplier, yarn_inv_freq
from atom.model_config import ModelConfig
from atom.models import build_model

YARN_CASES = {
    "deepseek-v3": dict(factor=40.0, mscale=1.0, mscale_all_dim=1.0, beta_fast=32, beta_slow=1,
                        original_max_position_embeddings=4096),
    "mscale-ratio": dict(factor=8.0, mscale=0.707, mscale_all_dim=1.0,
                         original_max_position_embeddings=512),
    "gpt-oss-like": dict(factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                         original_max_position_embeddings=4096),
    "explicit-factor": dict(factor=4.0, attention_factor=1.3, original_max_position_embeddings=64),
}  # fmt: skip


def hf_config(rope: dict, theta: float, rope_dim: int = 64):
    from transformers import DeepseekV3Config

    params = {"rope_type": "yarn", "rope_theta": theta, **rope}
    return DeepseekV3Config(qk_rope_head_dim=rope_dim, rope_parameters=params)


@pytest.mark.parametrize("theta", [10000.0, 150000.0])
@pytest.mark.parametrize("case", list(YARN_CASES))
def test_yarn_matches_transformers(case, theta):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = YARN_CASES[case]
    expected_freq, expected_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_config(rope, theta), "cpu")
    inv_freq, factor = yarn_inv_freq(64, theta, {"rope_type": "yarn", **rope})
    assert torch.equal(inv_freq, expected_freq)
    assert factor == pytest.approx(expected_factor, rel=1e-12)
    assert not torch.equal(inv_freq, 1.0 / theta ** (torch.arange(0, 64, 2).float() / 64))


@pytest.mark.parametrize("case", ["deepseek-v3", "mscale-ratio"])
def test_rope_cache_equals_transformers_cos_sin(case):
    """The cos/sin cache (attention factor included) equals DeepseekV3RotaryEmbedding's."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RotaryEmbedding

    rope = YARN_CASES[case]
    hf = DeepseekV3RotaryEmbedding(hf_config(rope, 10000.0, rope_dim=16))
    ours = get_rope(16, 16, 300, 10000.0, is_neox=False, scaling={"rope_type": "yarn", **rope})
    positions = torch.arange(300)
    cos, sin = hf(torch.zeros(1, dtype=torch.float32), positions[None])
    assert torch.equal(ours.cos_sin_cache, torch.cat([cos[0, :, :8], sin[0, :, :8]], dim=-1))


def test_softmax_scale_multiplier_matches_transformers():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    for rope in YARN_CASES.values():
        scaling = {"rope_type": "yarn", **rope}
        assert softmax_scale_multiplier(scaling) == pytest.approx(yarn_apply_mscale(scaling, 1.0))
    assert softmax_scale_multiplier(None) == 1.0
    assert softmax_scale_multiplier(YARN_CASES["deepseek-v3"] | {"rope_type": "yarn"}) == (
        pytest.approx((0.1 * math.log(40) + 1) ** 2)
    )


def test_yarn_needs_factor_and_original_length():
    with pytest.raises(ValueError, match="factor"):
        yarn_inv_freq(64, 1e4, {"rope_type": "yarn", "original_max_position_embeddings": 8})
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        yarn_inv_freq(64, 1e4, {"rope_type": "yarn", "factor": 2.0})


def tiny_mla(q_lora_rank=8):
    rope = get_rope(8, 8, 64, 1e4, is_neox=False)
    return MultiHeadLatentAttention(32, 4, q_lora_rank, 16, 8, 8, 12, rope, scale=0.25)


def test_mla_cache_contract_and_errors():
    mla = tiny_mla()
    assert (mla.num_kv_heads, mla.head_dim, mla.needs_v_cache) == (1, 24, False)
    meta = AttentionMetadata(
        torch.tensor([0, 2], dtype=torch.int32), torch.tensor([2], dtype=torch.int32),
        torch.zeros(1, 1, dtype=torch.int32), torch.tensor([0, 1]), 2, 2,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="bind_kv_cache"):
        mla(torch.tensor([0, 1]), torch.zeros(2, 32), meta)
    with pytest.raises(ValueError, match="k_cache"):
        mla.bind_kv_cache(torch.zeros(4, 4, 2, 24))
    with pytest.raises(ValueError, match="k_cache"):
        mla.bind_kv_cache(torch.zeros(4, 4, 1, 28))
    mla.bind_kv_cache(torch.zeros(4, 4, 1, 24), torch.zeros(0, 4, 1, 24))  # no V cache
    assert mla.kv_cache.shape == (4, 4, 1, 24)
    with pytest.raises(ValueError, match="rotary_dim"):
        MultiHeadLatentAttention(32, 4, None, 16, 8, 8, 12, get_rope(16, 16, 64, 1e4), 0.25)
    assert not hasattr(tiny_mla(None), "q_a_proj") and hasattr(tiny_mla(None), "q_proj")


def write_tiny(folder, **overrides):
    import json
    from pathlib import Path

    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    path = Path(__file__).resolve().parents[2] / "models" / "deepseek_v3" / "tiny_config.json"
    settings = {**json.loads(path.read_text()), **overrides}
    torch.manual_seed(0)
    DeepseekV3ForCausalLM(DeepseekV3Config(**settings)).float().save_pretrained(folder)
    return folder


def test_model_layers_and_fp32_gate(tmp_path):
    folder = write_tiny(tmp_path, first_k_dense_replace=2, num_hidden_layers=4)
    model = build_model(ModelConfig.from_pretrained(folder, dtype="bfloat16"), "cpu")
    layers = model.attention_layers()
    assert [a.layer_idx for a in layers] == [0, 1, 2, 3]
    assert all(isinstance(a, MultiHeadLatentAttention) for a in layers)
    kinds = [type(layer.mlp).__name__ for layer in model.model.layers]
    assert kinds == ["GatedMLP", "GatedMLP", "DeepseekV3MoE", "DeepseekV3MoE"]
    gate = model.model.layers[2].mlp.gate
    assert (
        gate.weight.dtype == torch.float32 and gate.e_score_correction_bias.dtype == torch.float32
    )
    assert layers[0].q_b_proj.weight.dtype == torch.bfloat16


def test_checkpoint_rules(tmp_path):
    """MTP layers (model.layers.N...) are skipped; a missing MLA weight is named."""
    from safetensors.torch import load_file, save_file

    folder = write_tiny(tmp_path, num_nextn_predict_layers=1)
    file = folder / "model.safetensors"
    weights = load_file(file)
    weights["model.layers.3.enorm.weight"] = torch.ones(64)
    save_file(weights, file, metadata={"format": "pt"})
    build_model(ModelConfig.from_pretrained(folder), "cpu")  # loads, MTP layer skipped
    del weights["model.layers.1.self_attn.kv_b_proj.weight"]
    save_file(weights, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="kv_b_proj"):
        build_model(ModelConfig.from_pretrained(folder), "cpu")


def test_no_shared_experts_and_routing_check(tmp_path):
    folder = write_tiny(tmp_path / "a", n_shared_experts=0)
    model = build_model(ModelConfig.from_pretrained(folder), "cpu")
    assert model.model.layers[1].mlp.shared_experts is None
    folder = write_tiny(tmp_path / "b", scoring_func="softmax")
    with pytest.raises(ValueError, match="scoring_func"):
        build_model(ModelConfig.from_pretrained(folder), "cpu")

"""ATOM's Glm4MoeForCausalLM against transformers' on tiny random checkpoints: partial rotary
(half of each head), q/k/v bias, a dense first layer, then grouped-sigmoid routing with the
score-correction bias and routed scaling, plus shared experts. Logits over the paged cache and
greedy tokens through LLMEngine. Variant: qk-norm, more groups and two shared experts."""

from __future__ import annotations

import pytest
import torch
from hf_compare import (
    REPO,
    atom_model,
    check_bf16_prefill,
    check_engine_greedy,
    check_on_gpu,
    check_prefill_and_decode,
    variant_folders,
)

CONFIG = REPO / "models" / "glm4_moe" / "tiny_config.json"
VARIANTS = {
    "base": {},  # attention bias, no qk-norm, n_group 2 / topk_group 1, 1 shared expert
    "qk-norm": {
        "use_qk_norm": True,
        "attention_bias": False,
        "n_group": 4,
        "topk_group": 2,
        "n_shared_experts": 2,
        "norm_topk_prob": False,
        "routed_scaling_factor": 1.0,
    },
}


folder = variant_folders("glm4_moe", CONFIG, VARIANTS)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_and_decode_match_transformers(folder, variant):
    check_prefill_and_decode(folder(variant))


def test_engine_greedy_matches_transformers(folder):
    check_engine_greedy(folder("base"))


def test_layout_partial_rotary_dense_first_layer_fp32_gate(folder):
    from atom.model_config import ModelConfig
    from atom.models import build_model

    model = build_model(ModelConfig.from_pretrained(folder("base"), dtype="bfloat16"), "cpu")
    attn = model.attention_layers()[0]
    assert attn.rotary_emb.rotary_dim == 8 and attn.head_dim == 16
    assert model.model.layers[0].self_attn.o_proj.bias is None
    assert model.model.layers[0].self_attn.qkv_proj.bias is not None
    assert not hasattr(model.model.layers[0].mlp, "experts")
    gate = model.model.layers[1].mlp.gate
    # transformers keeps the router in fp32 (_keep_in_fp32_modules_strict); so does ATOM in bf16.
    assert gate.weight.dtype == gate.e_score_correction_bias.dtype == torch.float32
    assert model.model.layers[1].mlp.experts.w13.dtype == torch.bfloat16


def test_multi_token_prediction_layers_are_skipped(folder, tmp_path):
    """Real GLM-4.5 checkpoints carry num_nextn_predict_layers extra layers after the last one."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = folder("base")
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.3.eh_proj.weight"] = torch.zeros(64, 128)
    tensors["model.layers.3.mlp.experts.0.up_proj.weight"] = torch.zeros(32, 64)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    atom_model(tmp_path)  # loads
    tensors["model.layers.4.eh_proj.weight"] = torch.zeros(64, 128)  # beyond the MTP layers
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.4\.eh_proj\.weight"):
        atom_model(tmp_path)


def test_bf16_is_as_close_to_fp32_as_transformers_bf16(folder):
    check_bf16_prefill(folder("base"))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_on_gpu_fp32_greedy_and_bf16_logits(folder, variant):
    check_on_gpu(folder(variant))

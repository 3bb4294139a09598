"""ATOM's Qwen3MoeForCausalLM against transformers' on tiny random checkpoints (8 experts, top-2):
logits over the paged cache and greedy tokens through LLMEngine. Variants: renormalised top-k
with a dense layer in the middle (mlp_only_layers); un-normalised top-k with MoE on every second
layer (decoder_sparse_step)."""

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

from atom.layers.moe import FusedMoE
from atom.models.decoder import GatedMLP

CONFIG = REPO / "models" / "qwen3_moe" / "tiny_config.json"
VARIANTS = {
    "base": {},  # norm_topk_prob, mlp_only_layers [1]
    "sparse-step": {"decoder_sparse_step": 2, "mlp_only_layers": [], "norm_topk_prob": False},
}


folder = variant_folders("qwen3_moe", CONFIG, VARIANTS)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_and_decode_match_transformers(folder, variant):
    check_prefill_and_decode(folder(variant))


def test_engine_greedy_matches_transformers(folder):
    check_engine_greedy(folder("base"))


@pytest.mark.parametrize(
    ("variant", "moe_layers"),
    [("base", [True, False, True]), ("sparse-step", [False, True, False])],
)
def test_which_layers_are_routed(folder, variant, moe_layers):
    model = atom_model(folder(variant))
    mlps = [layer.mlp for layer in model.model.layers]
    assert [not isinstance(m, GatedMLP) for m in mlps] == moe_layers
    for mlp in mlps:
        if not isinstance(mlp, GatedMLP):
            assert isinstance(mlp.experts, FusedMoE)
            assert mlp.gate.renormalize == (variant == "base")


def test_a_missing_expert_is_named(folder, tmp_path):
    """The loader asks FusedMoE what no checkpoint tensor filled."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = folder("base")
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    tensors = load_file(src / "model.safetensors")
    del tensors["model.layers.2.mlp.experts.5.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"layers\.2\.mlp\.experts: expert 5 up \(w3\)"):
        atom_model(tmp_path)


def test_expert_weights_land_in_their_slots(folder):
    from safetensors.torch import load_file

    tensors = load_file(folder("base") / "model.safetensors")
    experts = atom_model(folder("base")).model.layers[0].mlp.experts
    prefix = "model.layers.0.mlp.experts.6."
    inter = experts.intermediate_size
    assert torch.equal(experts.w13[6, :inter], tensors[prefix + "gate_proj.weight"])
    assert torch.equal(experts.w13[6, inter:], tensors[prefix + "up_proj.weight"])
    assert torch.equal(experts.w2[6], tensors[prefix + "down_proj.weight"])


def test_bf16_is_as_close_to_fp32_as_transformers_bf16(folder):
    check_bf16_prefill(folder("base"))


@pytest.mark.gpu
def test_on_gpu_fp32_greedy_and_bf16_logits(folder):
    check_on_gpu(folder("base"))

"""Safetensors loading (single file, sharded with an index), the name mapping, dummy weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from atom.loader.weights import iterate_safetensors, load_dummy_weights, load_weights
from atom.model_config import ModelConfig
from atom.models import build_model, get_model_class, supported_architectures


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sharded_checkpoint_loads_like_the_single_file(make_tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    single = make_tiny_llama()
    sharded = tmp_path / "sharded"
    hf = AutoModelForCausalLM.from_pretrained(single, dtype=torch.float32)
    hf.save_pretrained(sharded, max_shard_size="100KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2  # really sharded

    a = build_model(ModelConfig.from_pretrained(single), "cpu")
    b = build_model(ModelConfig.from_pretrained(sharded), "cpu")
    sa, sb = _state(a), _state(b)
    assert sorted(sa) == sorted(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # The merged qkv parameter really holds the checkpoint's q, k and v, in that order.
    ckpt = load_file(single / "model.safetensors")
    qkv = a.model.layers[1].self_attn.qkv_proj.weight
    prefix = "model.layers.1.self_attn."
    expected = torch.cat([ckpt[prefix + f"{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(qkv, expected)


def test_index_naming_a_missing_shard_is_an_error(make_tiny_llama, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(make_tiny_llama(), folder)
    names = list(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": dict.fromkeys(names, "model-00002-of-00002.safetensors")})
    )
    with pytest.raises(ValueError, match="missing shards"):
        list(iterate_safetensors(folder))


def test_unexpected_and_missing_weights_are_named(make_tiny_llama, tmp_path):
    folder = make_tiny_llama()
    model = get_model_class("LlamaForCausalLM")(ModelConfig.from_pretrained(folder))
    weights = dict(iterate_safetensors(folder))
    with pytest.raises(ValueError, match="model.layers.0.self_attn.bogus.weight"):
        load_weights(model, [*weights.items(), ("model.layers.0.self_attn.bogus.weight", None)])
    del weights["model.layers.2.self_attn.k_proj.weight"]
    with pytest.raises(ValueError, match=r"qkv_proj.weight\[k\]"):
        load_weights(model, weights.items())
    bad_shape = dict(weights, **{"model.norm.weight": torch.ones(3)})
    with pytest.raises(ValueError, match="model.norm.weight"):
        load_weights(model, bad_shape.items())


def test_tied_checkpoint_with_a_redundant_lm_head_loads(make_tiny_llama, tmp_path):
    folder = tmp_path / "tied_with_head"
    shutil.copytree(make_tiny_llama(tie_word_embeddings=True), folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old checkpoints
    save_file(tensors, folder / "model.safetensors")
    model = build_model(ModelConfig.from_pretrained(folder), "cpu")
    assert torch.equal(model.lm_head.weight, tensors["model.embed_tokens.weight"])


def test_dummy_weights_are_seeded_and_give_finite_logits(make_tiny_llama, paged_runner):
    config = ModelConfig.from_pretrained(make_tiny_llama())
    a = build_model(config, "cpu", load_dummy=True, seed=1)
    b = build_model(config, "cpu", load_dummy=True, seed=1)
    c = build_model(config, "cpu", load_dummy=True, seed=2)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    assert sa["model.norm.weight"].mean().item() == pytest.approx(1.0, abs=0.05)
    (logits,) = paged_runner(a).step([(0, list(range(11)))])
    assert logits.shape == (11, config.vocab_size) and torch.isfinite(logits).all()


def test_dummy_weights_need_no_checkpoint(make_tiny_llama, tmp_path):
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(make_tiny_llama() / "config.json", folder / "config.json")
    config = ModelConfig.from_pretrained(folder)
    build_model(config, "cpu", load_dummy=True)
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        build_model(config, "cpu")


def test_unknown_architecture_lists_the_supported_ones(make_tiny_llama, tmp_path):
    folder = tmp_path / "unknown_arch"
    folder.mkdir()
    settings = json.loads((make_tiny_llama() / "config.json").read_text())
    settings["architectures"] = ["FancyNewForCausalLM"]
    (folder / "config.json").write_text(json.dumps(settings))
    config = ModelConfig.from_pretrained(folder)
    with pytest.raises(ValueError, match="FancyNewForCausalLM.*LlamaForCausalLM"):
        build_model(config, "cpu", load_dummy=True)
    assert "LlamaForCausalLM" in supported_architectures()


def test_bf16_model_loads_fp32_checkpoint(make_tiny_llama):
    config = ModelConfig.from_pretrained(make_tiny_llama(), dtype="bfloat16")
    model = build_model(config, "cpu")
    assert model.model.layers[0].mlp.gate_up_proj.weight.dtype == torch.bfloat16
    rope = model.model.layers[0].self_attn.attn.rotary_emb
    assert rope.cos_sin_cache.dtype == torch.float32  # RoPE tables stay fp32
    assert torch.get_default_dtype() == torch.float32  # build_model restored it


def test_load_dummy_covers_every_parameter(make_tiny_llama):
    model = get_model_class("LlamaForCausalLM")(ModelConfig.from_pretrained(make_tiny_llama()))
    for p in model.parameters():
        p.data.fill_(float("nan"))
    load_dummy_weights(model)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_consolidated_duplicate_is_ignored(make_tiny_llama, tmp_path):
    """Mistral-style repos ship consolidated.safetensors beside the HF shards: not ours to load."""
    folder = tmp_path / "with_consolidated"
    shutil.copytree(make_tiny_llama(), folder)
    save_file({"tok_embeddings.weight": torch.zeros(2, 2)}, folder / "consolidated.safetensors")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    build_model(ModelConfig.from_pretrained(folder), "cpu")

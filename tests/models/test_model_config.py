"""ModelConfig: fields from config.json (both rope styles), eos ids from both files, dtype and
max_model_len rules, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from atom.model_config import ModelConfig, parse_dtype


def _folder(tmp_path, make_tiny_llama, **edits):
    folder = tmp_path / "model"
    shutil.copytree(make_tiny_llama(), folder)
    settings = json.loads((folder / "config.json").read_text())
    for key, value in edits.items():
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    (folder / "config.json").write_text(json.dumps(settings))
    return folder


def test_fields_of_the_tiny_llama(make_tiny_llama):
    c = ModelConfig.from_pretrained(make_tiny_llama())
    assert c.architecture == "LlamaForCausalLM" and c.model_type == "llama"
    assert (c.vocab_size, c.hidden_size, c.intermediate_size) == (256, 64, 96)
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        3,
        4,
        2,
        16,
    )
    assert c.rms_norm_eps == 1e-5 and c.rope_theta == 10000.0 and c.rope_scaling is None
    assert c.max_position_embeddings == c.max_model_len == 128
    assert not c.tie_word_embeddings and c.bos_token_id == 1 and c.eos_token_ids == (2,)
    assert c.dtype == torch.float32  # the CPU rule
    assert c.hf_config.model_type == "llama"


def test_old_style_rope_scaling_is_read(tmp_path, make_tiny_llama):
    folder = _folder(
        tmp_path, make_tiny_llama,
        rope_parameters=None,
        rope_theta=500000.0,
        rope_scaling={"type": "linear", "factor": 2.0},
    )  # fmt: skip
    c = ModelConfig.from_pretrained(folder)
    assert c.rope_theta == 500000.0
    assert c.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_eos_ids_merge_config_and_generation_config(tmp_path, make_tiny_llama):
    folder = _folder(tmp_path, make_tiny_llama, eos_token_id=[2, 5])
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 7]}))
    assert ModelConfig.from_pretrained(folder).eos_token_ids == (2, 5, 7)


def test_head_dim_defaults_to_hidden_over_heads(tmp_path, make_tiny_llama):
    folder = _folder(tmp_path, make_tiny_llama, head_dim=None)
    assert ModelConfig.from_pretrained(folder).head_dim == 16


def test_max_model_len_rules(make_tiny_llama):
    folder = make_tiny_llama()
    assert ModelConfig.from_pretrained(folder, max_model_len=40).max_model_len == 40
    with pytest.raises(ValueError, match="max_model_len=4096"):
        ModelConfig.from_pretrained(folder, max_model_len=4096)
    with pytest.raises(ValueError, match="max_model_len must be positive"):
        ModelConfig.from_pretrained(folder, max_model_len=0)


def test_dtypes(make_tiny_llama):
    folder = make_tiny_llama()
    assert ModelConfig.from_pretrained(folder, dtype="bf16").dtype == torch.bfloat16
    assert ModelConfig.from_pretrained(folder, dtype=torch.float16).dtype == torch.float16
    assert ModelConfig.from_pretrained(folder, dtype="auto").dtype == torch.float32
    assert parse_dtype("torch.bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="'float7'"):
        ModelConfig.from_pretrained(folder, dtype="float7")


def test_missing_architectures_and_bad_paths(tmp_path, make_tiny_llama):
    folder = _folder(tmp_path, make_tiny_llama, architectures=None)
    with pytest.raises(ValueError, match="architectures"):
        ModelConfig.from_pretrained(folder)
    with pytest.raises(ValueError, match="/nowhere/model"):
        ModelConfig.from_pretrained("/nowhere/model")


def test_config_is_frozen(make_tiny_llama):
    c = ModelConfig.from_pretrained(make_tiny_llama())
    with pytest.raises(AttributeError):
        c.vocab_size = 3


def test_config_is_hashable_and_compares_by_value(tmp_path, make_tiny_llama):
    folder = _folder(tmp_path, make_tiny_llama, rope_scaling={"rope_type": "linear", "factor": 2.0})
    a, b = ModelConfig.from_pretrained(folder), ModelConfig.from_pretrained(folder)
    assert a == b and hash(a) == hash(b)

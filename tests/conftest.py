"""Fixtures shared across the test suite: tiny random HF models and the embedded SmolLM2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY_LLAMA_CONFIG = REPO / "models" / "llama" / "tiny_config.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded SmolLM2 as an HF-format folder (converted once into the ATOM cache dir)."""
    from atom.loader import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def make_tiny_llama(tmp_path_factory):
    """make_tiny_llama(seed=0, tokenizer=False, **config_overrides) -> folder of a random fp32 HF
    LlamaForCausalLM (models/llama/tiny_config.json + overrides), saved as safetensors.

    tokenizer=True copies the embedded SmolLM2's tokenizer and chat template (and sets the vocab
    to its 49152 tokens), for tests that need text in and out. Folders are cached per arguments.
    """
    made: dict[str, Path] = {}

    def make(seed: int = 0, tokenizer: bool = False, **overrides) -> Path:
        from transformers import LlamaConfig, LlamaForCausalLM

        key = json.dumps({"seed": seed, "tokenizer": tokenizer, **overrides}, sort_keys=True)
        if key in made:
            return made[key]
        settings = {**json.loads(TINY_LLAMA_CONFIG.read_text()), **overrides}
        source = None
        if tokenizer:
            from atom.loader import resolve_model

            source = resolve_model(None)
            settings["vocab_size"] = 49152
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**settings)).float().eval()
        out = tmp_path_factory.mktemp("tiny_llama")
        model.save_pretrained(out)
        if source is not None:
            for name in _TOKENIZER_FILES:
                if (source / name).is_file():
                    shutil.copy(source / name, out / name)
        made[key] = out
        return out

    return make


@pytest.fixture
def paged_runner():
    """paged_runner(model, block_size=4, num_blocks=64, seed=0, device="cpu") -> a PagedRunner
    (atom/models/testing.py): runs a model over a paged KV cache without the engine."""
    from atom.models.testing import PagedRunner

    return PagedRunner

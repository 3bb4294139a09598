"""Engine test fixtures: a tiny random Llama with the SmolLM2 tokenizer, engines over it, and
Hugging Face greedy references."""

from __future__ import annotations

import inspect

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """The engine tests run many tiny ops; on a shared 2-core machine a second OpenMP thread
    costs more in synchronization than it saves (a 12-element softmax takes ms instead of us)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_dir(make_tiny_llama):
    """A random 3-layer Llama (vocab 49152, context 128) with the SmolLM2 tokenizer."""
    return make_tiny_llama(seed=0, tokenizer=True)


@pytest.fixture(scope="session")
def hf_tiny(tiny_model_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Hugging Face's greedy continuation of one unpadded prompt, never stopping early (generate()
    would fall back to the checkpoint's eos): argmax of the last logits, one token at a time
    through HF's own KV cache."""
    # transformers >= 5.2x calls the KV cache ``cache``; older releases ``past_key_values``.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    tokens = []
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        for _ in range(max_new_tokens):
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            out = model(torch.tensor([[token]]), use_cache=True, **{name: getattr(out, name)})
    return tokens


@pytest.fixture
def make_engine(tiny_model_dir):
    """make_engine(model_dir=tiny, **engine options) -> LLMEngine (a small CPU KV cache)."""
    from atom import LLMEngine

    def make(model_dir=None, **kw):
        kw.setdefault("cpu_kv_cache_bytes", 16 << 20)
        return LLMEngine(model=str(model_dir or tiny_model_dir), **kw)

    return make

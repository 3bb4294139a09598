"""The embedded SmolLM2-135M-Instruct: ATOM's greedy tokens are Hugging Face transformers' (fp32
``generate`` with do_sample=False), raw and through the chat template, in a plain batch and under
chunked prefill + prefix caching + preemption."""

from __future__ import annotations

import pytest
import torch

from atom import SamplingParams

MAX_NEW = 24
RAW = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "1, 2, 3, 4, 5,",
    "Water boils at a temperature of",
]
CHAT = [
    "What is the capital of France?",
    "Give me three colors.",
    "请用一句话介绍你自己。",
    "What is 7 times 6?",
]


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[str]:
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True
        )
        for c in CHAT
    ]
    return RAW + chats


@pytest.fixture(scope="module")
def hf_reference(embedded_model_dir, tokenizer, prompts) -> list[list[int]]:
    """HF greedy tokens per prompt (unpadded, one prompt at a time), including the EOS."""
    from transformers import AutoModelForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
        model.eval()
        refs = []
        for text in prompts:
            ids = torch.tensor([tokenizer.encode(text)])
            with torch.no_grad():
                out = model.generate(
                    ids, attention_mask=torch.ones_like(ids), do_sample=False,
                    max_new_tokens=MAX_NEW, pad_token_id=tokenizer.eos_token_id,
                )  # fmt: skip
            refs.append(out[0, ids.shape[1] :].tolist())
    finally:
        torch.set_num_threads(threads)
    return refs


@pytest.fixture(scope="module")
def greedy():
    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW)


def test_batch_matches_huggingface(prompts, hf_reference, greedy, tokenizer):
    from atom import LLMEngine

    engine = LLMEngine(cpu_kv_cache_bytes=64 << 20, max_model_len=512)
    outs = engine.generate(prompts, greedy)
    for out, ref, text in zip(outs, hf_reference, prompts):
        assert out["token_ids"] == ref, text
        ended_by_eos = ref[-1] in engine.model_config.eos_token_ids
        assert out["finish_reason"] == ("stop" if ended_by_eos else "length")
        assert out["text"] == tokenizer.decode(ref, skip_special_tokens=True)
    paris = outs[len(RAW)]
    assert paris["text"] == "The capital of France is Paris."
    assert paris["finish_reason"] == "stop"


def test_chunked_prefix_cached_preempted_batch_matches_huggingface(prompts, hf_reference, greedy):
    from atom import LLMEngine

    # 14 blocks of 16 tokens for 9 sequences of up to ~70 tokens: preemption is certain.
    engine = LLMEngine(
        enable_prefix_caching=True, max_num_batched_tokens=16, num_kv_blocks=14, block_size=16,
        max_model_len=224,
    )  # fmt: skip
    outs = engine.generate(prompts, greedy)
    assert [o["token_ids"] for o in outs] == hf_reference
    stats = engine.get_stats()
    assert stats.extra["num_preemptions"] > 0
    assert stats.prefix_cache_hits > 0  # the chat prompts share their system prompt

"""ATOM's LlamaForCausalLM against transformers' on tiny random checkpoints, over the paged cache.

Every ATOM step (prefill, chunked prefill, decode, mixed in one flat batch) must give the logits
that transformers gives for the same positions of the whole sequence in one causal forward.
"""

from __future__ import annotations

import pytest
import torch

from atom.model_config import ModelConfig
from atom.models import build_model

ATOL = 1e-5


def hf_logits(folder, tokens: list[int]) -> torch.Tensor:
    """transformers' logits [len(tokens), vocab] (fp32) for one sequence."""
    from transformers import AutoModelForCausalLM

    model = _hf_models.get(folder)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        _hf_models[folder] = model
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float()


_hf_models: dict = {}


def prompts(lengths, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def atom_model(folder):
    return build_model(ModelConfig.from_pretrained(folder), "cpu")


CONFIGS = {
    "untied": {},
    "tied": {"tie_word_embeddings": True},
    "llama3-rope+bias": {
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        "attention_bias": True,
        "mlp_bias": True,
        "num_key_value_heads": 1,
    },
    "linear-rope": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "num_hidden_layers": 2},
}


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_then_decode_matches_hf(make_tiny_llama, paged_runner, name, block_size):
    folder = make_tiny_llama(**CONFIGS[name])
    model = atom_model(folder)
    vocab = model.config.vocab_size
    seqs = prompts([7, 13, 33], vocab)
    runner = paged_runner(model, block_size=block_size, num_blocks=64)

    # One flat prefill batch of three prompts.
    got = runner.step(list(enumerate(seqs)))
    for seq, logits in zip(seqs, got):
        ref = hf_logits(folder, seq)
        assert logits.shape == ref.shape
        torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)

    # Three decode steps over the paged cache, feeding greedy tokens, with batch padding.
    for _ in range(3):
        nxt = [int(logits[-1].argmax()) for logits in got]
        for seq, token in zip(seqs, nxt):
            seq.append(token)
        got = runner.step([(i, [t]) for i, t in enumerate(nxt)], num_padding=2)
    for seq, logits in zip(seqs, got):
        torch.testing.assert_close(logits[0], hf_logits(folder, seq)[-1], atol=ATOL, rtol=0)


def test_chunked_prefill_mixed_with_decode(make_tiny_llama, paged_runner):
    """A prompt split over two steps, the second chunk batched with another sequence's decode."""
    folder = make_tiny_llama()
    model = atom_model(folder)
    long, short = prompts([33, 7], model.config.vocab_size, seed=1)
    runner = paged_runner(model, block_size=4, num_blocks=32, seed=3)

    first = runner.step([(0, long[:13]), (1, short)])
    torch.testing.assert_close(first[0], hf_logits(folder, long[:13]), atol=ATOL, rtol=0)
    short.append(int(first[1][-1].argmax()))
    second = runner.step([(1, short[-1:]), (0, long[13:])])
    torch.testing.assert_close(second[0][0], hf_logits(folder, short)[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(second[1], hf_logits(folder, long)[13:], atol=ATOL, rtol=0)


def test_logits_are_not_trivially_close(make_tiny_llama):
    """The tolerance above is meaningful: the random model's logits spread far beyond it."""
    logits = hf_logits(make_tiny_llama(), list(range(20)))
    assert logits.std() > 1000 * ATOL


def test_forward_without_kv_cache_is_a_clear_error(make_tiny_llama):
    model = atom_model(make_tiny_llama())
    from atom.forward_context import AttentionMetadata

    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor([0, 2], dtype=torch.int32),
        seq_lens=torch.tensor([2], dtype=torch.int32),
        block_tables=torch.zeros(1, 1, dtype=torch.int32),
        slot_mapping=torch.tensor([0, 1]),
        max_seqlen_q=2,
        max_seqlen_k=2,
    )
    with pytest.raises(RuntimeError, match="bind_kv_cache"):
        model(torch.tensor([1, 2]), torch.tensor([0, 1]), meta)


def test_attention_layers_expose_cache_shape(make_tiny_llama):
    model = atom_model(make_tiny_llama())
    layers = model.attention_layers()
    assert len(layers) == model.config.num_hidden_layers
    assert [(a.num_kv_heads, a.head_dim) for a in layers] == [(2, 16)] * len(layers)
    assert [a.layer_idx for a in layers] == list(range(len(layers)))
    with pytest.raises(ValueError, match="k_cache"):
        layers[0].bind_kv_cache(torch.zeros(4, 4, 3, 16), torch.zeros(4, 4, 3, 16))


def test_tied_model_shares_the_embedding(make_tiny_llama):
    model = atom_model(make_tiny_llama(tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = atom_model(make_tiny_llama())
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_tiny_llama_with_the_embedded_tokenizer(make_tiny_llama):
    """The fixture engine tests use for text in and out on a tiny model."""
    from transformers import AutoTokenizer

    folder = make_tiny_llama(tokenizer=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>assistant" in ids
    assert atom_model(folder).config.vocab_size == len(tokenizer) == 49152

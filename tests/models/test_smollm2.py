"""The embedded SmolLM2-135M-Instruct: the converted HF folder equals what transformers reads from
the GGUF itself, and ATOM's Llama on it matches transformers (logits and greedy chat answer)."""

from __future__ import annotations

import pytest
import torch

from atom.loader.embedded import embedded_gguf_path
from atom.model_config import ModelConfig
from atom.models import build_model

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "The capital of France is Paris."


@pytest.fixture(scope="session")
def hf_converted(embedded_model_dir):
    """transformers' model loaded from ATOM's converted folder (fp32)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_from_gguf():
    """transformers' own reading of the GGUF: its config and tokenizer conversion, and its
    dequantizing tensor reader (load_gguf_checkpoint, what from_pretrained(gguf_file=...) runs;
    from_pretrained itself would also need `accelerate`, which ATOM does not depend on)."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf = embedded_gguf_path()
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = LlamaForCausalLM(config).float().eval()
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


@pytest.fixture(scope="session")
def chat_ids(tokenizer) -> list[int]:
    out = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="session")
def atom_smollm2(embedded_model_dir):
    return build_model(ModelConfig.from_pretrained(embedded_model_dir), "cpu")


@pytest.mark.slow
def test_converted_folder_equals_transformers_gguf_reading(hf_converted, hf_from_gguf):
    reference, _ = hf_from_gguf
    ours, theirs = hf_converted.state_dict(), reference.state_dict()
    assert sorted(ours) == sorted(theirs)
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 5029, 47, 2]])
    with torch.no_grad():
        assert torch.equal(hf_converted(ids).logits, reference(ids).logits)
    for key in ("hidden_size", "num_hidden_layers", "num_key_value_heads", "rms_norm_eps"):
        assert getattr(hf_converted.config, key) == getattr(reference.config, key)


@pytest.mark.slow
def test_converted_tokenizer_equals_gguf_tokenizer(tokenizer, hf_from_gguf, chat_ids):
    _, reference = hf_from_gguf
    for text in ["Hello, world!", "  spaces\tand\nnewlines ", "Ünïcödé 東京 🙂", "<|im_start|>x"]:
        assert tokenizer.encode(text) == reference.encode(text)
    ref_chat = reference.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)
    assert chat_ids == list(ref_chat["input_ids"] if hasattr(ref_chat, "keys") else ref_chat)


def test_converted_folder_layout(embedded_model_dir):
    config = ModelConfig.from_pretrained(embedded_model_dir)
    assert config.architecture == "LlamaForCausalLM"
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert config.tie_word_embeddings and config.dtype == torch.float32
    assert 2 in config.eos_token_ids
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (embedded_model_dir / name).is_file(), name
    assert "<|im_start|>" in (embedded_model_dir / "tokenizer_config.json").read_text()
    assert (embedded_model_dir / "generation_config.json").is_file()


def test_atom_logits_match_transformers(atom_smollm2, hf_converted, paged_runner, chat_ids):
    runner = paged_runner(atom_smollm2, block_size=16, num_blocks=16)
    (ours,) = runner.step([(0, chat_ids)])
    with torch.no_grad():
        theirs = hf_converted(torch.tensor([chat_ids])).logits[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_greedy_chat_answer_matches_transformers(
    atom_smollm2, hf_converted, tokenizer, paged_runner, chat_ids
):
    max_new = 12
    with torch.no_grad():
        hf_out = hf_converted.generate(
            torch.tensor([chat_ids]), max_new_tokens=max_new, do_sample=False
        )
    hf_tokens = hf_out[0, len(chat_ids) :].tolist()
    assert tokenizer.decode(hf_tokens, skip_special_tokens=True).strip() == ANSWER

    runner = paged_runner(atom_smollm2, block_size=16, num_blocks=16)
    ours, step = [], [(0, chat_ids)]
    eos = set(atom_smollm2.config.eos_token_ids)
    while len(ours) < max_new:
        token = int(runner.step(step)[0][-1].argmax())
        ours.append(token)
        if token in eos:
            break
        step = [(0, [token])]
    assert ours == hf_tokens[: len(ours)] and len(ours) == len(hf_tokens)

"""Test helpers that need no download and no embedded model: a small byte-level BPE tokenizer
trained on the spot, and random-weight Llama checkpoints that carry it.

Used by the engine tests where the embedded SmolLM2 is not at hand (the GPU machine) and by the
GPU check script. Ids 0, 1, 2 are <unk>, <s>, </s> (bos 1, eos 2, as in models/llama's tiny config).
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention stores the key and value cache in fixed-size blocks.",
    "Continuous batching schedules decodes first, then chunks of new prompts.",
    "一个小型的分词器也能处理中文、日本語と English text 😀 together.",
    "def add(a, b):\n    return a + b\n",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def write_test_tokenizer(folder: str | Path, vocab_size: int = 400) -> Path:
    """Trains a byte-level BPE tokenizer (at most ``vocab_size`` ids, >= 259) on a few built-in
    sentences and saves it (with a chat template) into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 259:
        raise ValueError(f"vocab_size={vocab_size}: a byte-level tokenizer needs at least 259 ids")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder


def write_random_llama(folder: str | Path, config: dict, seed: int = 0) -> Path:
    """A random fp32 HF LlamaForCausalLM with ``config`` (HF LlamaConfig fields) and the test
    tokenizer, saved as safetensors in ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**config)).float().eval().save_pretrained(folder)
    write_test_tokenizer(folder, vocab_size=min(400, config["vocab_size"]))
    (folder / "atom_test_model.json").write_text(json.dumps({"seed": seed}))
    return folder

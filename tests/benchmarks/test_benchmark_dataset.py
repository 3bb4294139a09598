"""The benchmark's dataset samplers on small local files (the embedded model's tokenizer)."""

from __future__ import annotations

import json

import pytest

from atom.benchmarks.benchmark_dataset import (
    SONNET_BASE_PROMPT,
    sample_burstgpt,
    sample_hf,
    sample_random,
    sample_sharegpt,
    sample_sonnet,
)


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_random_lengths_and_determinism(tokenizer, ratio):
    reqs = sample_random(tokenizer, 7, input_len=83, output_len=13, range_ratio=ratio, seed=3)
    assert len(reqs) == 7
    for r in reqs:
        assert r.prompt_len == n_tokens(tokenizer, r.prompt)
        # Re-tokenizing decoded random ids can move the count by a token or two, no more.
        assert int(83 * ratio) - 2 <= r.prompt_len <= 83 + 2
        assert int(13 * ratio) <= r.expected_output_len <= 13
    if ratio == 1.0:
        assert {r.expected_output_len for r in reqs} == {13}
    again = sample_random(tokenizer, 7, input_len=83, output_len=13, range_ratio=ratio, seed=3)
    assert [r.prompt for r in again] == [r.prompt for r in reqs]
    other = sample_random(tokenizer, 7, input_len=83, output_len=13, range_ratio=ratio, seed=4)
    assert [r.prompt for r in other] != [r.prompt for r in reqs]
    specials = [t for t in tokenizer.all_special_tokens if t]
    assert not any(s in r.prompt for r in reqs for s in specials)


def test_random_shared_prefix(tokenizer):
    reqs = sample_random(tokenizer, 4, input_len=20, output_len=4, prefix_len=30, seed=1)
    prefixes = {tokenizer.encode(r.prompt, add_special_tokens=False)[:25].__repr__() for r in reqs}
    assert len(prefixes) == 1
    assert all(45 <= r.prompt_len <= 55 for r in reqs)


def test_random_rejects_bad_ratio(tokenizer):
    with pytest.raises(ValueError, match="range-ratio"):
        sample_random(tokenizer, 1, 10, 10, range_ratio=1.5)


def test_sharegpt(tokenizer, tmp_path):
    long_text = "word " * 1100
    data = [
        {"conversations": [{"from": "human", "value": "Tell me a story about a brave cat."},
                           {"from": "gpt", "value": "Once upon a time a cat saved the day."}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there friend"}]},
        {"conversations": [{"from": "human", "value": long_text}, {"from": "gpt", "value": "ok ok ok ok ok"}]},
        {"conversations": [{"from": "human", "value": "Only one turn here"}]},
    ]  # fmt: skip
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    reqs = sample_sharegpt(str(path), tokenizer, 3, seed=0)
    # Only the first conversation passes vLLM's filters (others: too short, too long, no reply),
    # so it is repeated to reach 3 prompts.
    assert {r.prompt for r in reqs} == {"Tell me a story about a brave cat."}
    assert reqs[0].expected_output_len == n_tokens(
        tokenizer, "Once upon a time a cat saved the day."
    )
    fixed = sample_sharegpt(str(path), tokenizer, 2, output_len=9, seed=0)
    assert all(r.expected_output_len == 9 for r in fixed)  # filters off with a fixed length


def test_burstgpt(tokenizer, tmp_path):
    path = tmp_path / "burst.csv"
    path.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "1,ChatGPT,40,10,50,Conversation log\n"
        "2,GPT-4,31,7,38,Conversation log\n"
        "3,GPT-4,17,0,17,Conversation log\n"
    )
    reqs = sample_burstgpt(str(path), tokenizer, 5, seed=0)
    # Only the GPT-4 row with a response qualifies.
    assert all(r.expected_output_len == 7 and 29 <= r.prompt_len <= 33 for r in reqs)


def test_sonnet(tokenizer, tmp_path):
    lines = [f"Line number {i} of a poem about the sea and sky" for i in range(40)]
    path = tmp_path / "sonnet.txt"
    path.write_text("\n".join(lines))
    reqs = sample_sonnet(str(path), tokenizer, 3, input_len=200, output_len=17, prefix_len=60,
                         apply_chat_template=False, seed=0)  # fmt: skip
    for r in reqs:
        assert r.prompt.startswith(SONNET_BASE_PROMPT + lines[0] + "\n")  # the shared prefix
        assert 150 <= r.prompt_len <= 250 and r.expected_output_len == 17
    chat = sample_sonnet(str(path), tokenizer, 1, input_len=200, prefix_len=60, seed=0)
    assert chat[0].prompt.startswith("<|im_start|>") and SONNET_BASE_PROMPT in chat[0].prompt


def test_hf_local_files(tokenizer, tmp_path):
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?"} for i in range(5)]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reqs = sample_hf(str(jsonl), tokenizer, 3, output_len=11, seed=0)
    assert len(reqs) == 3 and {r.prompt for r in reqs} <= {r["prompt"] for r in rows}
    assert all(r.expected_output_len == 11 for r in reqs)
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps([{"conversations": [
        {"role": "user", "content": "Describe the moon in one line."},
        {"role": "assistant", "content": "A silver lamp hung in the night."}]}]))  # fmt: skip
    reqs = sample_hf(str(conv), tokenizer, 2)
    assert reqs[0].prompt == "Describe the moon in one line."


@pytest.mark.parametrize("fn", [sample_sharegpt, sample_hf])
def test_nonlocal_paths_are_refused(tokenizer, fn):
    with pytest.raises(ValueError, match="local files only"):
        fn("anon8231489123/ShareGPT_Vicuna_unfiltered", tokenizer, 3)


def test_hf_saved_dataset_and_parquet(tokenizer, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"question": f"How many legs does animal {i} have?"} for i in range(4)]
    splits = datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
    splits.save_to_disk(str(tmp_path / "saved"))
    reqs = sample_hf(str(tmp_path / "saved"), tokenizer, 4, split="test", output_len=5)
    assert sorted(r.prompt for r in reqs) == sorted(r["question"] for r in rows)
    with pytest.raises(ValueError, match="split 'train'"):
        sample_hf(str(tmp_path / "saved"), tokenizer, 1)
    splits["test"].to_parquet(str(tmp_path / "rows.parquet"))
    reqs = sample_hf(str(tmp_path / "rows.parquet"), tokenizer, 2, output_len=5)
    assert {r.prompt for r in reqs} <= {r["question"] for r in rows}
